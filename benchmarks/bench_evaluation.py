"""Evaluation throughput: stmkit's batched evaluation vs one item at a time (the reference implementation's loop).

Generated answers (GSM8K, greedy): the reference called a transformers text-generation ``pipeline`` once per item;
stmkit generates length-sorted, left-padded batches with the KV cache. Log-likelihood multiple choice (ARC-Easy):
one full forward per (item, option) vs stmkit's batched option scoring. Both sides check the answers the same way.
Goal (issue): >= 4x items/s on the embedded SmolLM2 (fp32, CPU) for generated answers, the reference's loop;
log-likelihood is reported beside it. Ratios on wall time and on this process's CPU time (the goal is judged on
the latter, which swings less with other users' load on a shared machine).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from benchmarks import timed
from stmkit.cache import Cache
from stmkit.evaluation import evaluate_task
from stmkit.models import load_model
from stmkit.tasks import get_task, load, score

N_GENERATE = 24
MAX_NEW_TOKENS = 128
N_LOGLIK = 32
# On CPU a decode step is bound by reading the weights, so wider batches pay off: SmolLM2 fp32 on 2 cores
# measured 58 ms/token alone, 15 at batch 8, 9 at 16, 6.4 at 32 (prefill gains nothing: it is compute-bound).
BATCH = 24


def _one_at_a_time_generate(model, tok, items) -> list[str]:
    """The reference implementation's loop: pipeline(messages, max_new_tokens) per item (greedy forced here)."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tok, device=model.device)
    texts = []
    for ex in items:
        out = pipe([{"role": "user", "content": ex.prompt}], max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        texts.append(out[0]["generated_text"][-1]["content"])
    return texts


def _one_at_a_time_loglik(model, tok, items) -> list[int]:
    """One full forward per (item, option), log-softmax over the whole sequence, as a plain loop would."""
    task = get_task("arc_easy")
    preds = []
    with torch.no_grad():
        for ex in items:
            ctx = tok(task.loglik_context(ex))["input_ids"]
            sums = []
            for option in ex.choices:
                cont = tok(" " + option.strip(), add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ctx + cont])
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
                sums.append(lp[len(ctx) - 1 :].gather(-1, ids[0, len(ctx) :, None]).sum().item())
            preds.append(int(np.argmax(sums)))
    return preds


def run() -> dict:
    model, tok = load_model("smollm2-135m-instruct")
    gen_items = load("gsm8k", "test", N_GENERATE)
    ll_items = load("arc_easy", "test", N_LOGLIK)
    cache = Cache(tempfile.mkdtemp(prefix="stmkit-bench-"))  # a fresh cache: nothing may come from a hit

    def batched(task, items, mode):
        return lambda: evaluate_task(
            model,
            tok,
            task,
            items,
            mode,
            fingerprint=f"bench-{time.time_ns()}",
            max_new_tokens=MAX_NEW_TOKENS,
            batch_size=BATCH,
            cache=cache,
            progress=False,
        )

    def single_generate():
        texts = _one_at_a_time_generate(model, tok, gen_items)
        score("gsm8k", gen_items, texts)
        return texts

    evaluate_task(
        model, tok, "arc_easy", ll_items[:2], "loglik", fingerprint="warm-up", cache=cache, progress=False
    )
    wall, cpu = {}, {}
    wall["gen_b"], cpu["gen_b"], res_gen = timed(batched("gsm8k", gen_items, "generate"))
    wall["gen_1"], cpu["gen_1"], texts = timed(single_generate)
    wall["ll_b"], cpu["ll_b"], res_ll = timed(batched("arc_easy", ll_items, "loglik"))
    wall["ll_1"], cpu["ll_1"], preds = timed(lambda: _one_at_a_time_loglik(model, tok, ll_items))

    same_gen = sum(r["generated"].strip() == t.strip() for r, t in zip(res_gen.records, texts, strict=True))
    same_ll = sum(r["pred_index"] == p for r, p in zip(res_ll.records, preds, strict=True))
    n = N_GENERATE + N_LOGLIK

    def ratios(t: dict) -> dict:
        return {
            "generate": t["gen_1"] / t["gen_b"],
            "loglik": t["ll_1"] / t["ll_b"],
            "all": (t["gen_1"] + t["ll_1"]) / (t["gen_b"] + t["ll_b"]),
        }

    res = {
        "items": {"gsm8k_generate": N_GENERATE, "arc_easy_loglik": N_LOGLIK},
        "max_new_tokens": MAX_NEW_TOKENS,
        "batch_size": BATCH,
        "items_per_s_wall": {
            "generate_batched": N_GENERATE / wall["gen_b"],
            "generate_one_at_a_time": N_GENERATE / wall["gen_1"],
            "loglik_batched": N_LOGLIK / wall["ll_b"],
            "loglik_one_at_a_time": N_LOGLIK / wall["ll_1"],
            "all_batched": n / (wall["gen_b"] + wall["ll_b"]),
            "all_one_at_a_time": n / (wall["gen_1"] + wall["ll_1"]),
        },  # fmt: skip
        "ratio_wall": ratios(wall),
        "ratio_cpu_time": ratios(cpu),
        "load_average_1min": os.getloadavg()[0],
        "same_answers": {"generate": f"{same_gen}/{N_GENERATE}", "loglik": f"{same_ll}/{N_LOGLIK}"},
    }
    # On a shared machine wall time swings with other users' load between the two measurements; CPU time of
    # this process does not, and on an idle machine the two ratios agree. The goal is judged on CPU time.
    # The reference implementation's loop is generation (it had no log-likelihood mode): the goal is on that.
    res["goals"] = {">=4x items/s generating (CPU time)": res["ratio_cpu_time"]["generate"] >= 4}
    for k, v in res["items_per_s_wall"].items():
        print(f"   {k:24s} {v:7.2f} items/s (wall)")
    for label, r in (("wall", res["ratio_wall"]), ("CPU time", res["ratio_cpu_time"])):
        print(
            f"   ratio ({label}): generate {r['generate']:.2f}x, loglik {r['loglik']:.2f}x, all {r['all']:.2f}x"
            "  (goal >= 4)"
        )
    print(f"   load average {res['load_average_1min']:.1f} on {os.cpu_count()} cores")
    print(f"   same answers as one at a time: generate {same_gen}/{N_GENERATE}, loglik {same_ll}/{N_LOGLIK}")
    return res
