"""How long a sweep will take on *this* machine: a few seconds of calibration times the recorded cost of each run.

``configs/costs/recorded.yaml`` records, per profile and run, the wall seconds a cold run took (nothing cached) on a
reference machine, with that machine's calibration score: the fp32 matrix-multiply throughput (GFLOP/s) that
``calibrate()`` measures with torch's own threads. The same stage on another machine is assumed to take
``recorded * reference_gflops / this_gflops``: the work is dense fp32 linear algebra, so it scales with the
machine's matmul rate (the same kind of 2-core machine measured 42 and 80 minutes for the same sweep). Runs
never measured get the mean recorded cost of their notebook, and are named as guesses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

COSTS_FILE = Path(__file__).resolve().parent.parent / "configs" / "costs" / "recorded.yaml"


@dataclass(frozen=True)
class RunEstimate:
    """Estimated seconds of one run and where the figure comes from ("recorded", "notebook mean" or "none")."""

    run: str
    seconds: float | None
    basis: str


def calibrate(seconds: float = 2.0, size: int = 512, trials: int = 5) -> float:
    """GFLOP/s of fp32 matrix multiplication with torch's threads, measured for about `seconds`: the best of
    `trials` equal slices, so a moment of load from another process (or a core still clocking up) does not halve
    the machine's score (measured at a pipeline's start: 179 in one 2 s slice on a 380 GFLOP/s machine)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best, trials = 0.0, max(1, trials)
    for _ in range(trials):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / trials:
            torch.mm(a, b)
            n += 1
        best = max(best, 2.0 * size**3 * n / elapsed / 1e9)
    return best


def load_costs(path: Path = COSTS_FILE) -> dict[str, Any]:
    """The recorded costs file ({} when absent)."""
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def estimate_runs(profile: str, runs: Sequence[Any], gflops: float | None,
                  costs: dict[str, Any] | None = None) -> list[RunEstimate]:
    """Seconds per run on a machine of `gflops` (None: the reference machine's own speed)."""
    costs = load_costs() if costs is None else costs
    entry = (costs.get("profiles") or {}).get(profile) or {}
    recorded: dict[str, float] = entry.get("runs") or {}
    # a profile whose costs were measured on an uncalibrated machine says gflops: null (then no scaling)
    reference = entry["gflops"] if "gflops" in entry else (costs.get("reference") or {}).get("gflops")
    scale = reference / gflops if reference and gflops else 1.0

    def scaled(value: Any) -> float:
        """A recorded cost is seconds, or {seconds, gflops} when measured on another machine (gflops null: as is)."""
        if isinstance(value, dict):
            ref = value.get("gflops")
            return float(value["seconds"]) * (ref / gflops if ref and gflops else 1.0)
        return float(value) * scale

    by_notebook: dict[str, list[float]] = {}
    for r in runs:
        if r.name in recorded:
            by_notebook.setdefault(r.notebook, []).append(scaled(recorded[r.name]))
    out = []
    for r in runs:
        if r.name in recorded:
            out.append(RunEstimate(r.name, scaled(recorded[r.name]), "recorded"))
        elif r.notebook in by_notebook:
            mean = sum(by_notebook[r.notebook]) / len(by_notebook[r.notebook])
            out.append(RunEstimate(r.name, mean, "notebook mean"))
        else:
            out.append(RunEstimate(r.name, None, "none"))
    return out


def describe(estimates: Sequence[RunEstimate], gflops: float | None, costs: dict[str, Any] | None = None) -> str:
    """One paragraph for the dry run: the total, how it was scaled, and which runs are guesses or unknown."""
    costs = load_costs() if costs is None else costs
    ref = costs.get("reference") or {}
    known = [e.seconds for e in estimates if e.seconds is not None]
    total = sum(known)
    guesses = [e.run for e in estimates if e.basis == "notebook mean"]
    unknown = [e.run for e in estimates if e.basis == "none"]
    if not gflops:
        speed = "this machine not calibrated: recorded costs as measured"
    elif ref.get("gflops"):
        speed = (f"this machine {gflops:.0f} GFLOP/s vs {ref['gflops']:.0f} on the reference machine "
                 f"({ref.get('machine', 'unnamed')})")
    else:
        speed = f"this machine {gflops:.0f} GFLOP/s; recorded costs as measured (no reference calibration)"
    text = f"estimated {total / 60:.0f} min for {len(known)} of {len(estimates)} runs, nothing cached ({speed})"
    if guesses:
        text += f"; from the mean of their notebook: {', '.join(guesses)}"
    if unknown:
        text += f"; no recorded cost: {', '.join(unknown)}"
    return text
