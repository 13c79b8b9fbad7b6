"""Run every benchmark (or those named on the command line) and print their ratio tables."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCHES = ["bench_scoring", "bench_evaluation", "bench_generation", "bench_adapter_eval", "bench_training", "bench_precision", "bench_pipeline",
           "bench_verify"]


def main(argv: list[str]) -> int:
    names = argv or BENCHES
    results = {}
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        print(f"== {name}: {mod.__doc__.strip().splitlines()[0]}", flush=True)
        results[name] = mod.run()
        print(f"   ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    out = Path(os.environ.get("STMKIT_BENCH_OUT", "results/bench.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # running some benchmarks keeps the others' last results
        previous = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        previous = {}
    out.write_text(json.dumps(previous | results, indent=2) + "\n")
    print(f"wrote {out}")
    failed = [f"{n}: {g}" for n, r in results.items() for g, ok in r.get("goals", {}).items() if not ok]
    if failed:
        print("goals missed:\n  " + "\n  ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
