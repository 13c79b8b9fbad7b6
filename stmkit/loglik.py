"""Multiple choice by log-likelihood: the sum of each option's token log-probs after its context, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import lm
from .numerics import require_finite
from .progress import bar as progress_bar
from .scoring import Rendered, length_sorted_batches, score_rendered

# torch is imported where it is used, for start-up time: importing the evaluation harness (the report,
# the notebooks' tables) should not pay for them.


def loglik_choices(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    max_tokens_per_batch: int = 16384,
    share_context: bool = True,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> list[list[float]]:
    """Sum of token log-probs of each option after its context: one list per item.

    names: how errors name each item (default "item <index>"); a non-finite log-likelihood is refused with it.

    share_context (default): each batch of contexts runs once and its KV cache serves all of their options, so a
    4-option item costs one context pass instead of four (SciQ's passages make this 3-4x faster on CPU). Without
    it every (context, option) pair is a separate row (the plain way; the tests check both agree).
    """
    ctx_ids, opt_ids = [], []
    for i, (context, options) in enumerate(zip(contexts, choices, strict=True)):
        if not options:
            raise ValueError(f"item {i} has no options to compare")
        ctx_ids.append(list(tokenizer(context)["input_ids"]))
        conts = [list(tokenizer(" " + option.strip(), add_special_tokens=False)["input_ids"]) for option in options]
        empty = [j for j, c in enumerate(conts) if not c]
        if empty:
            raise ValueError(f"item {i} option {empty[0]} ({options[empty[0]]!r}) has no tokens")
        if not ctx_ids[-1]:
            raise ValueError(f"item {i} has an empty context; give each option something to follow")
        opt_ids.append(conts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    names = list(names) if names is not None else [f"item {i}" for i in range(len(ctx_ids))]
    if share_context:
        out = _loglik_shared(model, ctx_ids, opt_ids, pad, batch_size, max_tokens_per_batch, progress)
        for name, lps in zip(names, out, strict=True):
            require_finite(lps, f"{name}: option log-likelihoods", unit="option")
        return out
    rows = [Rendered(f"{names[i]} option {j}", c + o, len(c))
            for i, (c, os_) in enumerate(zip(ctx_ids, opt_ids, strict=True)) for j, o in enumerate(os_)]
    scored = score_rendered(model, rows, pad, batch_size, max_tokens_per_batch, progress)  # refuses non-finite
    sums = iter(float(np.sum(s.logprobs)) for s in scored)
    return [[next(sums) for _ in options] for options in choices]


def _loglik_shared(
    model: Any, ctx_ids: list[list[int]], opt_ids: list[list[list[int]]], pad_id: int, batch_size: int,
    max_tokens: int, progress: bool,
) -> list[list[float]]:
    """Context pass (left-padded, so every context ends in the last column), then all options on its KV cache."""
    import torch

    device = next(model.parameters()).device
    decoder, head, cap = lm.head_of(model)
    # batch_size counts items (contexts); the token cap bounds the option pass, whose rows each carry a copy of
    # their context: (context + longest option) x number of options per item.
    lengths = [(len(c) + max(len(o) for o in os_)) * len(os_) for c, os_ in zip(ctx_ids, opt_ids, strict=True)]
    batches = length_sorted_batches(lengths, batch_size, max_tokens)
    out: list[list[float] | None] = [None] * len(ctx_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            bar = progress_bar(batches, desc="option log-likelihoods", unit="batch", disable=not progress)
            for batch in bar:
                ids, mask = lm.pad([ctx_ids[i] for i in batch], pad_id, "left")
                ids, mask = ids.to(device), mask.to(device)
                pos = lm.positions(mask)
                first = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
                rows = [(k, j) for k, i in enumerate(batch) for j in range(len(opt_ids[i]))]
                owner = torch.tensor([k for k, _ in rows], device=device)
                cache = first.cache  # transformers >= 5: "cache" (formerly past_key_values)
                cache.batch_select_indices(owner)  # one copy of its item's context cache per option row
                opts = [opt_ids[batch[k]][j] for k, j in rows]
                oid, omask = lm.pad(opts, pad_id, "right")
                oid, omask = oid.to(device), omask.to(device)
                opos = pos[owner, -1:] + 1 + torch.arange(oid.shape[1], device=device)
                second = decoder(input_ids=oid, attention_mask=torch.cat([mask[owner], omask], dim=1),
                                 position_ids=opos, cache=cache, use_cache=True).last_hidden_state
                # Option token t is predicted by the context's last position (t = 0) or option position t - 1.
                last = first.last_hidden_state[:, -1]
                hidden = torch.cat([torch.cat([last[k : k + 1], second[r, : len(opts[r]) - 1]])
                                    for r, (k, _) in enumerate(rows)])
                targets = torch.tensor([t for o in opts for t in o], device=device)
                lp = lm.chosen_logprobs(lm.head_logits(head, cap, hidden), targets)[0].double().cpu().numpy()
                start = 0
                sums: dict[int, list[float]] = {}
                for (k, _), o in zip(rows, opts, strict=True):
                    sums.setdefault(batch[k], []).append(float(lp[start : start + len(o)].sum()))
                    start += len(o)
                for i, v in sums.items():
                    out[i] = v
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]

