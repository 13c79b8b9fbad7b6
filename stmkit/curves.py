"""Accuracy over training: a training run's checkpoints evaluated on tasks (paper Figures 4, 7, 11 and 12).

Figures 4 and 7 (first panel) plot the target task's test accuracy against epochs for each method; Figures 11-12
put the regularisation grid's accuracy beside STM's. Training saves adapter checkpoints when the profile sets
`training.save_every_epochs` or `training.save_every_steps` (none by default); each is evaluated like a final
model (stmkit.evaluation, cached by fingerprint), with step 0 the original model.

Where the checkpoints are: 04_sft records results["training"]["checkpoints"] (absolute folders, no step or
epoch), and the training cache entry (the folder above adapter_dir) holds train_result.json with every
checkpoint's step, epoch and folder relative to the entry. The latter is read when present (06_regularization
records only its adapters' folders); otherwise run.json's list is used, relative folders resolved against that
entry and steps read off the folder names (checkpoints/step-000012).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters import trained_model
from .evaluation import evaluate_model, parse_task_spec
from .tasks import get_task
from .training import RESULT_FILE

CURVE_FIELDS = ("step", "epoch", "task", "accuracy", "ci_low", "ci_high", "n", "key")


@dataclass(frozen=True)
class Checkpoint:
    """One saved model of a training run: optimizer step, epoch, folder and how to load it."""

    step: int | None
    epoch: float | None
    path: Path
    kind: str  # "adapter_dir" (LoRA/DoRA) or "model_dir" (full fine-tuning), as adapters.trained_model reads it
    final: bool = False


def checkpoint_models(name: str, run_results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each intermediate checkpoint of a training run as a model 05_evaluate can evaluate like a final one:
    {"<run>@step<N>": {adapter_dir or model_dir: folder}} (the final model is the run itself). The forgetting curve
    (PROFILE=cpu-curve) evaluates every measure at each of them."""
    return {f"{name}@step{p.step}": {p.kind: str(p.path)} for p in list_checkpoints(run_results) if not p.final}


def _step_of(folder: Path) -> int:
    match = re.fullmatch(r"step-(\d+)", folder.name)
    if match is None:
        raise ValueError(f"checkpoint folder {folder} is not named step-<number>; cannot tell its training step")
    return int(match.group(1))


def list_checkpoints(run_results: Mapping[str, Any]) -> list[Checkpoint]:
    """The intermediate checkpoints of a training run (by step) and its final model, from its run.json results."""
    kind = "adapter_dir" if run_results.get("adapter_dir") else "model_dir" if run_results.get("model_dir") else None
    if kind is None:
        raise KeyError(
            f"the training run's results have neither 'adapter_dir' nor 'model_dir' (keys: {sorted(run_results)}); "
            "run the training notebook to completion for that run first"
        )
    final = Path(run_results[kind])
    entry = final.parent  # the training cache entry: adapter/, checkpoints/, train_result.json
    training = run_results.get("training") or {}
    points: list[Checkpoint] = []
    if (entry / RESULT_FILE).is_file():
        saved = json.loads((entry / RESULT_FILE).read_text())
        record = saved.get("record", {})
        for c in saved.get("checkpoints", []):
            points.append(Checkpoint(int(c["step"]), c.get("epoch"), entry / c["dir"], kind))
        final_step, final_epoch = record.get("steps"), record.get("epochs")
    else:
        per_epoch = training.get("steps_per_epoch")
        for d in training.get("checkpoints", []):
            folder = Path(d) if Path(d).is_absolute() else entry / d
            step = _step_of(folder)
            points.append(Checkpoint(step, round(step / per_epoch, 4) if per_epoch else None, folder, kind))
        final_step, final_epoch = training.get("steps"), training.get("epochs")
    missing = [str(p.path) for p in points if not p.path.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder(s) {missing} of {final} are gone (cache cleared?); rerun the training notebook"
        )
    points.sort(key=lambda p: p.step)
    points = [p for p in points if final_step is None or p.step < final_step]
    points.append(Checkpoint(None if final_step is None else int(final_step), final_epoch, final, kind, final=True))
    return points


def resolve_task_specs(text: str, target: str) -> list[str]:
    """'target, gsm8k' -> ['mbpp', 'gsm8k'] for target mbpp: comma-separated task specs, "target" = the target task.

    Duplicates are dropped; an unknown task or mode is an error naming it.
    """
    specs = []
    for raw in text.split(","):
        spec = raw.strip()
        if not spec:
            continue
        name, mode = parse_task_spec(spec)
        if name.casefold() == "target":
            name = target
        get_task(name)  # KeyError listing the tasks when unknown
        specs.append(f"{name}:{mode}" if mode else name)
    return list(dict.fromkeys(specs))


def _rows(step: int | None, epoch: float | None, summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"step": step, "epoch": epoch, "task": spec, **{k: s[k] for k in CURVE_FIELDS[3:]}}
            for spec, s in summaries.items()]


def checkpoint_accuracy(
    base_model: Any,
    tokenizer: Any,
    run_results: Mapping[str, Any],
    tasks: Sequence[str],
    n_items: int,
    *,
    base_fingerprint: str,
    config: Any = None,
    source: str = "embedded",
    cache: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Accuracy of the original model (step 0), each checkpoint and the final model of a run on each task.

    One row per (model, task): step, epoch, task, accuracy, ci_low, ci_high (95% bootstrap over items), n and the
    evaluation's cache key. Models are evaluated with evaluation.evaluate_model through adapters.trained_model
    (config: an EvalConfig for max_new_tokens, batch size, bootstrap, ...), so each is cached by its fingerprint.
    """
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task specs, not the string {tasks!r}; see resolve_task_specs")
    points = list_checkpoints(run_results)
    kw = {"config": config, "source": source, "cache": cache, "progress": progress}
    rows = _rows(0, 0.0, evaluate_model(base_model, tokenizer, tasks, n_items, fingerprint=base_fingerprint, **kw))
    for point in points:
        if progress:
            print(f"--- step {point.step} (epoch {point.epoch}){' final' if point.final else ''}: {point.path}")
        with trained_model(base_model, {point.kind: str(point.path)}, base_fingerprint) as (model, fp, _):
            rows += _rows(point.step, point.epoch, evaluate_model(model, tokenizer, tasks, n_items, fingerprint=fp,
                                                                  **kw))
    return rows


def accuracy_curve_figure(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "", colors: Mapping[str, str] | None = None
) -> Any:
    """Accuracy (95% CI band) against epochs, one panel per task, one line per run (Figures 4/7, first panel)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from . import plots  # lazy: matplotlib (about 1 s) only when drawing

    plots.use_style()
    frames = {label: pd.DataFrame(list(rows)) for label, rows in curves.items() if rows}
    tasks = list(dict.fromkeys(t for df in frames.values() for t in df["task"]))
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 3.4), squeeze=False,
                             layout="constrained")
    palette = plots.sns.color_palette("tab10", max(len(frames), 1)).as_hex()
    for ax, task in zip(axes[0], tasks, strict=False):
        for i, (label, df) in enumerate(frames.items()):
            d = df[(df["task"] == task) & df["epoch"].notna()].sort_values("step")
            if d.empty:
                continue
            c = (colors or {}).get(label, palette[i % len(palette)])
            ax.plot(d["epoch"], d["accuracy"], marker="o", ms=3, lw=1.2, color=c, label=label)
            ax.fill_between(d["epoch"], d["ci_low"], d["ci_high"], color=c, alpha=0.15, lw=0)
        ax.set_title(f"{task} (test)", fontsize=10)
        ax.set_xlabel("epoch (0 = original model)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, min(1.02, max(0.1, ax.get_ylim()[1])))  # accuracy is a share: never below 0
        if ax.has_data():
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
