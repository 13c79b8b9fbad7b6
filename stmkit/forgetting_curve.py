"""Where forgetting appears: the powered measures over training steps (profile cpu-curve).

"Scaling Laws for Forgetting" (arXiv 2401.05605) finds forgetting grows as a power law in fine-tuning steps. A
05_evaluate run with every_checkpoint evaluates each saved checkpoint as a model "<run>@step<N>" beside the final
model "<run>"; this module turns those records into one row per (run, step, measure): the mean rise of the gold
answers' NLL over the base on the non-target tasks (loss of ability), the mean KL drift from the base (distance),
each with a 95% interval over items (one seed: seeds are not resampled), and says where each run's forgetting first
shows (the first step whose interval lies above zero) and how it grows (the log-log slope of the rise over steps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import gold_nll
from .drift import per_prompt_kl
from .power import crossed_interval
from .records import RunRecord

MEASURES = {"gold_nll": "gold-answer NLL rise, non-target (nats/token)", "kl": "KL drift from the base (nats/token)"}
_AT_STEP = re.compile(r"^(?P<run>.+)@step(?P<step>\d+)$")


def split_label(label: str, final_steps: Mapping[str, int]) -> tuple[str, int] | None:
    """(training run, step) of an evaluated model: "<run>@step<N>", or a run's final model at its last step."""
    m = _AT_STEP.match(label)
    if m:
        return m["run"], int(m["step"])
    if label in final_steps:
        return label, int(final_steps[label])
    return None


def has_checkpoints(evaluate_records: Sequence[RunRecord]) -> bool:
    """Whether any evaluation scored a training checkpoint ("<run>@step<N>"), i.e. there is a curve to draw."""
    return any(_AT_STEP.match(label) for rec in evaluate_records
               for label in (*rec.results.gold_nll, *rec.results.drift))


def curve_rows(evaluate_records: Sequence[RunRecord], final_steps: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per (run, step, measure): estimate and 95% interval over items; steps include the final model."""
    rows = []
    for rec in evaluate_records:
        gold, drift_results = rec.results.gold_nll, rec.results.drift
        base_gold = gold_nll.items_by_role(gold.get("Original", {})).get("non-target", {})
        for label in sorted(set(gold) | set(drift_results)):
            where = split_label(label, final_steps)
            if where is None:
                continue
            per_measure = {"kl": per_prompt_kl(drift_results.get(label, {}))}
            tuned = gold_nll.items_by_role(gold.get(label, {})).get("non-target", {})
            if base_gold and tuned:
                per_measure["gold_nll"] = gold_nll.nll_rise(tuned, base_gold)
            for measure, items in per_measure.items():
                if len(items) < 2:
                    continue
                est = crossed_interval(np.array([list(items.values())]))
                rows.append({"run": where[0], "step": where[1], "measure": measure, "estimate": est.mean,
                             "ci_low": est.low, "ci_high": est.high, "items": len(items)})
    return sorted(rows, key=lambda r: (r["run"], r["measure"], r["step"]))


def describe(rows: Sequence[Mapping[str, Any]], measure: str = "gold_nll") -> list[str]:
    """Per run, in words: where the measure's interval first lies above zero, its value at the last step, and the
    log-log slope of the rise over steps (a power law's exponent) when every point is above zero."""
    lines = []
    for run in sorted({r["run"] for r in rows}):
        pts = [r for r in rows if r["run"] == run and r["measure"] == measure]
        if not pts:
            continue
        first = next((r["step"] for r in pts if r["ci_low"] > 0), None)
        last = pts[-1]
        where = (f"first above zero at step {first}" if first is not None
                 else "never distinguishable from zero (the 95% interval includes zero or lies below it)")
        slope = ""
        if len(pts) >= 3 and all(r["estimate"] > 0 for r in pts):
            x = np.log([r["step"] for r in pts])
            y = np.log([r["estimate"] for r in pts])
            slope = f"; grows as steps^{float(np.polyfit(x, y, 1)[0]):.2f}"
        lines.append(f"{run}: {where}; at step {last['step']} {last['estimate']:+.3f} "
                     f"[{last['ci_low']:+.3f}, {last['ci_high']:+.3f}]{slope}")
    return lines



def summary(rows: Sequence[Mapping[str, Any]], runs: Mapping[str, tuple[str, Any]]) -> list[dict[str, str]]:
    """One row per training run for the README: its method and learning rate (runs: {run: (label, lr)}), the
    gold-answer NLL rise at each step, the last with its interval, and KL drift from the first step to the last."""
    out = []
    def order(run: str) -> tuple[float, str]:  # higher learning rate first, then by method
        label, lr = runs.get(run, (run, None))
        return -float(lr or 0), label.casefold()

    for run in sorted({r["run"] for r in rows}, key=order):
        gold = [r for r in rows if r["run"] == run and r["measure"] == "gold_nll"]
        kl = [r for r in rows if r["run"] == run and r["measure"] == "kl"]
        if not gold:
            continue
        label, lr = runs.get(run, (run, None))
        row = {"run": run, "method": label, "lr": f"{lr:g}" if lr is not None else "—"}
        row |= {f"step {r['step']}": f"{r['estimate']:+.3f}" for r in gold[:-1]}
        last = gold[-1]
        row[f"step {last['step']} [95% CI]"] = f"{last['estimate']:+.3f} [{last['ci_low']:+.3f}, {last['ci_high']:+.3f}]"
        row["KL drift, first → last step"] = f"{kl[0]['estimate']:.3f} → {kl[-1]['estimate']:.3f}" if kl else "—"
        out.append(row)
    return out
