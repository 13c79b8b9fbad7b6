"""One short GPU check of the paper path: `python -m benchmarks.gpu_paper_path OUT_DIR [--parts a,b]` on a CUDA
machine; parts: throughput, kit-trainer, paper-path (default: throughput,paper-path).

1. Throughput of the paper's architectures at their real sizes (random weights: nothing is downloaded) in the
   three regimes the cost estimate (stmkit.gpu_costs) models: a scoring forward, a LoRA training step (r 16,
   all linear layers, AdamW) and sampled generation; with peak memory. configs/costs/gpu.yaml names this output
   (kept in configs/costs/measured/) and the dry run's GPU-hours are computed from it.
2. (kit-trainer) The kit's own trainer on a random Llama 3 8B: tokens/s and peak memory beside the raw step.
3. The kit's own paper path on CUDA in bf16 with two stand-ins (tiny-llama3, tiny-gemma2): score, mask, train
   ground truth and STM through `python -m stmkit.sft` (TRL on CUDA), then evaluate MBPP and ARC on the
   trained adapters (generation on CUDA, MBPP code in the sandbox).

Writes OUT_DIR/gpu_throughput.json, gpu_kit_trainer.json and gpu_paper_path.json (the parts run); prints a summary.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

# Public config.json values of the released models (the sizes that set the cost; weights stay random here).
ARCHS = {
    "llama-3-8b-instruct": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)),
    "gemma-2-2b-it": ("Gemma2Config", dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, query_pre_attn_scalar=256, tie_word_embeddings=True)),
}


def _timed(fn, reps: int, warmup: int = 2) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _matmul_params(model) -> int:
    """Parameters that take part in matrix products (the input embedding is a lookup; a tied head counts once)."""
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is emb
    return sum(p.numel() for p in model.parameters()) - (0 if tied else emb.numel())


def throughput(arch: str, batch: int = 8, seq: int = 1024, gen_batch: int = 32, prompt: int = 256,
               new: int = 256) -> dict:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    cls_name, kw = ARCHS[arch]
    cfg = getattr(transformers, cls_name)(**kw)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    out = {"arch": arch, "build_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters()),
           "matmul_params": _matmul_params(model), "attn_implementation": model.config._attn_implementation}
    n = out["matmul_params"]
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        t = _timed(lambda: model(input_ids=ids).logits, reps=5)
    out["forward"] = {"batch": batch, "seq": seq, "s_per_batch": t, "tokens_per_s": batch * seq / t,
                      "tflops": 2 * n * batch * seq / t / 1e12,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}

    torch.cuda.reset_peak_memory_stats()
    p_ids = torch.randint(0, cfg.vocab_size, (gen_batch, prompt), device="cuda")
    gen_kw = dict(do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=new, min_new_tokens=new,
                  pad_token_id=0, attention_mask=torch.ones_like(p_ids))
    with torch.no_grad():
        model.generate(p_ids, **{**gen_kw, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(p_ids, **gen_kw)
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
    out["generate"] = {"batch": gen_batch, "prompt": prompt, "new_tokens": new, "s": t,
                       "tokens_per_s": gen_batch * new / t, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    t = _timed(step, reps=4)
    out["lora_step"] = {"batch": batch, "seq": seq, "s_per_step": t, "tokens_per_s": batch * seq / t,
                        "tflops_4n": 4 * n * batch * seq / t / 1e12, "tflops_6n": 6 * n * batch * seq / t / 1e12,
                        "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    model = opt = None  # free the GPU before the next architecture
    torch.cuda.empty_cache()
    return out


def paper_path(out_dir: Path, device: str = "cuda") -> dict:
    """The kit's own 04_sft recipe and evaluation on `device` with stand-ins, bf16."""
    import tempfile

    import torch

    from stmkit import adapters, evaluation, sft
    from stmkit.config import load_profile

    results_dir = Path(tempfile.mkdtemp(prefix="gpu-rehearsal-"))  # adapters stay out of out_dir
    report: dict = {}
    for model in ("tiny-llama3", "tiny-gemma2"):
        overrides = json.dumps({"model.name": model, "model.device": device, "data.target": "mbpp"})
        for method in ("gt", "stm"):
            name = f"{model}-{method}"
            t0 = time.perf_counter()
            try:
                sft.main(["--profile", "paper-rehearsal", "--overrides", overrides, "--method", method,
                          "--run-name", name, "--results-dir", str(results_dir)])
                rec = json.loads((results_dir / "runs" / name / "run.json").read_text())
                res = rec["results"]
                model_obj, tok = adapters.load_trained(res["adapter_dir"], device=device, dtype="bfloat16")
                cfg = load_profile("paper-rehearsal").eval
                ev = evaluation.evaluate_model(model_obj, tok, ["mbpp", "arc_challenge"], 4, config=cfg,
                                               source="hub-fixture", fingerprint=f"gpu-check-{name}")
                report[name] = {"ok": True, "s": time.perf_counter() - t0,
                                "precision": res["training"].get("precision"),
                                "device": str(next(model_obj.parameters()).device),
                                "dtype": str(next(model_obj.parameters()).dtype),
                                "final_train_loss": res.get("final_train_loss"),
                                "trained_tokens": res["masking"].get("trained_tokens"),
                                "eval": {t: {k: v for k, v in r.items() if k in ("accuracy", "n", "mode")}
                                         for t, r in ev.items()}}
                del model_obj
                if device == "cuda":
                    torch.cuda.empty_cache()
            except Exception as exc:  # record and go on: one short lease should report every failure at once
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()[-3000:]}
            print(name, json.dumps(report[name], default=str)[:600], flush=True)
    return report


def kit_trainer(arch: str = "llama-3-8b-instruct", device: str = "cuda", shape: dict | None = None) -> dict:
    """The kit's own trainer (TRL SFTTrainer, stmkit's loss, LoRA r 16, bf16) on a random model of the paper's size,
    on the rehearsal's MBPP fixture (24 examples, batch 8): tokens/s and peak memory beside the raw step above."""
    import tempfile

    import torch
    import transformers

    from stmkit import sft
    from stmkit.models import resolve

    cls_name, kw = ARCHS[arch]
    folder = Path(tempfile.mkdtemp(prefix="random-paper-model-"))
    cfg = getattr(transformers, cls_name)(**{**kw, **(shape or {})})
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    model = None
    standin = {"LlamaConfig": "tiny-llama3", "Gemma2Config": "tiny-gemma2"}[cls_name]
    transformers.AutoTokenizer.from_pretrained(resolve(standin)).save_pretrained(folder)  # its ids fit any vocab
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results = Path(tempfile.mkdtemp(prefix="kit-trainer-"))
    overrides = json.dumps({"model.name": str(folder), "model.device": device, "data.target": "mbpp",
                            "training.batch_size": 8, "training.grad_accum": 1, "training.epochs": 3})
    t0 = time.perf_counter()
    sft.main(["--profile", "paper-rehearsal", "--overrides", overrides, "--method", "stm", "--run-name", "kit",
              "--results-dir", str(results)])
    res = json.loads((results / "runs" / "kit" / "run.json").read_text())["results"]["training"]
    keep = ("steps", "tokens_per_s", "trained_tokens_per_s", "s_per_step", "precision", "compact_lm_head", "examples")
    return {"arch": arch, "wall_s": time.perf_counter() - t0, **{k: res.get(k) for k in keep},
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main(argv: list[str]) -> int:
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_paper_path", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "."))
    parser.add_argument("--parts", default="throughput,paper-path",
                        help="comma-separated: throughput, kit-trainer, paper-path")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"throughput", "kit-trainer", "paper-path"}
    if unknown:
        parser.error(f"unknown part {sorted(unknown)[0]!r} (parts: throughput, kit-trainer, paper-path)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers

    info["transformers"] = transformers.__version__
    runs = {"info": info, "archs": {}}
    for arch in (ARCHS if "throughput" in parts else []):
        try:
            runs["archs"][arch] = throughput(arch)
        except Exception as exc:
            runs["archs"][arch] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print(arch, json.dumps(runs["archs"][arch], default=str), flush=True)
        (out / "gpu_throughput.json").write_text(json.dumps(runs, indent=1, default=str))
    (out / "gpu_info.json").write_text(json.dumps(info, indent=1))
    if "kit-trainer" in parts:
        try:
            kit = kit_trainer()
        except Exception as exc:
            kit = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print("kit trainer", json.dumps(kit, default=str), flush=True)
        (out / "gpu_kit_trainer.json").write_text(json.dumps(kit, indent=1, default=str))
    if "paper-path" in parts:
        path = paper_path(out)
        (out / "gpu_paper_path.json").write_text(json.dumps(path, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
