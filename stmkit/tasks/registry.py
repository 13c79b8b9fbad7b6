"""Task objects: how to load a benchmark (embedded or Hugging Face) and how its items are split."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .base import SPLITS, Example, ScoreOptions, carve

SPLITS_DIR = Path(__file__).resolve().parent.parent / "data" / "splits"


@dataclass(frozen=True)
class Task:
    """A benchmark: name, kind, where its data comes from, and how it is split."""

    name: str
    kind: str  # "generate" (free text, checked), "mc" (multiple choice), "sql"
    title: str
    embedded: Callable[[], list[Example]] | None  # every shipped item, in file order
    split_sizes: dict[str, int] = field(default_factory=dict)  # carve sizes (train, validation, test)
    shipped_splits: Callable[[], dict[str, list[Example]]] | None = None  # when the package ships several
    from_hub: Callable[[dict[str, Any]], Example] | None = None
    hub: tuple[str, str | None] | None = None  # (dataset id, config) of the paper's data
    hub_splits: dict[str, str] = field(default_factory=dict)  # our split name -> hub split name
    note: str = ""
    # Evaluation: scorer(examples, generated texts, options) -> verdict dicts (see base.ScoreOptions);
    # eval_mode is the default mode ("generate": free text, checked; "loglik": compare option log-likelihoods);
    # loglik_context(example) is the plain-text context the options are appended to in "loglik" mode.
    scorer: Callable[[Sequence[Example], Sequence[str], ScoreOptions], list[dict[str, Any]]] | None = None
    eval_mode: str = "generate"
    loglik_context: Callable[[Example], str] | None = None
    # A task whose items are not embedded (BIRD, IFEval): loader(split, n, source, data_dir) replaces the
    # committed-split lookup; data_dir is a local copy of the task's data (BIRD's dev folder, IFEval's JSONL file),
    # None for the task's default.
    loader: Callable[[str, int, str, str | None], list[Example]] | None = None


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


# Modules of this package that define no task; every other module registers its tasks when imported, so adding a
# task is adding one module.
NOT_TASKS = frozenset({"base", "bird_standin", "embedded", "hub_fixtures", "math_check", "prompts", "registry"})


def _task_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
            if m.name not in NOT_TASKS and not m.name.startswith("_")]


@cache
def _discover() -> None:
    """Import every task module of this package (once): each registers its tasks, exactly its TASK_NAMES."""
    declared: set[str] = set()
    for name in _task_modules():
        declared |= set(getattr(importlib.import_module(f"{__package__}.{name}"), "TASK_NAMES", ()))
    if declared != set(TASKS):
        raise RuntimeError(f"the task modules register {sorted(TASKS)} but their TASK_NAMES say {sorted(declared)}; "
                           "make them agree (config validation reads TASK_NAMES)")


@cache
def task_names() -> frozenset[str]:
    """Every task name, read from each task module's TASK_NAMES without importing it (config validation uses this,
    so loading a profile imports no task, its data or the sandbox)."""
    names: set[str] = set()
    for name in _task_modules():
        tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
        found = [node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "TASK_NAMES" for t in node.targets)]
        if not found:
            raise RuntimeError(f"task module {name}.py has no TASK_NAMES = (...): list the tasks it registers")
        names |= set(ast.literal_eval(found[0]))
    return frozenset(names)


def get_task(name: str) -> Task:
    """The registered task called name (case-insensitive)."""
    _discover()
    key = name.lower().replace("-", "_")
    if key not in TASKS:
        raise KeyError(f"unknown task '{name}' (tasks: {', '.join(sorted(TASKS))})")
    return TASKS[key]


def compute_splits(task: Task) -> dict[str, list[str]]:
    """Carve the shipped items into train/validation/test ids (the rule documented in the README)."""
    if task.shipped_splits is not None:
        shipped = task.shipped_splits()
        out = {name: [e.id for e in items] for name, items in shipped.items()}
        if "test" in out and "train" not in out:
            part = carve(task.name, out["test"], task.split_sizes)
            out.update(part)
        return {k: out[k] for k in SPLITS if k in out}
    ids = [e.id for e in task.embedded()]
    return carve(task.name, ids, task.split_sizes)


@cache
def committed_splits(task_name: str) -> dict[str, list[str]]:
    """The split ids committed in stmkit/data/splits/<task>.json (regenerate with `stmkit splits`)."""
    path = SPLITS_DIR / f"{task_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `stmkit splits` to regenerate the split files")
    return json.loads(path.read_text())["splits"]


@cache
def _embedded_by_id(task_name: str) -> dict[str, Example]:
    task = get_task(task_name)
    if task.shipped_splits is not None:
        return {e.id: e for items in task.shipped_splits().values() for e in items}
    return {e.id: e for e in task.embedded()}


def load(
    task_name: str, split: str = "test", n: int = 0, source: str = "embedded", data_dir: str | None = None
) -> list[Example]:
    """The first n items (0 = all) of a task's split, from the embedded files or the Hugging Face hub.

    data_dir: a local copy of the data, for a task that reads one (BIRD's dev folder); tasks that ship their
    items ignore it.
    """
    task = get_task(task_name)
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' for task {task.name} (splits: {', '.join(SPLITS)})")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if task.loader is not None:
        return task.loader(split, n, source, data_dir)
    if source in ("hf", "hub-fixture"):
        items = load_hub(task, split, fixture=source == "hub-fixture")
    elif source == "embedded":
        by_id = _embedded_by_id(task.name)
        ids = committed_splits(task.name).get(split)
        if ids is None:
            raise ValueError(f"task {task.name} has no {split} split in the embedded data")
        items = [by_id[i] for i in ids]
    else:
        raise ValueError(f"unknown data source '{source}' (use 'embedded', 'hf' or 'hub-fixture')")
    if n and n > len(items):
        raise ValueError(f"asked for {n} items of {task.name}/{split}, which has only {len(items)}")
    return items[:n] if n else items


def score(
    task_name: str, examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions | None = None
) -> list[dict[str, Any]]:
    """Check generated answers with the task's scorer: one {"extracted", "correct", "error"} dict per item."""
    task = get_task(task_name)
    if task.scorer is None:
        raise ValueError(f"task {task.name} has no scorer for generated answers; evaluate it in 'loglik' mode")
    if len(examples) != len(generated):
        raise ValueError(f"{task.name}: {len(examples)} examples but {len(generated)} generated answers")
    return task.scorer(examples, generated, options or ScoreOptions())


def convert_rows(task: Task, rows: Iterable[dict[str, Any]], where: str) -> list[Example]:
    """Hub-schema rows -> Examples; a malformed row is an error naming it."""
    if task.from_hub is None:
        raise ValueError(f"task {task.name} has no Hugging Face loader")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(task.from_hub(row))
        except KeyError as exc:
            raise ValueError(f"{where} row {i} has no field {exc} (expected the hub schema of {task.hub[0]})") from exc
    return out


def load_hub(task: Task, split: str, fixture: bool = False) -> list[Example]:
    """The paper's Hugging Face dataset for a task (needs the hub or a local HF_DATASETS cache); with fixture, its
    hub-schema fixture files (stmkit.tasks.hub_fixtures), read the same way."""
    import datasets

    from .hub_fixtures import load_fixture  # lazy: hub_fixtures imports a task module, which imports this one

    if task.hub is None:
        raise ValueError(f"task {task.name} has no Hugging Face dataset; use source 'embedded'")
    hub_id, config = task.hub
    hub_split = task.hub_splits.get(split, split)
    where = f"{hub_id} ({config}){' hub-schema fixture' if fixture else ''}"
    try:
        ds = load_fixture(hub_id, config, hub_split) if fixture else datasets.load_dataset(hub_id, config, split=hub_split)
    except ValueError as exc:  # `datasets` words a missing split so (and the fixture loader as it does)
        if "unknown split" not in str(exc).lower():
            raise
        raise ValueError(f"task {task.name}: {where} has no split '{hub_split}' ({exc})") from exc
    except Exception as exc:  # offline, gated or missing: say how to provide it
        raise RuntimeError(
            f"could not load {hub_id} ({config}) split {hub_split} ({type(exc).__name__}: {exc}). Offline? Download "
            "it where there is network (`datasets.load_dataset(...)`) and point HF_HOME/HF_DATASETS_CACHE at that "
            "cache, or use the embedded data (data.source: embedded)"
        ) from exc
    return convert_rows(task, ds, f"{hub_id}/{hub_split}")
