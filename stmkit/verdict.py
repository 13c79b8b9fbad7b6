"""The verdict at this scale: each paper claim a small model can test, judged on every measure, computed not typed.

Input is plain data (what the report reads from the runs): which model label each arm trained with each seed,
per-item measurements of every model, ||ΔW|| per trained model, and per-problem sequence PPL per data source.
Output is one row per (claim, arm, measure): the estimate, a 95% interval over seeds and items, the minimum effect
the design detects with 80% power, the paper's corresponding number, and the verdict word (stmkit.power).

Measures (per item; d[seed, item] is formed per claim):
- ``gold_nll``: gold-answer NLL on non-target tasks (nats/token; a rise is ability lost), stmkit.gold_nll;
- ``kl``: KL drift from the base on its own answers (nats/token; distance, not ability), stmkit.drift;
- ``accuracy``: non-target accuracy, as the paper's BWT: each task's change in % of the base's accuracy on that
  task, tasks weighted equally, tasks the base scores 0 on left out (the tasks differ from the paper's);
- ``target_gold_nll`` and ``target_accuracy``: the same on the target task (TI's measure).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import power

BASE = "Original"
# measure -> (what it is, sign of "ability lost" for a non-target measure)
MEASURES = {
    "gold_nll": ("gold-answer NLL, non-target (nats/token)", +1),
    "accuracy": ("accuracy, non-target (relative change, %)", -1),
    "kl": ("KL drift from the base (nats/token; distance)", +1),
    # favours ground truth by construction: it trains on every token of answers written like these references
    "target_gold_nll": ("gold-answer NLL, target (nats/token; favours ground truth by construction)", +1),
    "target_accuracy": ("accuracy, target (relative change, %)", -1),
}
FORGETTING = ("gold_nll", "accuracy", "kl")
TARGET = ("target_gold_nll", "target_accuracy")
RELATIVE = ("accuracy", "target_accuracy")


# Claim 6 also on every answer the model sampled, correct or not (03_generate_data's sample_ppl): the training sets
# keep only answers that pass the checker, at 135M a few problems or none.
EVERY_SAMPLE = {"Self-Output": "Self-Output, every sample", "Rephrase": "Rephrase, every rewrite"}


@dataclass
class VerdictInput:
    """What the verdict reads. arms: {arm: {seed: model label}}; items: {(label, measure): {item: value}}."""

    arms: dict[str, dict[int, str]]
    items: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    delta_w: dict[str, float] = field(default_factory=dict)
    seq_ppl: dict[str, dict[str, float]] = field(default_factory=dict)  # {data source: {problem id: seq PPL}}
    paper: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # claim key -> (effect, text)
    unfinished: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (target answers cut off, n)
    notes: dict[str, Any] = field(default_factory=dict)  # for the report's text: duplicates, end-of-turn masking


@dataclass(frozen=True)
class Row:
    claim: str
    arm: str
    measure: str
    estimate: float | None
    low: float | None
    high: float | None
    mde: float | None
    seeds: int
    items: int
    paper: str
    verdict: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CLAIMS = {
    "gt_forgets": "1. Ground-truth fine-tuning loses non-target ability (vs the base)",
    "stm_less": "2. STM loses less than ground truth",
    "stm_keeps_target": "3. STM's target-task gain is at least ground truth's (the paper: TI gap > 0)",
    "high_beats_controls": "4. Masking high-PPL tokens forgets less than random / low-PPL masking (Table 3)",
    "delta_w": "5. STM's ||ΔW|| is smaller than ground truth's (Table 7)",
    "ppl_order": "6. Ground truth has higher sequence PPL than Self-Output and Rephrase data (Table 1)",
    # beyond the paper: STM and its siblings, each against ground truth (same seeds, order, steps, evaluation)
    "sibling_less": "forgets less than ground truth",
    "sibling_target": "target-task gain at least ground truth's",
}
# the arms of "STM and its siblings", in the order the report shows them (arms absent from the runs are skipped)
SIBLINGS = ("STM", "STM, end-of-turn trained", "DFT", "EAFT", "conflict masking")


def _matrix(data: VerdictInput, measure: str, runs: Mapping[int, str],
            minus: Callable[[int], str | None]) -> tuple[np.ndarray | None, str]:
    """(d[seed, item], "") with d = value(run of seed) - value(minus(seed)) over the items every involved model has,
    or (None, why not). KL is a distance from the base, so the base's own KL is 0 on every prompt."""
    seeds = [s for s in sorted(runs) if minus(s) is not None]
    tables = []
    for s in seeds:
        a = data.items.get((runs[s], measure))
        b = data.items.get((minus(s), measure))  # type: ignore[arg-type]
        if b is None and measure == "kl" and minus(s) == BASE and a:
            b = dict.fromkeys(a, 0.0)
        if a and b:
            tables.append((a, b))
    if not tables:
        return None, ("the runs or measurements this needs are missing (the default sweep makes them for claims 1-3 "
                      "and 5; claim 4's controls come from SWEEP=cpu-demo-extra)")
    common = set.intersection(*[set(a) & set(b) for a, b in tables])
    base = data.items.get((BASE, measure)) if measure in RELATIVE else None
    if measure in RELATIVE:
        if not base:
            return None, "the base model's accuracy on these items is missing"
        common &= set(base)
    keys = sorted(common)
    if len(keys) < 2:
        return None, f"fewer than 2 items measured by every model involved ({len(keys)})"
    d = np.asarray([[a[k] - b[k] for k in keys] for a, b in tables], dtype=float)
    if measure in RELATIVE:
        return _relative(d, keys, base)  # type: ignore[arg-type]
    return d, ""


def _relative(d: np.ndarray, keys: list[str], base: Mapping[str, float]) -> tuple[np.ndarray | None, str]:
    """As the paper's BWT: each task's change in % of the base's accuracy on that task, tasks weighted equally
    (columns rescaled so the plain mean over items is the mean over tasks); tasks the base scores 0 on are left
    out, as the paper leaves them out."""
    tasks: dict[str, list[int]] = {}
    for j, k in enumerate(keys):
        tasks.setdefault(k.split(":", 1)[0], []).append(j)
    means = {t: float(np.mean([base[keys[j]] for j in cols])) for t, cols in tasks.items()}
    kept = {t: cols for t, cols in tasks.items() if means[t] > 0}
    if not kept:
        return None, "the base model scores 0 on every task here: no relative change is defined"
    cols = [j for c in kept.values() for j in c]
    out = np.empty((d.shape[0], len(cols)))
    pos = 0
    for t, c in kept.items():
        weight = len(cols) / (len(kept) * len(c))
        out[:, pos:pos + len(c)] = 100.0 * d[:, c] / means[t] * weight
        pos += len(c)
    if out.shape[1] < 2:
        return None, "fewer than 2 items on tasks the base scores above 0"
    return out, ""


def _row(claim: str, arm: str, measure: str, matrix: tuple[np.ndarray | None, str], sign: int, data: VerdictInput,
         seeds_matter: bool = True, claimant: str = "the paper") -> Row:
    d, why = matrix
    effect, text = data.paper.get(f"{claim}:{measure}", (None, None))
    if text is None:  # the paper's number in other units than this measure: context, not a target
        effect, context = data.paper.get(claim, (None, "—"))
        text = context if context == "—" else f"context, other units: {context}"
    label = MEASURES[measure][0] if measure in MEASURES else measure
    if d is None:
        return Row(CLAIMS[claim], arm, label, None, None, None, None, 0, 0, text, "not measured", why)
    est = power.crossed_interval(d)
    verdict = power.judge(est if seeds_matter else _as_if_seeded(est), sign, effect, claimant)
    return Row(CLAIMS[claim], arm, label, est.mean, est.low, est.high, est.mde, est.n_seeds, est.n_items, text,
               verdict.word, verdict.reason)


def _as_if_seeded(est: power.Estimate) -> power.Estimate:
    """For a deterministic measure (no training seed involved) the item interval is the whole interval."""
    return power.Estimate(est.mean, est.low, est.high, est.se, est.df, est.mde, max(est.n_seeds, 2), est.n_items)


def _seed_row(claim: str, arm: str, values: list[float], sign: int, data: VerdictInput) -> Row:
    """A measure with one value per seed (||ΔW||): a t interval over seeds."""
    effect, text = data.paper.get(claim, (None, "—"))
    text = text if text == "—" else f"context, other scale: {text}"
    label = "||ΔW|| (per seed)"
    if len(values) < 2:
        return Row(CLAIMS[claim], arm, label, values[0] if values else None, None, None, None, len(values), 0, text,
                   "inconclusive" if values else "not measured",
                   "one seed: seed-to-seed variation is unmeasured" if values else "the runs this needs are missing")
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / math.sqrt(len(v)))
    df = float(len(v) - 1)
    half = power.t_quantile(0.975, df) * se
    est = power.Estimate(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, se, df,
                         power.minimum_detectable_effect(se, df), len(v), 0)
    verdict = power.judge(est, sign, effect)
    return Row(CLAIMS[claim], arm, label, est.mean, est.low, est.high, est.mde, est.n_seeds, 0, text, verdict.word,
               verdict.reason)


def build(data: VerdictInput) -> list[Row]:
    """Every row of the verdict table, in the order the report shows them."""
    rows: list[Row] = []
    gt = data.arms.get("ground truth", {})
    stm_arms = [a for a in data.arms if a.startswith("STM")]
    for m in FORGETTING:
        rows.append(_row("gt_forgets", "ground truth", m, _matrix(data, m, gt, lambda s: BASE), MEASURES[m][1], data))
    for arm in stm_arms:
        runs = data.arms[arm]
        for m in FORGETTING:
            d = _matrix(data, m, runs, gt.get)
            rows.append(_row("stm_less", arm, m, d, -MEASURES[m][1], data))
    for arm in stm_arms:
        runs = data.arms[arm]
        for m in TARGET:
            d = _matrix(data, m, runs, gt.get)
            rows.append(_row("stm_keeps_target", arm, m, d, -MEASURES[m][1], data))
    stm = data.arms.get("STM", {})
    for control in ("random", "low"):
        if control in data.arms:
            runs = data.arms[control]
            d = _matrix(data, "gold_nll", stm, runs.get)
            rows.append(_row("high_beats_controls", f"STM vs {control}", "gold_nll", d, -1, data))
    for arm in stm_arms:
        runs = data.arms[arm]
        diffs = [data.delta_w[runs[s]] - data.delta_w[gt[s]] for s in sorted(runs)
                 if s in gt and runs[s] in data.delta_w and gt[s] in data.delta_w]
        rows.append(_seed_row("delta_w", f"{arm} − ground truth", diffs, -1, data))
    gt_ppl = data.seq_ppl.get("Ground Truth")
    for source in ("Self-Output", "Rephrase", *EVERY_SAMPLE.values()):
        other = data.seq_ppl.get(source)
        needs = ("03_generate_data's record of every sample's PPL" if source in EVERY_SAMPLE.values() else
                 "the score run with Self-Output / Rephrase data (03_generate_data, 01_score_tokens)")
        m: tuple[np.ndarray | None, str] = (None, f"needs {needs}")
        if other is not None and len(other) < 2 and source not in EVERY_SAMPLE.values():
            m = (None, f"the {source} training set holds {len(other)} problem(s) (only answers that pass the tests "
                       "are kept); the every-sample row measures the model's own text on every problem")
        if gt_ppl and other and len(set(gt_ppl) & set(other)) >= 2:
            keys = sorted(set(gt_ppl) & set(other))
            m = (np.asarray([[gt_ppl[k] - other[k] for k in keys]]), "")
        row = _row("ppl_order", f"Ground Truth − {source}", "sequence PPL", m, +1, data, seeds_matter=False)
        rows.append(row)
    return rows


def siblings(data: VerdictInput) -> list[Row]:
    """Each sibling method against ground truth, seed by seed: the forgetting measures (less is the hoped-for side)
    and the target measures (a gain at least ground truth's). Nothing from the paper: these methods are not in it."""
    rows: list[Row] = []
    gt = data.arms.get("ground truth", {})
    for arm in (a for a in SIBLINGS if a in data.arms):
        runs = data.arms[arm]
        for claim, measures in (("sibling_less", FORGETTING), ("sibling_target", TARGET)):
            for m in measures:
                rows.append(_row(claim, arm, m, _matrix(data, m, runs, gt.get), -MEASURES[m][1], data,
                                 claimant="the method"))
    return rows


def per_seed_points(data: VerdictInput, arm: str, measure: str) -> list[dict[str, float]]:
    """For a figure: one point per seed of an arm, the mean change from the base over items with a 95% t interval
    over items (seed variation shows as the spread of the points)."""
    out = []
    for seed, label in sorted(data.arms.get(arm, {}).items()):
        d, _ = _matrix(data, measure, {seed: label}, lambda s: BASE)
        if d is None:
            continue
        v = d[0]
        half = power.t_quantile(0.975, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
        out.append({"seed": seed, "label": label, "mean": float(v.mean()), "low": float(v.mean()) - half,
                    "high": float(v.mean()) + half, "items": len(v)})
    return out


def table(rows: list[Row]) -> Any:
    """The rows as a DataFrame with formatted estimate and interval columns."""
    import pandas as pd

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:+.3g}"

    return pd.DataFrame([{
        "claim": r.claim, "arm": r.arm, "measure": r.measure, "estimate": fmt(r.estimate),
        "95% CI": "—" if r.low is None else f"[{r.low:+.3g}, {r.high:+.3g}]",
        "MDE (80%)": "—" if r.mde is None else f"{r.mde:.3g}", "seeds × items": f"{r.seeds} × {r.items}",
        "paper": r.paper, "verdict": r.verdict, "why": r.reason,
    } for r in rows])  # fmt: skip
