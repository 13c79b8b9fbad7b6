"""Evaluation: the paper's TI/BWT transfer metrics, bootstrap intervals, offline metric modules, and the task harness."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .adapters import weights_fingerprint
from .cache import atomic_write_text, content_key, dumps_finite
from .numerics import require_finite

# --- metrics ---
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
    # Imported here: `evaluate` pulls in datasets and pyarrow, which the TI/BWT helpers above do not need.
    import evaluate

    # keep_in_memory: the inputs are small, and it avoids lock and arrow files under ~/.cache.
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(script), **kwargs)


# --- task evaluation ---
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
    from .tasks import get_task

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
    from .scoring import Rendered, score_rendered

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
    from tqdm.auto import tqdm

    from . import lm
    from .scoring import length_sorted_batches

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
            bar = tqdm(batches, desc="option log-likelihoods", unit="batch", disable=not progress, leave=False)
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


def _records_loglik(
    model: Any, tokenizer: Any, task: Any, items: Sequence[Any], batch_size: int, max_tokens: int, progress: bool
) -> list[dict[str, Any]]:
    from .tasks.arc import LETTERS

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
    model: Any, tokenizer: Any, task: Any, items: Sequence[Any], decoding: Any, batch_size: int, max_tokens: int,
    options: Any, progress: bool,
) -> list[dict[str, Any]]:
    from . import generation
    from .tasks.registry import score

    completions = generation.generate(
        model, tokenizer, [ex.prompt for ex in items], decoding, batch_size=batch_size,
        max_tokens_per_batch=max_tokens, progress=progress, desc=f"{task.name}: generating",
    )
    texts = [c[0].text for c in completions]
    verdicts = score(task.name, items, texts, options)
    out = []
    for ex, comp, verdict in zip(items, completions, verdicts, strict=True):
        out.append({
            "id": ex.id, "task": ex.task, "mode": "generate", "generated": comp[0].text,
            "extracted": verdict["extracted"], "gold": ex.answer, "correct": bool(verdict["correct"]),
            "error": verdict.get("error", ""), "n_tokens": len(comp[0].token_ids), "finished": comp[0].finished,
        })  # fmt: skip
    return out


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_finite(r, f"record {r.get('id')!r} of {path}", default=str) + "\n"
                                    for r in records))


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Per-item records from an items JSONL file written by evaluate_task / evaluate_model."""
    import json

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
    import time

    from . import generation
    from .cache import Cache
    from .scoring import data_fingerprint, tokenizer_fingerprint
    from .tasks import ScoreOptions, get_task
    from .tasks.prompts import PROMPT_VERSION

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
        records = _records_generate(model, tokenizer, task, items, decoding, batch_size, max_tokens_per_batch,
                                    options, progress)
    wall = time.perf_counter() - t0
    with cache.put("eval", key, meta={**settings, "wall_s": round(wall, 3), "model": fingerprint}) as tmp:
        _write_jsonl(tmp / "items.jsonl", records)
    path = cache.path("eval", key) / "items.jsonl"
    return TaskResult(task.name, mode, split, records, path, key, wall, False, settings)


def load_task_items(
    task_spec: str, n_items: int, split: str = "test", source: str = "embedded", bird_dir: str | None = None
) -> list[Any]:
    """The first n_items (0 = all) of a task's split; BIRD from bird_dir / $STMKIT_BIRD_DIR, else the stand-in."""
    from .tasks import load
    from .tasks.bird import load_items as load_bird

    name, _ = parse_task_spec(task_spec)
    if name == "bird":  # the dev folder when given (every source), else by source (see tasks.bird.load_items)
        return load_bird(split, n_items, bird_dir or None, source=source)
    return load(name, split, n_items, source)


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

    Settings (max_new_tokens, batch_size, sandbox_timeout_s, bootstrap, bird_dir) come from config, an
    EvalConfig (defaults if None). With out_dir, each task's per-item JSONL is also written to
    out_dir/<task spec>.jsonl, and items_path points there.
    """
    import shutil

    from .config import EvalConfig

    cfg = config or EvalConfig()
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, not the string {tasks!r}")
    from .generation import VLLMEngine

    # Hash the weights once for all tasks (evaluate_task asks a VLLMEngine for an explicit fingerprint).
    fp = fingerprint or (None if isinstance(model, VLLMEngine) else weights_fingerprint(model))
    out: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        name, mode = parse_task_spec(spec)
        items = load_task_items(spec, n_items, split, source, cfg.bird_dir)
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

    from .tasks import get_task

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
