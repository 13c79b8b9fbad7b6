"""The record schema every task loader returns, and the deterministic split rule."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "validation", "test")
LETTERS = "ABCDE"  # a multiple-choice item's options by letter: its answer is LETTERS[gold_index]


@dataclass(frozen=True)
class Example:
    """One benchmark item, normalised across tasks.

    - `prompt`: the user message (the paper's zero-shot prompt for the task), rendered later with the chat template.
    - `response`: the human-written ground-truth answer used as the training target ("" if the task has none).
    - `answer`: the gold answer the checker compares against (number, final answer, letter, gold SQL...).
    - `choices`/`gold_index`: multiple-choice tasks (log-likelihood mode).
    - `tests`: executable checks (MBPP asserts), `setup`: code run before them.
    """

    id: str
    task: str
    prompt: str
    response: str = ""
    answer: str = ""
    choices: tuple[str, ...] = ()
    gold_index: int | None = None
    tests: tuple[str, ...] = ()
    setup: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = list(self.choices)
        d["tests"] = list(self.tests)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        d = dict(d)
        d["choices"] = tuple(d.get("choices") or ())
        d["tests"] = tuple(d.get("tests") or ())
        return cls(**d)


@dataclass(frozen=True)
class ScoreOptions:
    """How generated answers are checked: sandbox time limit and parallel workers, an optional MATH judge.

    A task's scorer maps (examples, generated texts, options) to one verdict dict per item:
    ``{"extracted": <answer read off the text or None>, "correct": bool, "error": <why not, or "">}``.
    """

    timeout_s: float = 10.0  # per sandboxed program or SQL query
    workers: int = 2  # sandboxed processes run in parallel
    judge: Callable[[str, str, str], bool] | None = None  # MATH: judge(problem, pred, gold), e.g. an LLM judge


def text_id(text: str) -> str:
    """A stable id for an item that has none: the first 12 hex digits of sha256 of its text."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_rank(task: str, item_id: str) -> str:
    """Deterministic position of an item in the carve order: sha256 of 'stmkit-split-v1:<task>:<id>'."""
    return hashlib.sha256(f"stmkit-split-v1:{task}:{item_id}".encode()).hexdigest()


def spread(task: str, items: list[Example], n: int, what: str) -> list[Example]:
    """n items chosen by split_rank (a deterministic spread, not the first n), in their original order; all when n
    is 0. Asking for more items than `what` holds is an error naming it."""
    if n > len(items):
        raise ValueError(f"asked for {n} items of {what}, which has only {len(items)}")
    if not n:
        return items
    chosen = set(sorted((e.id for e in items), key=lambda i: split_rank(task, i))[:n])
    return [e for e in items if e.id in chosen]


def carve(task: str, ids: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """Split ids into named parts of the given sizes, in order of split_rank; the last part gets the rest."""
    ordered = sorted(ids, key=lambda i: split_rank(task, i))
    out, start = {}, 0
    names = list(sizes)
    for n, name in enumerate(names):
        end = len(ordered) if n == len(names) - 1 else start + sizes[name]
        out[name] = sorted(ordered[start:end], key=_natural)
        start = end
    return out


def _natural(s: str) -> tuple[int, Any]:
    return (0, int(s)) if s.isdigit() else (1, s)
