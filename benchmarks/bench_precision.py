"""bf16 mixed precision on CPU: faster, and equal to fp32 within seed-to-seed noise (cpu-demo trains with it).

Three ground-truth LoRA runs at cpu-demo's settings on 40 MBPP problems (10 steps): fp32 seed 0, bf16 mixed seed 0
(fp32 weights, bf16 autocast: training.mixed_precision), fp32 seed 1. "Equal" means the precision changes the
result less than the seed does: final training loss, ||ΔW|| and the gold-answer NLL of 200 ARC-Easy items (fp32)
differ less between fp32 and bf16 (same seed) than between the two fp32 seeds. The forgetting measures themselves
under bf16 autocast (eval.measures_mixed_precision) are compared with fp32: gold-answer NLL on the base model, KL
drift of the fp32 seed-0 adapter (40 prompts): speed and agreement of the means.
Goals: precision differences < seed differences; gold NLL means within 0.005; KL drift within 2% of fp32. The
training step's speed is bench_training's (bf16 and fp32 steps interleaved on one batch, so outside load hits both).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace

import numpy as np

from stmkit import drift, gold_nll, masking, training, weights
from stmkit.adapters import merged_copy
from stmkit.cache import Cache
from stmkit.config import TrainingConfig
from stmkit.models import load_model
from stmkit.scoring import render_examples, score_rendered
from stmkit.tasks import load

MODEL = "smollm2-135m-instruct"
N_TRAIN = 40
N_GOLD = 200


def _gold(model, tok, items, cache, mixed="no") -> tuple[dict[str, float], float]:
    t0 = time.perf_counter()
    nll = gold_nll.gold_nll(model, tok, items, fingerprint=f"bench-{id(model)}-{mixed}", cache=cache, batch_size=32,
                            progress=False, mixed_precision=mixed)
    return nll, time.perf_counter() - t0


def run() -> dict:
    model, tok = load_model(MODEL)
    rendered = render_examples(tok, load("mbpp", "train", N_TRAIN), max_length=384)
    gt = masking.mask_dataset(score_rendered(model, rendered, tok.pad_token_id, progress=False), "none")
    cfg = TrainingConfig(finetune="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=1e-3,
                         epochs=1, batch_size=4, group_by_length=True)
    arms = {"fp32 s0": (cfg, 0), "bf16 s0": (replace(cfg, mixed_precision="bf16"), 0), "fp32 s1": (cfg, 1)}
    cache = Cache(tempfile.mkdtemp(prefix="stmkit-bench-"))
    items = gold_nll.gold_items(tok, "arc_easy", N_GOLD)
    base_nll, t_fp32 = _gold(model, tok, items, cache)
    base_bf16, t_bf16 = _gold(model, tok, items, cache, "bf16")
    out: dict[str, dict] = {}
    for arm, (c, seed) in arms.items():
        res = training.train(MODEL, gt, c, tokenizer=tok, seed=seed, cache=False, out_dir=tempfile.mkdtemp(),
                             progress=False)
        tuned = merged_copy(model, [res.adapter_dir])
        nll, _ = _gold(tuned, tok, items, cache)
        if arm == "fp32 s0":
            reference = drift.reference_responses(model, tok, ["arc_easy", "sciq"], 20, fingerprint="bench-base",
                                                  batch_size=32, cache=cache, progress=False)
            kl = {}
            for mixed in ("no", "bf16"):
                t0 = time.perf_counter()
                kl[mixed] = (drift.measure_drift(tuned, tok, reference, base=model, batch_size=32, progress=False,
                                                 mixed_precision=mixed)["all"]["kl"], time.perf_counter() - t0)
        out[arm] = {"final_train_loss": res.record["final_train_loss"],
                    "delta_w": weights.summarize_trained(res.adapter_dir)["total"],
                    "gold_nll_rise": float(np.mean([nll[k] - base_nll[k] for k in base_nll]))}
        print(f"   {arm}: loss {out[arm]['final_train_loss']:.4f}, "
              f"||ΔW|| {out[arm]['delta_w']:.4f}, gold NLL rise {out[arm]['gold_nll_rise']:+.4f}", flush=True)

    def diff(a: str, b: str, key: str) -> float:
        return abs(out[a][key] - out[b][key])

    keys = ("final_train_loss", "delta_w", "gold_nll_rise")
    precision = {k: diff("bf16 s0", "fp32 s0", k) for k in keys}
    seed = {k: diff("fp32 s1", "fp32 s0", k) for k in keys}
    gold_mean_diff = float(np.mean([base_bf16[k] - base_nll[k] for k in base_nll]))
    res = {
        "arms": out,
        "precision_difference": precision,
        "seed_difference": seed,
        "gold_nll_bf16_vs_fp32": {"mean_difference": gold_mean_diff, "speedup": t_fp32 / t_bf16,
                                  "max_item_difference": float(max(abs(base_bf16[k] - base_nll[k]) for k in base_nll))},
        "kl_drift_bf16_vs_fp32": {"fp32": kl["no"][0], "bf16": kl["bf16"][0],
                                  "relative_difference": kl["bf16"][0] / kl["no"][0] - 1,
                                  "speedup": kl["no"][1] / kl["bf16"][1]},
    }
    res["goals"] = {
        **{f"precision < seed difference: {k}": precision[k] < seed[k] for k in keys},
        "gold NLL bf16 mean within 0.005 of fp32": abs(gold_mean_diff) <= 0.005,
        "KL drift bf16 within 2% of fp32": abs(res["kl_drift_bf16_vs_fp32"]["relative_difference"]) <= 0.02,
    }
    for k in keys:
        print(f"   |bf16 - fp32| {k:18s} {precision[k]:.4f}   |seed 1 - seed 0| {seed[k]:.4f}")
    g = res["gold_nll_bf16_vs_fp32"]
    print(f"   gold NLL under bf16 autocast: {g['speedup']:.2f}x faster, mean {gold_mean_diff:+.5f} nats/token, "
          f"largest item {g['max_item_difference']:.3f}")
    k = res["kl_drift_bf16_vs_fp32"]
    print(f"   KL drift under bf16 autocast: {k['speedup']:.2f}x faster, {k['bf16']:.4f} vs {k['fp32']:.4f} fp32 "
          f"({100 * k['relative_difference']:+.2f}%)")
    return res
