"""`make reproduce` rerun cost: the smoke profile from an empty cache, then again with nothing changed.

Goal (issue): the rerun takes under 2% of the first run, or under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _reproduce(results: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stmkit.pipeline", "--profile", "smoke", "--results-dir", str(results)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "STMKIT_CACHE": str(Path(tmp) / "cache")}
        first = _reproduce(Path(tmp) / "results", env)
        again = _reproduce(Path(tmp) / "results", env)
    res = {"first_s": first, "rerun_s": again, "ratio": again / first}
    res["goals"] = {"rerun < 2% of first or < 60 s": res["ratio"] < 0.02 or again < 60}
    print(f"   first run {first:.1f} s (empty cache), rerun {again:.1f} s ({100 * res['ratio']:.1f}% of the first)")
    return res
