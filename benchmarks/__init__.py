"""Speed benchmarks: each prints ratios against a baseline measured in the same run (`make bench`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def sandwich(measure: Callable[[str], tuple[float, float, Any]], baseline: str, candidate: str
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline, candidate, baseline again (so warm-up or load drift cannot favour the candidate); the faster
    baseline run is the reference. measure(arm) -> timed(...). Returns (timings and ratios, outputs by arm)."""
    again = f"{baseline}_again"
    wall, cpu, out = {}, {}, {}
    for arm in (baseline, candidate, again):
        wall[arm], cpu[arm], out[arm] = measure(arm.removesuffix("_again"))
    res = {
        "seconds_wall": wall, "seconds_cpu": cpu,
        "ratio_wall": min(wall[baseline], wall[again]) / wall[candidate],
        "ratio_cpu_time": min(cpu[baseline], cpu[again]) / cpu[candidate],
        "load_average_1min": os.getloadavg()[0],
    }  # fmt: skip
    return res, out
