"""Selective Token Masking and its controls: scored examples -> labels with -100 on the masked response tokens.

Rules (each masks *response* tokens only; prompt tokens are never trained):
- threshold (STM): mask tokens with ppl > tau. tau = 2.5 means "mask tokens whose probability is below 0.4".
- quantile: mask the top share of the dataset's response tokens by PPL.
- random: per example, mask as many tokens as the threshold rule would, drawn uniformly without replacement from
  the response tokens, seeded per example. (The reference implementation drew positions with replacement over the
  whole sequence, prompt included; stmkit follows the paper's description.)
- low: mask tokens with ppl < tau (the paper's "mask low" ablation).
- dpf: mask tokens whose PPL rose under a fine-tuned adapter by more than dpf_delta (ppl_adapter - ppl_base >
  dpf_delta; the paper's DPF filters every token whose PPL rose: delta 0).
- stm+dpf: mask tokens with ppl_base > tau or ppl_adapter - ppl_base > dpf_delta (reference: delta 0).
  Both need `adapter_scored`: the same examples scored by the base with a fine-tuned adapter merged in (04_sft's
  `reference_run`, normally the ground-truth run; see `stmkit.sft.prepare_sft_data`).
- conflict: mask only "confident conflicts" (EAFT, arXiv 2601.02151): tokens with ppl > tau whose top-K
  predictive entropy (divided by log K, scoring's `topk_entropy`) is below `conflict_entropy` -- the model
  confidently predicted something else. The hard counterpart of EAFT's entropy-weighted loss; a subset of STM's mask.
- none: train on every response token (ground truth).
An example with every response token masked is never dropped silently: `keep_eos` keeps its end-of-turn token
trainable, `drop` removes it; both are counted in the statistics. An example truncated at max_length has no
end-of-turn token (its last token is a piece of the answer), so with nothing trainable it is dropped under its own
reason (`dropped_truncated`) whatever the policy: TRL would otherwise drop it silently.
A non-finite log-prob is refused (NaN > tau is False: it would pass as a token never masked).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write_text
from .lm import IGNORE
from .numerics import require_finite
from .scoring import Scored

RULES = ("none", "threshold", "quantile", "random", "low", "dpf", "stm+dpf", "conflict")


def tau_to_probability(tau: float) -> float:
    """The token probability below which STM masks: p < 1/tau (tau 2.5 -> 0.4)."""
    return 0.0 if math.isinf(tau) else 1.0 / tau


@dataclass
class MaskResult:
    """Labels per kept example plus statistics; `masks` are per-example booleans over response tokens."""

    rule: str
    input_ids: list[list[int]]
    labels: list[list[int]]
    ids: list[str]
    masks: list[np.ndarray]
    dropped: list[str] = field(default_factory=list)  # every example removed, for any reason
    fully_masked: list[str] = field(default_factory=list)  # untruncated, every response token masked: the policy
    dropped_truncated: list[str] = field(default_factory=list)  # truncated with nothing trainable: always dropped
    truncated: list[str] = field(default_factory=list)  # kept examples cut at max_length (no end-of-turn token)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, Any]:
        n_resp = int(sum(len(m) for m in self.masks))
        cut = set(self.truncated)
        ended = [m for i, m in zip(self.ids, self.masks, strict=True) if len(m) and i not in cut]
        n_masked = int(sum(int(m.sum()) for m in self.masks))
        trained = int(sum(sum(1 for x in lab if x != IGNORE) for lab in self.labels))
        return {
            "rule": self.rule,
            **self.params,
            "examples_in": len(self.masks) + len(self.dropped),
            "examples_out": len(self.labels),
            "examples_fully_masked": len(self.fully_masked),
            "examples_dropped": len(self.dropped),
            "examples_dropped_truncated": len(self.dropped_truncated),
            "response_tokens": n_resp,
            "masked_tokens": n_masked,
            "masked_share": n_masked / n_resp if n_resp else 0.0,
            "trained_tokens": trained,
            # the last response token is the end-of-turn token (truncated examples have none): masking it, the
            # model does not learn where to stop
            "end_of_turn_masked_share": (sum(bool(m[-1]) for m in ended) / len(ended) if ended else 0.0),
        }

    def per_example(self) -> list[dict[str, Any]]:
        return [
            {"id": i, "response_tokens": len(m), "masked": int(m.sum()), "share": float(m.mean()) if len(m) else 0.0}
            for i, m in zip(self.ids, self.masks, strict=True)
        ]

    def to_dataset(self):
        """A datasets.Dataset with input_ids and labels that TRL's SFTTrainer uses as is."""
        import datasets

        return datasets.Dataset.from_dict({"id": self.ids, "input_ids": self.input_ids, "labels": self.labels})


def _example_seed(seed: int, item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "little")


def compute_masks(
    scored: Sequence[Scored],
    rule: str,
    tau: float = 2.5,
    quantile: float = 0.2,
    seed: int = 0,
    adapter_scored: Sequence[Scored] | None = None,
    dpf_delta: float = 0.0,
    conflict_entropy: float = 0.5,
) -> list[np.ndarray]:
    """Boolean mask (True = masked) over each example's response tokens."""
    if rule not in RULES:
        raise ValueError(f"unknown masking rule '{rule}' (rules: {', '.join(RULES)})")
    if not tau > 1.0:
        raise ValueError(f"tau must be > 1 (token perplexity is always >= 1), got {tau}; use inf for no masking")
    for s in [*scored, *(adapter_scored or [])]:
        require_finite(s.logprobs, f"example {s.id!r} log-probs", unit="response token")
    ppls = [s.ppl for s in scored]
    if rule == "none":
        return [np.zeros(len(p), dtype=bool) for p in ppls]
    if rule == "threshold":
        return [p > tau for p in ppls]
    if rule == "low":
        return [p < tau for p in ppls]
    if rule == "conflict":
        return [(p > tau) & confident(s, conflict_entropy) for s, p in zip(scored, ppls, strict=True)]
    if rule == "random":
        out = []
        for s, p in zip(scored, ppls, strict=True):
            k = int((p > tau).sum())
            rng = np.random.default_rng(_example_seed(seed, s.id))
            m = np.zeros(len(p), dtype=bool)
            m[rng.choice(len(p), size=k, replace=False)] = True
            out.append(m)
        return out
    if rule == "quantile":
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        flat = np.concatenate(ppls) if ppls else np.zeros(0)
        k = int(round(quantile * len(flat)))
        # Exactly k tokens: rank by PPL, ties broken by position in the dataset (stable sort).
        order = np.argsort(-flat, kind="stable")
        chosen = np.zeros(len(flat), dtype=bool)
        chosen[order[:k]] = True
        out, start = [], 0
        for p in ppls:
            out.append(chosen[start : start + len(p)])
            start += len(p)
        return out
    # dpf and stm+dpf need the same examples scored under a fine-tuned adapter
    if adapter_scored is None:
        raise ValueError(f"rule '{rule}' needs the examples scored under a fine-tuned adapter (adapter_scored)")
    by_id = {s.id: s for s in adapter_scored}
    out = []
    for s, p in zip(scored, ppls, strict=True):
        a = by_id.get(s.id)
        if a is None or a.input_ids != s.input_ids:
            raise ValueError(f"example {s.id!r} is missing from adapter_scored or was tokenised differently")
        diff = a.ppl - p
        out.append(diff > dpf_delta if rule == "dpf" else (p > tau) | (diff > dpf_delta))
    return out


def stm_or_conflict_masks(scored: Sequence[Scored], tau: float, conflict_entropy: float | None = None
                          ) -> list[np.ndarray]:
    """STM's masks at tau, or with an entropy gate the `conflict` rule's (what the explorer and Figure 1 show)."""
    if conflict_entropy is None:
        return compute_masks(scored, "threshold", tau)
    return compute_masks(scored, "conflict", tau, conflict_entropy=conflict_entropy)


def confident(s: Scored, below: float) -> np.ndarray:
    """Response tokens whose normalised top-K predictive entropy is below `below` (the model was sure)."""
    if not 0.0 < below <= 1.0:
        raise ValueError(f"conflict_entropy must be in (0, 1] (top-K entropy divided by log K), got {below}")
    if len(s.topk_entropy) != len(s.logprobs):
        raise ValueError(f"example {s.id!r} has no per-token entropies (scored before stmkit recorded them, or by "
                         "evaluation's log-likelihood); score it with stmkit.scoring.score_examples")
    h = np.asarray(s.topk_entropy, dtype=np.float64)
    require_finite(h, f"example {s.id!r} entropies", unit="response token")
    return h < below


def apply_masks(
    scored: Sequence[Scored],
    masks: Sequence[np.ndarray],
    rule: str,
    fully_masked: str = "keep_eos",
    params: dict[str, Any] | None = None,
) -> MaskResult:
    """Turn masks into training labels; handle examples with nothing left by the explicit policy.

    A truncated example with every token masked is dropped (counted in dropped_truncated) under either policy: its
    last token was cut off mid-answer, so there is no end-of-turn token to keep.
    """
    if fully_masked not in ("keep_eos", "drop"):
        raise ValueError(f"fully_masked must be 'keep_eos' or 'drop', got {fully_masked!r}")
    res = MaskResult(rule, [], [], [], [], params=dict(params or {}))
    for s, m in zip(scored, masks, strict=True):
        if len(m) != len(s.logprobs):
            raise ValueError(f"example {s.id!r}: mask has {len(m)} entries for {len(s.logprobs)} response tokens")
        m = np.asarray(m, dtype=bool).copy()
        labels = [IGNORE] * s.response_start + [IGNORE if mk else t for t, mk in zip(s.response_ids, m, strict=True)]
        if m.all() and s.truncated:
            res.dropped_truncated.append(s.id)
            res.dropped.append(s.id)
            continue
        if m.all():
            res.fully_masked.append(s.id)
            if fully_masked == "drop":
                res.dropped.append(s.id)
                continue
            labels[-1] = s.input_ids[-1]  # the end-of-turn token stays trainable
        res.input_ids.append(list(s.input_ids))
        res.labels.append(labels)
        res.ids.append(s.id)
        res.masks.append(m)
        if s.truncated:
            res.truncated.append(s.id)
    return res


def mask_dataset(
    scored: Sequence[Scored],
    rule: str = "threshold",
    tau: float = 2.5,
    *,
    quantile: float = 0.2,
    seed: int = 0,
    fully_masked: str = "keep_eos",
    adapter_scored: Sequence[Scored] | None = None,
    dpf_delta: float = 0.0,
    train_end_of_turn: bool = False,
    conflict_entropy: float = 0.5,
) -> MaskResult:
    """Compute masks by a rule and build labels: the one call most users need.

    train_end_of_turn: never mask the last response token (the end-of-turn token the chat template appends), so
    the model still learns where an answer stops. Off by default: the paper masks by PPL alone. A truncated example
    has no end-of-turn token; its last token keeps the mask the rule gave it.
    """
    masks = compute_masks(scored, rule, tau, quantile, seed, adapter_scored, dpf_delta, conflict_entropy)
    if train_end_of_turn:
        masks = [np.concatenate([m[:-1], [False]]) if len(m) and not s.truncated else m
                 for s, m in zip(scored, masks, strict=True)]
    params: dict[str, Any] = {"tau": tau, "p_below": tau_to_probability(tau)}
    if rule == "quantile":
        params = {"quantile": quantile}
    elif rule == "random":
        params["seed"] = seed
    elif rule == "dpf":  # only the PPL rise under the adapter counts, not the base PPL
        params = {"dpf_delta": dpf_delta}
    elif rule == "stm+dpf":
        params["dpf_delta"] = dpf_delta
    elif rule == "conflict":
        params["conflict_entropy"] = conflict_entropy
    elif rule == "none":
        params = {}
    if train_end_of_turn:
        params["train_end_of_turn"] = True
    return apply_masks(scored, masks, rule, fully_masked, params)


def masked_share_curve(scored: Sequence[Scored], taus: Sequence[float]) -> list[dict[str, float]]:
    """Share of response tokens with ppl > tau for each tau (for the tau plots)."""
    flat = np.concatenate([s.ppl for s in scored]) if scored else np.zeros(0)
    return [
        {"tau": float(t), "p_below": tau_to_probability(t), "masked_share": float((flat > t).mean()) if len(flat) else 0.0}
        for t in taus
    ]


def write_inspection(path: Path, scored: Sequence[Scored], masks: Sequence[np.ndarray], tokenizer: Any) -> None:
    """JSONL with each response token, its PPL, its predictive entropies (when scored with them) and whether it is
    masked (for humans and plots)."""
    lines = []
    for s, m in zip(scored, masks, strict=True):
        toks = tokenizer.convert_ids_to_tokens(s.response_ids)
        text = [tokenizer.decode([t]) for t in s.response_ids]
        n = len(s.logprobs)
        full = s.entropy if len(s.entropy) == n else [None] * n
        topk = s.topk_entropy if len(s.topk_entropy) == n else [None] * n
        tokens = []
        for tk, tx, p, mk, h, hk in zip(toks, text, s.ppl, m, full, topk, strict=True):
            row = {"token": tk, "text": tx, "ppl": round(float(p), 4), "masked": bool(mk)}
            if h is not None:
                row |= {"entropy": round(float(h), 4), "topk_entropy": round(float(hk), 4)}
            tokens.append(row)
        lines.append(json.dumps({"id": s.id, "seq_ppl": s.seq_ppl, "tokens": tokens}))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
