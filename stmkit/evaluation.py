"""The task harness: run a model on benchmark items (generate or log-likelihood), cache per-item records, and read
TI/BWT reports and the paper's accuracy tables off the results. The metrics themselves are in transfer.py."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import generation
from .adapters import weights_fingerprint
from .cache import Cache, atomic_write_text, content_key, dumps_finite
from .config import EvalConfig
from .loglik import loglik_choices
from .scoring import data_fingerprint, tokenizer_fingerprint
from .tasks import LETTERS, ScoreOptions, get_task, load, score
from .tasks.prompts import PROMPT_VERSION
from .transfer import bootstrap_ci, paired_bootstrap_transfer

# pandas is imported where a table is built, for start-up time: evaluating needs no DataFrame.

# evaluate_task runs one task on a list of items and checks the answers; evaluate_model runs a profile's tasks
# and summarises them (accuracy with a bootstrap CI). Results are cached by everything that determines them.
#
# Modes:
#   "generate": zero-shot chat prompt (the paper's), greedy decoding, the task's checker (MBPP asserts in the
#               sandbox, GSM8K number, MATH equivalence, ARC letter, BIRD execution match).
#   "loglik":   multiple choice by log-likelihood. Context = the task's plain-text format, no chat template
#               (ARC/SciQ: "Question: <q>\nAnswer:", SciQ's support passage first; PIQA: "Goal: <g>\nAnswer:"),
#               each option appended as " <option>" (tokenised separately, so option tokens are exactly the
#               option); the prediction is the option with the largest *sum* of token log-probs (the record also
#               keeps the per-character-normalised choice, pred_index_norm).
# A task spec in a task list may name the mode: "arc_challenge:loglik"; without one the task's default applies.

EVAL_VERSION = 2  # 2: MBPP pass@1 needs the sandbox's proof that every test ran (early exits are wrong)
MODES = ("generate", "loglik")


def parse_task_spec(spec: str) -> tuple[str, str | None]:
    """'arc_challenge:loglik' -> ('arc_challenge', 'loglik'); 'gsm8k' -> ('gsm8k', None)."""
    name, _, mode = spec.partition(":")
    if mode and mode not in MODES:
        raise ValueError(f"task spec {spec!r}: unknown mode {mode!r} (modes: {', '.join(MODES)})")
    return name.strip(), (mode or None)


def resolve_mode(task_name: str, mode: str | None = "auto") -> str:
    """The evaluation mode of a task: the one asked for, or the task's default for 'auto'/None."""
    task = get_task(task_name)
    if mode in (None, "auto"):
        return task.eval_mode
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown for task {task.name}; use one of {', '.join(MODES)} or 'auto'")
    if mode == "loglik" and (task.loglik_context is None or task.kind != "mc"):
        raise ValueError(f"task {task.name} is not multiple choice; evaluate it in 'generate' mode")
    if mode == "generate" and task.scorer is None:
        raise ValueError(f"task {task.name} has no checker for generated answers; use 'loglik'")
    return mode


@dataclass
class TaskResult:
    """One task evaluated on one model: per-item records, where they are saved, and how they were made."""

    task: str
    mode: str
    split: str
    records: list[dict[str, Any]]
    items_path: Path
    key: str
    wall_s: float
    cached: bool
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def correct(self) -> np.ndarray:
        """Per-item correctness (1.0 / 0.0), in item order."""
        return np.array([float(r["correct"]) for r in self.records])

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.records else float("nan")

    def summary(self, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
        """accuracy with a percentile-bootstrap 95% CI over items, n, items_path, and how it was computed."""
        acc, low, high = bootstrap_ci(self.correct, n_resamples=n_resamples, seed=seed)
        return {
            "accuracy": acc,
            "ci_low": low,
            "ci_high": high,
            "n": self.n,
            "items_path": str(self.items_path),
            "mode": self.mode,
            "split": self.split,
            "key": self.key,
            "wall_s": round(self.wall_s, 3),
            "cached": self.cached,
        }


def _records_loglik(
    model: Any, tokenizer: Any, task: Any, items: Sequence[Any], batch_size: int, max_tokens: int, progress: bool
) -> list[dict[str, Any]]:
    contexts = [task.loglik_context(ex) for ex in items]
    lps = loglik_choices(
        model, tokenizer, contexts, [ex.choices for ex in items], batch_size=batch_size,
        max_tokens_per_batch=max_tokens, progress=progress, names=[f"{task.name} item {ex.id!r}" for ex in items],
    )
    out = []
    for ex, lp in zip(items, lps, strict=True):
        chars = [max(len(" " + c.strip()), 1) for c in ex.choices]
        pred = int(np.argmax(lp))
        pred_norm = int(np.argmax(np.asarray(lp) / np.asarray(chars)))
        out.append({
            "id": ex.id, "task": ex.task, "mode": "loglik", "extracted": LETTERS[pred], "gold": ex.answer,
            "correct": pred == ex.gold_index, "error": "", "pred_index": pred, "pred_index_norm": pred_norm,
            "gold_index": ex.gold_index, "choice_logprobs": lp, "choice_chars": chars,
        })  # fmt: skip
    return out


def _records_generate(
    model: Any, tokenizer: Any, task: Any, items: Sequence[Any], decoding: Any, *, batch_size: int, max_tokens: int,
    options: Any, progress: bool,
) -> list[dict[str, Any]]:
    completions = generation.generate(
        model, tokenizer, [ex.prompt for ex in items], decoding, batch_size=batch_size,
        max_tokens_per_batch=max_tokens, progress=progress, desc=f"{task.name}: generating",
    )
    texts = [c[0].text for c in completions]
    verdicts = score(task.name, items, texts, options)
    out = []
    for ex, comp, verdict in zip(items, completions, verdicts, strict=True):
        # A scorer's further fields (IFEval: the verdict on each instruction) are kept in the record.
        extra = {k: v for k, v in verdict.items() if k not in ("extracted", "correct", "error")}
        out.append({
            "id": ex.id, "task": ex.task, "mode": "generate", "generated": comp[0].text,
            "extracted": verdict["extracted"], "gold": ex.answer, "correct": bool(verdict["correct"]),
            "error": verdict.get("error", ""), "n_tokens": len(comp[0].token_ids), "finished": comp[0].finished,
            **extra,
        })  # fmt: skip
    return out


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_finite(r, f"record {r.get('id')!r} of {path}", default=str) + "\n"
                                    for r in records))


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Per-item records from an items JSONL file written by evaluate_task / evaluate_model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-item predictions {path} not found; rerun the evaluation that wrote it")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task_name: str,
    items: Sequence[Any],
    mode: str | None = "auto",
    *,
    fingerprint: str | None = None,
    split: str = "test",
    max_new_tokens: int = 256,
    batch_size: int = 8,
    max_tokens_per_batch: int = 16384,
    sandbox_timeout_s: float = 10.0,
    workers: int = 2,
    judge: Callable[[str, str, str], bool] | None = None,
    cache: Any = None,
    progress: bool = True,
) -> TaskResult:
    """Evaluate a model on a task's items: per-item records (id, generated, extracted, gold, correct) + accuracy.

    Cached by model fingerprint (weights hash unless given), tokenizer, task, mode, split, the items themselves
    (ids, prompts, answers; hence also their number), prompts.PROMPT_VERSION and the decoding settings.
    """
    task = get_task(task_name)
    mode = resolve_mode(task.name, mode)
    if not items:
        raise ValueError(f"no items to evaluate for task {task.name}; check n_items and the split {split!r}")
    wrong = sorted({ex.task for ex in items} - {task.name})
    if wrong:
        raise ValueError(f"items of task(s) {wrong} passed to evaluate_task for {task.name}; pass {task.name} items")
    if isinstance(model, generation.VLLMEngine) and mode == "loglik":
        raise ValueError(f"{task.name} in 'loglik' mode needs the transformers model; vLLM only generates")
    cache = cache or Cache()
    decoding = generation.greedy(max_new_tokens)
    settings: dict[str, Any] = {"task": task.name, "mode": mode, "split": split, "n": len(items)}
    if mode == "generate":
        settings.update(decoding=decoding.key(), sandbox_timeout_s=sandbox_timeout_s,
                        judge=None if judge is None else getattr(judge, "__qualname__", repr(judge)))
    if fingerprint is None:
        if isinstance(model, generation.VLLMEngine):
            raise ValueError("pass fingerprint=... with a VLLMEngine (e.g. models.fingerprint of its folder)")
        fingerprint = weights_fingerprint(model)
    dtype = "vllm" if isinstance(model, generation.VLLMEngine) else str(next(model.parameters()).dtype)
    answers = [(ex.id, ex.answer, list(ex.choices), ex.gold_index, list(ex.tests)) for ex in items]
    key = content_key(
        "eval", EVAL_VERSION, model=fingerprint, tokenizer=tokenizer_fingerprint(tokenizer), settings=settings,
        data=data_fingerprint(items), answers=answers, prompt_version=PROMPT_VERSION, dtype=dtype,
        generation_version=generation.GENERATION_VERSION,
    )
    hit = cache.get("eval", key)
    if hit is not None:
        meta = cache.meta("eval", key)
        return TaskResult(task.name, mode, split, load_records(hit / "items.jsonl"), hit / "items.jsonl", key,
                          float(meta.get("wall_s", 0.0)), True, settings)
    t0 = time.perf_counter()
    if mode == "loglik":
        records = _records_loglik(model, tokenizer, task, items, batch_size, max_tokens_per_batch, progress)
    else:
        options = ScoreOptions(timeout_s=sandbox_timeout_s, workers=workers, judge=judge)
        records = _records_generate(model, tokenizer, task, items, decoding, batch_size=batch_size,
                                    max_tokens=max_tokens_per_batch, options=options, progress=progress)
    wall = time.perf_counter() - t0
    with cache.put("eval", key, meta={**settings, "wall_s": round(wall, 3), "model": fingerprint}) as tmp:
        _write_jsonl(tmp / "items.jsonl", records)
    path = cache.path("eval", key) / "items.jsonl"
    return TaskResult(task.name, mode, split, records, path, key, wall, False, settings)


def load_task_items(
    task_spec: str, n_items: int, split: str = "test", source: str = "embedded",
    task_data: Mapping[str, str] | None = None,
) -> list[Any]:
    """The first n_items (0 = all) of a task's split. task_data: a local copy of a task's data by task name
    (EvalConfig.task_data: BIRD's dev folder, IFEval's JSONL); a task without one reads its default (its
    environment variable, else its stand-in)."""
    name, _ = parse_task_spec(task_spec)
    data_dir = (task_data or {}).get(get_task(name).name)  # each task's own local copy, never another's
    return load(name, split, n_items, source, data_dir=data_dir or None)


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    n_items: int,
    *,
    config: Any = None,
    split: str = "test",
    source: str = "embedded",
    fingerprint: str | None = None,
    out_dir: str | Path | None = None,
    judge: Callable[[str, str, str], bool] | None = None,
    cache: Any = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate a model on several tasks -> {task spec: {accuracy, ci_low, ci_high, n, items_path, mode, ...}}.

    Settings (max_new_tokens, batch_size, sandbox_timeout_s, bootstrap, task data folders) come from config, an
    EvalConfig (defaults if None). With out_dir, each task's per-item JSONL is also written to
    out_dir/<task spec>.jsonl, and items_path points there.
    """
    cfg = config or EvalConfig()
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, not the string {tasks!r}")
    # Hash the weights once for all tasks (evaluate_task asks a VLLMEngine for an explicit fingerprint).
    fp = fingerprint or (None if isinstance(model, generation.VLLMEngine) else weights_fingerprint(model))
    out: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        name, mode = parse_task_spec(spec)
        items = load_task_items(spec, n_items, split, source, cfg.task_data)
        res = evaluate_task(
            model, tokenizer, name, items, mode or "auto", fingerprint=fp, split=split,
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, sandbox_timeout_s=cfg.sandbox_timeout_s,
            judge=judge, cache=cache, progress=progress,
        )  # fmt: skip
        summary = res.summary(n_resamples=cfg.bootstrap)
        if out_dir is not None:
            dest = Path(out_dir) / f"{spec.replace(':', '_')}.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(res.items_path, dest)
            summary["items_path"] = str(dest)
        out[spec] = summary
        if progress:
            print(f"{spec:16s} {summary['accuracy']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] "
                  f"n={summary['n']} ({'cached' if res.cached else f'{res.wall_s:.0f} s'})")
    return out


def item_scores(summary: Mapping[str, Any]) -> dict[str, float]:
    """{item id: 1.0/0.0} from an evaluate_model summary entry (reads its items_path)."""
    return {str(r["id"]): float(r["correct"]) for r in load_records(summary["items_path"])}


def transfer_report(
    before: Mapping[str, Mapping[str, Any]],
    after: Mapping[str, Mapping[str, Any]],
    target: str,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """TI and BWT with paired bootstrap CIs from two evaluate_model results, plus per-task changes.

    Items are paired by id. Tasks whose original accuracy is 0 have no relative change: they are left out of
    BWT (listed under "excluded") and reported by their absolute change only. TI is None when the target's
    original accuracy is 0 (or the target was not evaluated).
    """
    tasks = [t for t in after if t in before]
    if not tasks:
        raise ValueError(f"no task is in both results (before: {list(before)}, after: {list(after)})")
    b_items, a_items, per_task = {}, {}, {}
    for t in tasks:
        b, a = item_scores(before[t]), item_scores(after[t])
        if set(b) != set(a):
            raise ValueError(
                f"task {t!r}: the two evaluations scored different items ({len(b)} vs {len(a)}); evaluate both "
                "models with the same n_items and split"
            )
        ids = sorted(b)
        b_items[t] = np.array([b[i] for i in ids])
        a_items[t] = np.array([a[i] for i in ids])
        diff = a_items[t] - b_items[t]
        d, lo, hi = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
        base = float(b_items[t].mean())
        per_task[t] = {
            "before": base, "after": float(a_items[t].mean()), "change": d, "change_low": lo, "change_high": hi,
            "relative_change": None if base == 0 else 100.0 * d / base, "n": len(ids),
        }  # fmt: skip
    target_key = next((t for t in tasks if parse_task_spec(t)[0].casefold() == target.casefold()), None)
    excluded = [t for t in tasks if t != target_key and b_items[t].mean() == 0]
    others = [t for t in tasks if t != target_key and t not in excluded]
    report: dict[str, Any] = {"target": target, "per_task": per_task, "excluded": excluded, "bwt_tasks": others}
    ti_defined = target_key is not None and b_items[target_key].mean() > 0
    if not others:
        report.update(ti=None, bwt=None, note="no non-target task with a non-zero original accuracy")
        return report
    # paired_bootstrap_transfer needs a target with a defined relative change; when ours has none, a constant
    # placeholder task stands in (its TI is discarded) so that BWT and its interval are still computed.
    tgt = target_key if ti_defined else "__no_target__"
    bi = {t: b_items[t] for t in others} | {tgt: b_items[tgt] if ti_defined else np.ones(1)}
    ai = {t: a_items[t] for t in others} | {tgt: a_items[tgt] if ti_defined else np.ones(1)}
    res = paired_bootstrap_transfer(bi, ai, tgt, n_resamples=n_resamples, seed=seed)
    report.update(res)
    if not ti_defined:
        report.update(ti=None, ti_low=None, ti_high=None)
    return report


def accuracy_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], with_ci: bool = False) -> Any:
    """Raw accuracies in the shape of the paper's Table 12: one row per model/method, one column per task."""
    import pandas as pd

    rows = []
    for label, res in results.items():
        row: dict[str, Any] = {"method": label}
        for spec, s in res.items():
            name, mode = parse_task_spec(spec)
            title = get_task(name).title + (f" ({mode})" if mode else "")
            row[title] = (f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if with_ci
                          else s["accuracy"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def expand_trained_runs(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{label: results with adapter_dir/model_dir} from training runs' results, by run name.

    A run that trained one model (04_sft) keeps its name. A run that trained several (06_regularization records
    {"adapters": {label: dir}}) gives one entry per adapter, labelled "<run>/<label>". A run with neither is an
    error that names it.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, res in records.items():
        if res.get("adapter_dir") or res.get("model_dir"):
            out[name] = dict(res)
        elif res.get("adapters"):
            for label, path in res["adapters"].items():
                out[f"{name}/{label}"] = {"adapter_dir": path}
        else:
            raise KeyError(
                f"training run {name!r} recorded no adapter_dir, model_dir or adapters (keys: {sorted(res)}); "
                "run its training notebook to completion first"
            )
    return out


def transfer_table(
    transfer: Mapping[str, Mapping[str, Any]], drifts: Mapping[str, Mapping[str, Any]] | None = None
) -> Any:
    """TI and BWT (percent, 95% CIs) per fine-tuned model, with the mean drift KL beside BWT when given."""
    import pandas as pd

    def fmt(value: Any, low: Any, high: Any) -> str:
        return "n/a" if value is None else f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"

    rows = []
    for label, rep in transfer.items():
        row = {
            "method": label,
            "TI % [95% CI]": fmt(rep.get("ti"), rep.get("ti_low"), rep.get("ti_high")),
            "BWT % [95% CI]": fmt(rep.get("bwt"), rep.get("bwt_low"), rep.get("bwt_high")),
            "BWT tasks": ", ".join(rep.get("bwt_tasks", [])),
            "left out (original accuracy 0)": ", ".join(rep.get("excluded", [])),
        }
        if drifts is not None and label in drifts:
            d = drifts[label]["all"]
            row["drift KL (nats/token)"] = round(d["kl"], 5)
            row["Δ NLL base answers"] = round(d["delta_nll"], 4)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
