"""`make reproduce`: run a profile's sweep of notebooks with papermill, resumably, in pipeline order.

A sweep (configs/sweeps/<profile>.yaml) lists runs; each names a notebook, small overrides of the profile,
notebook parameters, the runs it needs (`after`) and the paper outputs it feeds (`for`). A run's key hashes the
notebook source, the stmkit source, the resolved profile, its parameters and the keys of the runs it needs. A run whose run.json
carries that key (and whose executed notebook exists) is skipped, so a rerun with nothing changed executes nothing,
and a changed parameter re-executes that run and the runs after it (their expensive artifacts still come from
the content-addressed cache when their own inputs did not change).

Interrupt-safe: notebooks execute into a hidden `.partial` file that is renamed only when papermill returns; a
run's run.json (its completion marker) is deleted when it starts and written atomically by its last cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import estimate, gpu_costs
from .cache import Cache, atomic_write_json, canonical_json, content_key
from .config import CONFIG_DIR, ConfigError, load_profile, profile_path, replace
from .experiment import results_root
from .preflight import SetupError, cache_dir, writable_dir
from .sweeps import (
    NOTEBOOKS_DIR,
    RunSpec,
    computed_timings_path,
    load_sweep,
    read_json,
    resolve_sweep,
    timings_path,
)

PIPELINE_VERSION = 1
KERNEL = "stmkit"


@dataclass
class Outcome:
    run: str
    status: str  # "done", "skipped (up to date)", "failed", "blocked", "interrupted"
    seconds: float = 0.0
    notebook: str = ""
    error: str = ""


def profile_name(profile: str) -> str:
    """The name of a profile in configs/; a path to configs/<name>.yaml is accepted as <name>."""
    path = profile_path(profile)  # an unknown profile is an error that lists the known ones
    if path.resolve().parent != CONFIG_DIR.resolve():
        raise ConfigError(f"--profile {profile}: the pipeline runs profiles in configs/ by name (its results go to "
                          f"results/<name>); copy the file to configs/{path.stem}.yaml, add a sweep "
                          f"configs/sweeps/{path.stem}.yaml and pass --profile {path.stem}")
    return path.stem


def select(runs: list[RunSpec], only: str | None) -> list[RunSpec]:
    """Runs that feed `only` (e.g. table02 or fig04) plus everything they need, in order; all runs if None."""
    if not only:
        return runs
    by_name = {r.name: r for r in runs}
    wanted = {r.name for r in runs if only in r.feeds or "all" in r.feeds}
    if not any(only in r.feeds for r in runs):
        known = sorted({f for r in runs for f in r.feeds if f != "all"})
        raise ConfigError(f"ONLY={only}: no run of this profile feeds it (it covers: {', '.join(known)})")
    stack = list(wanted)
    while stack:
        for dep in by_name[stack.pop()].after:
            if dep not in wanted:
                wanted.add(dep)
                stack.append(dep)
    return [r for r in runs if r.name in wanted]


def notebook_hash(path: Path) -> str:
    """Hash of what determines a notebook's results: its cells' types, sources and tags (papermill's `parameters`).

    Outputs, execution counts, cell ids and editor metadata (kernel info, widget state) are left out, so opening
    and saving a notebook in JupyterLab, or running it by hand, does not change the pipeline's keys.
    """
    nb = json.loads(path.read_text())
    cells = [(c.get("cell_type"), "".join(c.get("source", "")), sorted(c.get("metadata", {}).get("tags", [])))
             for c in nb.get("cells", [])]
    return hashlib.sha256(canonical_json(cells).encode()).hexdigest()[:16]


def library_hash() -> str:
    """Hash of the stmkit package source: a code change re-executes notebooks (their heavy artifacts stay cached)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_keys(profile: str, runs: list[RunSpec]) -> dict[str, str]:
    """Each run's key: notebook source, library source, resolved config, parameters and upstream keys."""
    base = load_profile(profile)
    code = library_hash()
    keys: dict[str, str] = {}
    for r in runs:
        keys[r.name] = content_key(
            "run",
            PIPELINE_VERSION,
            code=code,
            notebook=notebook_hash(NOTEBOOKS_DIR / f"{r.notebook}.ipynb"),
            config=replace(base, r.overrides).to_dict(),
            params=r.params,
            upstream={d: keys.get(d, "") for d in r.after},
        )
    return keys


def is_complete(root: Path, run: RunSpec, key: str) -> bool:
    """A run is complete when its run.json carries the expected key and its executed notebook exists."""
    folder = root / "runs" / run.name
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("run_key") == key and (folder / f"{run.notebook}.ipynb").is_file()


def parameters(profile: str, run: RunSpec, key: str, root: Path) -> dict[str, Any]:
    """What papermill injects into the notebook's `parameters` cell."""
    return {
        "profile": profile,
        "overrides": canonical_json(run.overrides) if run.overrides else "",
        "run_name": run.name,
        "results_dir": str(root),
        "run_key": key,
        **run.params,
    }


def command_line(profile: str, run: RunSpec, key: str, root: Path) -> str:
    """The equivalent papermill command for one run (shown by DRY_RUN=1)."""
    parts = ["papermill", f"notebooks/{run.notebook}.ipynb", f"{root}/runs/{run.name}/{run.notebook}.ipynb",
             "-k", KERNEL]
    for k, v in parameters(profile, run, key, root).items():
        parts += ["-p", k, str(v)]
    return shlex.join(parts)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def execute(profile: str, run: RunSpec, key: str, root: Path) -> Outcome:
    """Execute one run's notebook with papermill into a partial file, renamed when papermill returns."""
    import papermill as pm

    folder = root / "runs" / run.name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{run.notebook}.ipynb"
    partial = folder / f".{run.notebook}.partial.ipynb"
    marker = folder / "run.json"
    if marker.exists():
        marker.unlink()
    t0 = time.perf_counter()
    error = ""
    os.environ["STMKIT_BATCH"] = "1"  # the kernel inherits it: widgets fall back to static output
    try:
        pm.execute_notebook(
            str(NOTEBOOKS_DIR / f"{run.notebook}.ipynb"),
            str(partial),
            parameters=parameters(profile, run, key, root),
            kernel_name=KERNEL,
            progress_bar=False,
            cwd=str(NOTEBOOKS_DIR),
        )
    except pm.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, missing kernel, ...
        error = f"{type(exc).__name__}: {exc}"
    if partial.exists():
        os.replace(partial, final)
    seconds = time.perf_counter() - t0
    if not error and not is_complete(root, run, key):
        error = "the notebook finished without writing run.json with this run's key (its last cell calls run.finish)"
    return Outcome(run.name, "failed" if error else "done", seconds, str(final), error)


def _cache_entries() -> set[str]:
    """The artifact folders in the cache now (<stage>/<key>); a run that adds some computed them."""
    art = Cache().root
    return {f"{s.name}/{k.name}" for s in art.iterdir() if s.is_dir() for k in s.iterdir()} if art.is_dir() else set()


def gpu_table(profile: str, runs: list[RunSpec]) -> str | None:
    """The GPU cost table of a sweep whose every model is one of the paper's (None otherwise)."""
    base = load_profile(profile)
    configs = [replace(base, r.overrides) for r in runs]
    if not configs or any(c.model.name not in gpu_costs.ARCHS for c in configs):
        return None
    costs = gpu_costs.load_gpu_costs()
    return gpu_costs.describe([gpu_costs.estimate_run(r, c, costs) for r, c in zip(runs, configs, strict=True)],
                              costs) + "\n"


def run_pipeline(
    profile: str, only: str | None = None, dry_run: bool = False, results_dir: str | None = None,
    sweep: str | None = None,
) -> int:
    """Execute every run that needs it; print progress and a summary; return the exit status."""
    profile = profile_name(profile)
    runs = select(load_sweep(profile, resolve_sweep(sweep)), only)
    keys = run_keys(profile, runs)
    root = results_root(profile, results_dir)
    todo = [r for r in runs if not is_complete(root, r, keys[r.name])]
    print(f"stmkit reproduce: profile {profile}, {len(runs)} runs ({len(todo)} to execute), results in {root}")
    gpu = gpu_table(profile, todo) if dry_run and todo else None  # a GPU profile: GPU-hours, not CPU minutes
    gflops = estimate.calibrate(1.0) if todo and not gpu else None  # a second of matmuls: scales recorded costs
    expected = {e.run: e for e in estimate.estimate_runs(profile, todo, gflops)} if not gpu else {}
    if todo and not gpu:
        print(f"  {estimate.describe(list(expected.values()), gflops)}")
    if dry_run:  # writes nothing, not even the results folder
        print(gpu or "", end="")
        for r in runs:
            state = "to run" if r in todo else "up to date"
            guess = expected.get(r.name)
            cost = f", ~{_fmt(guess.seconds)} ({guess.basis})" if guess and guess.seconds is not None else ""
            print(f"  [{state:10s}] {r.name} ({r.notebook}) feeds {', '.join(r.feeds) or '-'}{cost}")
            print(f"      {command_line(profile, r, keys[r.name], root)}")
        return 0
    env = os.environ.get("STMKIT_RESULTS")
    setting = (f"--results-dir {root}" if results_dir else f"STMKIT_RESULTS={env} (results folder {root})" if env
               else f"the results folder {root}")
    writable_dir(root, setting, "pass --results-dir or set STMKIT_RESULTS to a folder you can write to")
    cache_dir()
    for stale in root.glob("runs/*/.*.partial.ipynb"):  # left by an interrupted run; that run re-executes
        stale.unlink()
    history = read_json(timings_path(root))
    computed = read_json(computed_timings_path(root))
    outcomes: list[Outcome] = []
    failed: set[str] = set()
    t_start = time.perf_counter()
    exit_code = 0
    try:
        for i, r in enumerate(runs, 1):
            if r not in todo:
                outcomes.append(Outcome(r.name, "skipped (up to date)"))
                continue
            blockers = [d for d in r.after if d in failed]
            if blockers:
                outcomes.append(Outcome(r.name, "blocked", error=f"needs {', '.join(blockers)}, which failed"))
                failed.add(r.name)
                continue
            remaining = todo[todo.index(r):]
            done_times = [o.seconds for o in outcomes if o.status == "done"]
            fallback = sum(done_times) / len(done_times) if done_times else None
            # cold cost measured here > recorded cost scaled to this machine > last execution here > mean so far
            left = [computed.get(x.name) or (expected[x.name].seconds if x.name in expected else None)
                    or history.get(x.name, fallback) for x in remaining]
            eta = "time left unknown until a run finishes (no recorded cost)" if None in left else (
                f"~{_fmt(sum(left))} left")
            print(f"[{i}/{len(runs)}] {r.name} ({r.notebook}) elapsed {_fmt(time.perf_counter() - t_start)}, {eta}",
                  flush=True)
            before = _cache_entries()
            out = execute(profile, r, keys[r.name], root)
            outcomes.append(out)
            if out.status == "failed":
                failed.add(r.name)
                print(f"    FAILED after {_fmt(out.seconds)}: {out.error}\n    see {out.notebook}", flush=True)
            else:
                history[r.name] = round(out.seconds, 1)
                atomic_write_json(timings_path(root), history)
                if _cache_entries() - before:
                    computed[r.name] = round(out.seconds, 1)
                    atomic_write_json(computed_timings_path(root), computed)
                print(f"    done in {_fmt(out.seconds)}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; rerun the same command to complete the rest", flush=True)
        exit_code = 130
    total = time.perf_counter() - t_start
    summary = {"profile": profile, "only": only, "total_s": round(total, 1),
               "runs": [o.__dict__ for o in outcomes]}
    atomic_write_json(root / "pipeline.json", summary)
    n_done = sum(o.status == "done" for o in outcomes)
    n_skip = sum(o.status.startswith("skipped") for o in outcomes)
    print(f"\n{n_done} executed, {n_skip} up to date, {len(failed)} failed or blocked, in {_fmt(total)}")
    for o in outcomes:
        if o.status in ("failed", "blocked"):
            print(f"  {o.status}: {o.run}: {o.error}" + (f"\n      notebook: {o.notebook}" if o.notebook else ""))
    if exit_code:
        return exit_code
    return 1 if failed else 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stmkit.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--only", default=None, help="a paper table or figure, e.g. table02 or fig04")
    parser.add_argument("--dry-run", action="store_true", help="list runs and their commands without executing")
    parser.add_argument("--results-dir", default=None, help="default: results/<profile>")
    parser.add_argument("--sweep", default=None, help="a sweep name under configs/sweeps or a file (default: the profile's own, configs/sweeps/<profile>.yaml); "
                        "e.g. cpu-demo-extra adds DoRA, full fine-tuning and regularisation runs to cpu-demo's results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` behaves like Ctrl-C: clean shutdown, resumable
    # A shell starting us in the background (CI, `cmd &`) sets SIGINT to ignored, which Python inherits;
    # an explicit interrupt should still stop the batch cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_pipeline(args.profile, args.only, args.dry_run, args.results_dir, args.sweep)
    except (ConfigError, SetupError) as exc:
        print(f"stmkit reproduce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
