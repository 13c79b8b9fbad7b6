"""Training step time: STM vs ground truth on the same batch (embedded SmolLM2, LoRA r 16, batch 4), tokens/s.

Goal (issue): an STM step costs no more than a ground-truth step (ratio <= 1.0). Steps alternate between the two
label sets on one trainer, so load from other processes hits both alike. Off GPU, TRL projects every position
through the LM head; stmkit projects only the trained ones: the bench times both heads. A second trainer with
training.mixed_precision bf16 (fp32 weights, bf16 autocast: what cpu-demo trains with) times the same GT step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import torch

from stmkit import masking
from stmkit.config import TrainingConfig
from stmkit.models import load_model
from stmkit.scoring import render_examples, score_rendered
from stmkit.tasks import load
from stmkit.trainer import build_trainer

MODEL = "smollm2-135m-instruct"
BATCH = 4
REPEATS = 3  # steps per arm, interleaved; plus one warm-up step each


def run() -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = load_model(MODEL)
    rendered = render_examples(tok, load("mbpp", "train", BATCH), max_length=384)
    scored = score_rendered(model, rendered, tok.pad_token_id, progress=False)
    del model
    gt, stm = masking.mask_dataset(scored, "none"), masking.mask_dataset(scored, "threshold", tau=2.5)
    cfg = TrainingConfig(finetune="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=1e-3,
                         batch_size=BATCH)
    with tempfile.TemporaryDirectory(prefix="stmkit-bench-") as out:
        trainer = build_trainer(MODEL, gt, cfg, out, tokenizer=tok, progress=False)
        mixed = build_trainer(MODEL, gt, replace(cfg, mixed_precision="bf16"), out, tokenizer=tok,
                              progress=False)
    model = trainer.model
    model.train()
    mixed.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    mixed_optimizer = torch.optim.AdamW([p for p in mixed.model.parameters() if p.requires_grad], lr=1e-6)
    collate = trainer.data_collator.inner  # TRL's collator: pads input_ids, and labels with -100
    batches = {}
    for name, res in (("gt", gt), ("stm", stm)):
        inputs = collate([{"input_ids": i, "labels": lab} for i, lab in zip(res.input_ids, res.labels, strict=True)])
        batches[name] = (inputs, int((inputs["labels"][:, 1:] != -100).sum()))
    n_tokens = int(batches["gt"][0]["attention_mask"].sum())

    def step(arm: str) -> float:
        name, head = arm.split("/")
        tr, opt = (mixed, mixed_optimizer) if head == "stmkit-bf16" else (trainer, optimizer)
        tr.compact_head = head != "trl"
        inputs, n_items = batches[name]
        t0 = time.perf_counter()
        tr.training_step(tr.model, dict(inputs), torch.tensor(n_items))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    arms = ["gt/stmkit", "stm/stmkit", "gt/trl", "stm/trl", "gt/stmkit-bf16"]
    for arm in arms:
        step(arm)  # warm-up
    times: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(REPEATS):
        for arm in arms:
            times[arm].append(step(arm))
    med = {a: statistics.median(t) for a, t in times.items()}
    res = {
        "batch": BATCH,
        "tokens_per_batch": n_tokens,
        "trained_tokens": {"gt": batches["gt"][1], "stm": batches["stm"][1]},
        "s_per_step": med,
        "ratio_stm_vs_gt": med["stm/stmkit"] / med["gt/stmkit"],
        "ratio_stm_vs_gt_trl_head": med["stm/trl"] / med["gt/trl"],
        "ratio_stmkit_head_vs_trl_head_gt": med["gt/stmkit"] / med["gt/trl"],
        "ratio_bf16_mixed_vs_fp32_gt": med["gt/stmkit-bf16"] / med["gt/stmkit"],
        "tokens_per_s": {a: n_tokens / t for a, t in med.items()},
    }
    res["goals"] = {"STM step <= 1.0x GT step": res["ratio_stm_vs_gt"] <= 1.0,
                    "bf16 mixed step <= 0.85x fp32 (GT)": res["ratio_bf16_mixed_vs_fp32_gt"] <= 0.85}
    for arm, t in med.items():
        print(f"   {arm:11s} {t:6.2f} s/step  {res['tokens_per_s'][arm]:6.0f} tokens/s")
    print(f"   STM / GT step, stmkit head   {res['ratio_stm_vs_gt']:.3f}x  (goal <= 1.0)")
    print(f"   STM / GT step, TRL head      {res['ratio_stm_vs_gt_trl_head']:.3f}x")
    print(f"   stmkit head / TRL head (GT)  {res['ratio_stmkit_head_vs_trl_head_gt']:.3f}x")
    print(f"   bf16 mixed / fp32 step (GT)  {res['ratio_bf16_mixed_vs_fp32_gt']:.3f}x  (goal <= 0.85)")
    return res
