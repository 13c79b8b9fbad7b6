"""Token scoring throughput: stmkit vs one example at a time (reference) and a raw batched forward (ceiling).

Goal (issue): stmkit >= 0.9x the raw batched forward and >= 5x one-at-a-time, on the embedded SmolLM2. Scoring for
masking also records each token's predictive entropies (full and top-20) from the same logits: their cost is the
ratio of that scoring to the log-prob-only scoring (goal: at most 1.15x).
"""

from __future__ import annotations

import time

import torch

from stmkit.lm import pad as _pad
from stmkit.models import load_model
from stmkit.scoring import length_sorted_batches, render_examples, score_rendered
from stmkit.tasks import load

N_EXAMPLES = 48
BATCH = 8


def _best_of(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run() -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = load_model("smollm2-135m-instruct")
    rendered = render_examples(tok, load("mbpp", "train", N_EXAMPLES), max_length=512)
    n_tokens = sum(len(r.input_ids) for r in rendered)
    pad = tok.pad_token_id

    def stmkit_scoring():
        score_rendered(model, rendered, pad, batch_size=BATCH, max_tokens_per_batch=1 << 20, progress=False)

    def one_at_a_time():  # what the reference implementation does: full logits per example, no batching
        with torch.no_grad():
            for r in rendered:
                ids = torch.tensor([r.input_ids])
                logits = model(ids).logits
                lp = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])
                lp[r.response_start - 1 :].cpu()

    batches = length_sorted_batches([len(r.input_ids) for r in rendered], BATCH, 1 << 20)
    padded = [_pad([rendered[i].input_ids for i in b], pad) for b in batches]

    def raw_forward():  # the ceiling: the same length-sorted batches through a bare forward, no bookkeeping
        with torch.inference_mode():
            for ids, mask in padded:
                model(input_ids=ids, attention_mask=mask)

    def with_entropies():  # what score_examples runs for masking (the conflict rule and EAFT's plane need them)
        score_rendered(model, rendered, pad, batch_size=BATCH, max_tokens_per_batch=1 << 20, progress=False,
                       entropies=True)

    stmkit_scoring()  # warm-up
    t_stm = _best_of(stmkit_scoring)
    t_ent = _best_of(with_entropies)
    t_raw = _best_of(raw_forward)
    t_one = _best_of(one_at_a_time, repeats=1)
    res = {
        "examples": len(rendered),
        "tokens": n_tokens,
        "tokens_per_s": {"stmkit": n_tokens / t_stm, "raw_batched_forward": n_tokens / t_raw,
                         "one_at_a_time": n_tokens / t_one},
        "ratio_vs_raw_forward": t_raw / t_stm,
        "ratio_vs_one_at_a_time": t_one / t_stm,
        "entropies_cost": t_ent / t_stm,
    }
    res["goals"] = {">=0.9x raw forward": res["ratio_vs_raw_forward"] >= 0.9,
                    ">=5x one at a time": res["ratio_vs_one_at_a_time"] >= 5,
                    "entropies <=1.15x log-probs only": res["entropies_cost"] <= 1.15}
    for k, v in res["tokens_per_s"].items():
        print(f"   {k:22s} {v:9.0f} tokens/s")
    print(f"   stmkit / raw forward     {res['ratio_vs_raw_forward']:.2f}x  (goal >= 0.9)")
    print(f"   stmkit / one-at-a-time   {res['ratio_vs_one_at_a_time']:.2f}x  (goal >= 5)")
    print(f"   with entropies / without {res['entropies_cost']:.2f}x  (goal <= 1.15)")
    return res
