"""Token-level analyses behind Table 1 and Figures 3 and 8-10: PPL statistics, traces and token categories."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .scoring import Scored

CATEGORIES = ("Numbers", "Symbols & special characters", "Words")
_NUMBER = re.compile(r"^\s*[0-9]+([.,][0-9]+)*\s*$")
_WORDISH = re.compile(r"[A-Za-z]")


def token_category(text: str, is_special: bool = False) -> str:
    """The paper's three token categories (Figures 8-10): digits, symbols/special/whitespace, or words."""
    if is_special:
        return "Symbols & special characters"
    if _NUMBER.match(text):
        return "Numbers"
    if _WORDISH.search(text):
        return "Words"
    return "Symbols & special characters"


def ppl_stats(sources: Mapping[str, Sequence[Scored]]) -> pd.DataFrame:
    """Table 1: mean and variance of sequence PPL per training-data source, with token counts."""
    rows = []
    for source, scored in sources.items():
        seq = np.array([s.seq_ppl for s in scored], dtype=float)
        tok = np.concatenate([s.ppl for s in scored]) if scored else np.zeros(0)
        rows.append(
            {
                "training_data": source,
                "examples": len(scored),
                "avg_ppl": float(seq.mean()) if len(seq) else float("nan"),
                "ppl_variance": float(seq.var(ddof=1)) if len(seq) > 1 else float("nan"),
                "response_tokens": int(len(tok)),
                "share_tokens_ppl_gt_2.5": float((tok > 2.5).mean()) if len(tok) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def first_tokens_variance(scored: Scored, n: int = 20) -> float:
    """Variance of the first n token PPLs of one response (Figure 3's spikiness measure)."""
    p = scored.ppl[:n]
    return float(np.var(p, ddof=1)) if len(p) > 1 else float("nan")


def traces_for(sources: Mapping[str, Sequence[Scored]], item_id: str) -> dict[str, Scored]:
    """The same problem's scored response from every source that has it (Figure 3)."""
    out = {}
    for label, scored in sources.items():
        match = [s for s in scored if s.id == item_id]
        if match:
            out[label] = match[0]
    return out


def shared_problem(sources: Mapping[str, Sequence[Scored]], preferred: str) -> tuple[str, str]:
    """(problem id, note) for Figure 3: `preferred` when every non-empty source has it, else the first problem
    that the most sources share (ground truth has every problem; generated sets only those answered correctly)."""
    present = [{s.id for s in scored} for scored in sources.values() if scored]
    if not present or all(preferred in ids for ids in present):
        return preferred, ""
    order = [s.id for s in next(iter(sources.values()))]
    best = max(order, key=lambda i: (sum(i in ids for ids in present), -order.index(i)))
    n = sum(best in ids for ids in present)
    note = "" if n == len(present) else f"no problem is in all {len(present)} sources; problem {best} is in {n}"
    return best, note


def category_shares(scored: Sequence[Scored], masks: Sequence[np.ndarray], tokenizer: Any) -> pd.DataFrame:
    """Figures 8-10: share of each token category among all response tokens and among masked (high-PPL) tokens."""
    special = set(tokenizer.all_special_ids)
    counts = {("all", c): 0 for c in CATEGORIES} | {("masked", c): 0 for c in CATEGORIES}
    for s, m in zip(scored, masks, strict=True):
        for tid, mk in zip(s.response_ids, m, strict=True):
            cat = token_category(tokenizer.decode([tid]), tid in special)
            counts[("all", cat)] += 1
            if mk:
                counts[("masked", cat)] += 1
    rows = []
    for group in ("all", "masked"):
        total = sum(counts[(group, c)] for c in CATEGORIES)
        for c in CATEGORIES:
            rows.append(
                {"tokens": group, "category": c, "count": counts[(group, c)],
                 "share": counts[(group, c)] / total if total else 0.0}
            )
    return pd.DataFrame(rows)


def masked_examples(scored: Sequence[Scored], masks: Sequence[np.ndarray], tokenizer: Any, k: int = 20) -> pd.DataFrame:
    """The most frequent masked token strings with their median PPL (what STM removes, in plain words)."""
    seen: dict[str, list[float]] = {}
    for s, m in zip(scored, masks, strict=True):
        for tid, p, mk in zip(s.response_ids, s.ppl, m, strict=True):
            if mk:
                seen.setdefault(tokenizer.decode([tid]), []).append(float(p))
    rows = [{"token": repr(t), "times_masked": len(v), "median_ppl": float(np.median(v))} for t, v in seen.items()]
    df = pd.DataFrame(rows, columns=["token", "times_masked", "median_ppl"])
    return df.sort_values(["times_masked", "median_ppl"], ascending=[False, False]).head(k).reset_index(drop=True)


def entropy_quadrants(sources: Mapping[str, Sequence[Scored]], tau: float, conflict_entropy: float) -> pd.DataFrame:
    """Share of each source's response tokens in the four quadrants of the probability x entropy plane: below or
    above STM's probability 1/tau, and below or above the entropy gate (top-20 entropy / log 20). "Confident
    conflict" = low probability and low entropy: the model was sure of another token (EAFT, arXiv 2601.02151)."""
    rows = []
    for label, scored in sources.items():
        p = np.concatenate([s.probability for s in scored]) if scored else np.zeros(0)
        h = np.concatenate([np.asarray(s.topk_entropy, dtype=float) for s in scored]) if scored else np.zeros(0)
        if len(h) != len(p):
            raise ValueError(f"{label}: scored without per-token entropies; score with stmkit.scoring.score_examples")
        low_p, low_h = p < 1.0 / tau, h < conflict_entropy
        n = max(len(p), 1)
        rows.append({
            "source": label, "tokens": len(p),
            "confident_conflict": float((low_p & low_h).sum() / n),  # masked by the conflict rule
            "uncertain_low_p": float((low_p & ~low_h).sum() / n),  # masked by STM, kept by conflict masking
            "confident_agree": float((~low_p & low_h).sum() / n),
            "uncertain_high_p": float((~low_p & ~low_h).sum() / n),
            "stm_masked": float(low_p.sum() / n),
        })
    return pd.DataFrame(rows)
