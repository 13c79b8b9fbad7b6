"""The paper's transfer metrics: TI and BWT from per-task accuracies, bootstrap intervals over items (paired
before/after), and the offline `evaluate` metric modules shipped in stmkit/metrics/."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Definitions as in the paper (Sec. 4 and Table 2): both are relative changes, in percent.
#   TI  = 100 * (A_target_after - A_target_before) / A_target_before
#   BWT = 100 * mean over every evaluated task except the target of (A_after - A_before) / A_before

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def _by_task(accuracies: Mapping[str, Any], what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Key a mapping by lower-cased task name (refusing collisions); also return the names as given."""
    keyed: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, value in accuracies.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: task names must be strings, got {name!r}")
        key = name.casefold()
        if key in keyed:
            raise ValueError(
                f"{what}: tasks {names[key]!r} and {name!r} differ only in case; task names are "
                "matched case-insensitively, so keep one of them"
            )
        keyed[key] = value
        names[key] = name
    return keyed, names


def _check_tasks(
    before: Mapping[str, Any], after: Mapping[str, Any], target: str, names: Mapping[str, str]
) -> list[str]:
    """Validate task names and return the lower-cased non-target tasks, in the order of `after`."""
    if target.casefold() not in after:
        raise KeyError(f"target task {target!r} is not among the evaluated tasks {list(names.values())}")
    missing = [names[task] for task in after if task not in before]
    if missing:
        raise KeyError(
            f"task(s) {missing} have an accuracy after fine-tuning but none before; "
            "evaluate the original model on them too"
        )
    others = [task for task in after if task != target.casefold()]
    if not others:
        raise ValueError(
            f"BWT needs at least one non-target task, but only the target {target!r} was evaluated; "
            "add the other tasks (the paper uses MBPP, MATH, ARC, GSM8K, BIRD)"
        )
    return others


def _relative_change(task: str, before: float, after: float) -> float:
    """Percent change of one task's accuracy, with an error that says what to do when it is undefined."""
    if not (math.isfinite(before) and math.isfinite(after)):
        raise ValueError(
            f"task {task!r}: accuracies must be finite numbers, got before={before}, after={after}"
        )
    if before == 0:
        raise ValueError(
            f"task {task!r}: the original model's accuracy is 0, so the relative change in TI/BWT is "
            f"undefined; report the absolute change instead (after - before = {after - before:+g})"
        )
    return 100.0 * (after - before) / before


def transfer_metrics(
    before: Mapping[str, float], after: Mapping[str, float], target: str
) -> dict[str, float]:
    """TI and BWT in percent, as the paper defines them, from per-task accuracies before and after tuning."""
    before_k, _ = _by_task(before, "before")
    after_k, names = _by_task(after, "after")
    others = _check_tasks(before_k, after_k, target, names)
    key = target.casefold()
    ti = _relative_change(names[key], float(before_k[key]), float(after_k[key]))
    changes = [_relative_change(names[t], float(before_k[t]), float(after_k[t])) for t in others]
    return {"ti": ti, "bwt": float(np.mean(changes))}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap over items: (point estimate, lower, upper) of `stat` at level 1 - alpha."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(
            f"values must be a non-empty 1-D sequence of per-item scores, got shape {data.shape}"
        )
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    rng = np.random.default_rng(seed)
    # One resample at a time keeps memory at O(items) however large n_resamples is.
    stats = np.array([stat(data[rng.integers(0, data.size, data.size)]) for _ in range(n_resamples)])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(stat(data)), float(low), float(high)


def _item_scores(
    items: Mapping[str, Sequence[float]], what: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-task arrays of per-item scores in [0, 1] keyed by lower-cased name, and the names as given."""
    arrays = {}
    keyed, names = _by_task(items, what)
    for key, scores in keyed.items():
        task = names[key]
        arr = np.asarray(scores, dtype=float)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{what}[{task!r}]: expected a non-empty 1-D sequence of per-item scores")
        bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr > 1))
        if bad.size:
            raise ValueError(
                f"{what}[{task!r}]: item {bad[0]} has score {arr[bad[0]]}; per-item scores must be "
                "correctness in [0, 1] (1 = correct)"
            )
        arrays[key] = arr
    return arrays, names


def paired_bootstrap_transfer(
    before_items: Mapping[str, Sequence[float]],
    after_items: Mapping[str, Sequence[float]],
    target: str,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | int]:
    """TI and BWT with percentile-bootstrap CIs, resampling items paired (same indices before and after)."""
    before, _ = _item_scores(before_items, "before_items")
    after, names = _item_scores(after_items, "after_items")
    others = _check_tasks(before, after, target, names)
    tasks = [target.casefold(), *others]
    for task in tasks:
        if before[task].size != after[task].size:
            raise ValueError(
                f"task {names[task]!r}: {before[task].size} items before but {after[task].size} after; "
                "the paired bootstrap needs the same items, in the same order, scored by both models"
            )
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")

    point = transfer_metrics(
        {names[t]: before[t].mean() for t in tasks}, {names[t]: after[t].mean() for t in tasks}, target
    )

    rng = np.random.default_rng(seed)
    # Relative change per task and resample; tasks are resampled independently (they share no items),
    # and within a task one index draw serves both models, which is what makes the bootstrap paired.
    rel = np.empty((len(tasks), n_resamples))
    chunk = max(1, 2_000_000 // max(arr.size for arr in before.values()))  # bound memory of the index block
    for i, task in enumerate(tasks):
        b, a = before[task], after[task]
        for start in range(0, n_resamples, chunk):
            stop = min(start + chunk, n_resamples)
            idx = rng.integers(0, b.size, (stop - start, b.size))
            mean_b, mean_a = b[idx].mean(axis=1), a[idx].mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel[i, start:stop] = np.where(mean_b > 0, 100.0 * (mean_a - mean_b) / mean_b, np.nan)

    # A resample whose baseline accuracy is 0 on some task has no relative change; drop it and say so,
    # because silently keeping or zeroing it would distort the interval.
    defined = ~np.isnan(rel).any(axis=0)
    n_undefined = int((~defined).sum())
    if n_undefined == n_resamples:
        raise ValueError(
            "every bootstrap resample has a task with baseline accuracy 0, so no interval can be formed; "
            "use more items or report absolute changes"
        )
    if n_undefined:
        warnings.warn(
            f"{n_undefined} of {n_resamples} resamples had a task with baseline accuracy 0 and were dropped; "
            "the interval may be too narrow (tasks with few correct items)",
            stacklevel=2,
        )
    ti_samples = rel[0, defined]
    bwt_samples = rel[1:, defined].mean(axis=0)
    q = [alpha / 2, 1 - alpha / 2]
    ti_low, ti_high = np.quantile(ti_samples, q)
    bwt_low, bwt_high = np.quantile(bwt_samples, q)
    return {
        "ti": point["ti"],
        "ti_low": float(ti_low),
        "ti_high": float(ti_high),
        "bwt": point["bwt"],
        "bwt_low": float(bwt_low),
        "bwt_high": float(bwt_high),
        "n_resamples": n_resamples,
        "n_undefined": n_undefined,
    }


def load_metric(name: str, **kwargs: Any) -> Any:
    """Load a metric shipped in stmkit/metrics/<name>/ with `evaluate`, by path, so it works offline."""
    script = METRICS_DIR / name / f"{name}.py"
    if not script.is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise KeyError(f"no metric {name!r} in {METRICS_DIR}; available: {available}")
    # Imported here for start-up time: `evaluate` pulls in datasets and pyarrow, which TI/BWT do not need.
    import evaluate

    # keep_in_memory: the inputs are small, and it avoids lock and arrow files under ~/.cache.
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(script), **kwargs)

