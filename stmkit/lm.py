"""Language-model primitives the stages share: padding, the LM head at selected positions (with soft-capping),
trained positions from labels, log-probabilities of chosen tokens and predictive entropies.

Scoring, drift, evaluation's log-likelihoods and the trainer's loss all run "hidden states at selected positions ->
LM head -> soft-cap -> log-softmax -> gather"; they do it through these functions, so a model family's quirk (Gemma
2's final-logit soft-capping) is handled once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

IGNORE = -100  # a label that is not trained (prompt, padding, masked tokens): the value TRL and transformers use
MIXED_PRECISIONS = ("no", "bf16")


def autocast(model: Any, mixed_precision: str) -> Any:
    """The context forward passes of `model` run in: bf16 autocast on the model's device (fp32 weights; softmaxes stay
    fp32) for mixed_precision "bf16", nothing for "no". Call it where the passes run: a cache hit needs no model."""
    import contextlib

    import torch

    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} must be one of {MIXED_PRECISIONS}")
    if mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=torch.bfloat16)


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Any, Any]:
    """(ids, attention mask) of token rows padded to the longest, on the right or the left."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if side == "right":
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        else:
            ids[b, width - len(r) :] = torch.tensor(r)
            mask[b, width - len(r) :] = 1
    return ids, mask


def positions(mask: Any) -> Any:
    """Position ids that count only real tokens, so left and right padding give the same scores."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def head_of(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder, lm_head, final-logit soft-cap or None) of a causal LM, PEFT-wrapped or not."""
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return decoder, head, cap


def head_logits(head: Any, cap: float | None, hidden: Any) -> Any:
    """fp32 logits of the LM head at the given hidden states, soft-capped as the model's own forward does."""
    import torch

    logits = head(hidden).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def trained_positions(labels: Any) -> tuple[Any, Any]:
    """(keep, targets): keep[b, t] marks the positions whose next label is trained (position t predicts token t+1);
    targets are those labels, in the same order as the kept positions."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep, labels[:, 1:][keep[:, :-1]]


def chosen_logprobs(logits: Any, targets: Any) -> tuple[Any, Any]:
    """(log-probability of each target token, the full log-softmax) from logits [n, vocab] and targets [n]."""
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, targets[:, None])[:, 0], logp


def token_entropies(logits: Any, top_k: int = 20, logp: Any = None) -> tuple[Any, Any]:
    """(full entropy in nats, top-K entropy / log K) of each row of logits [n, vocab]: EAFT's gate is the second
    (arXiv 2601.02151, K = 20). logp: the log-softmax of logits when the caller has it already."""
    import torch

    logp = torch.log_softmax(logits, dim=-1) if logp is None else logp
    full = -(logp.exp() * logp).sum(-1)
    k = min(top_k, logits.shape[-1])
    top = torch.log_softmax(torch.topk(logits, k, dim=-1).values, dim=-1)
    norm = -(top.exp() * top).sum(-1) / math.log(k) if k > 1 else torch.zeros_like(full)
    return full, norm
