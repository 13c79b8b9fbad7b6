"""SciQ and PIQA: multiple choice in log-likelihood mode, for small-scale forgetting signal."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .arc import make
from .base import Example
from .embedded import read_docs
from .registry import Task, register


def _sciq(doc: dict[str, Any]) -> Example:
    ex = make("sciq", str(doc["index"]), doc["question"], list(doc["choices"]), int(doc["gold"]))
    return replace(ex, meta={**ex.meta, "support": doc.get("support", "")})


def _piqa(doc: dict[str, Any]) -> Example:
    return make("piqa", str(doc["index"]), doc["goal"], list(doc["choices"]), int(doc["gold"]))


register(
    Task(
        name="sciq",
        kind="mc",
        title="SciQ",
        embedded=lambda: [_sciq(d) for d in read_docs("sciq/mc_5shot")],
        split_sizes={"train": 400, "validation": 100, "test": 500},
        note="embedded: 1000 test questions, carved 400/100/500",
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
    )
)
