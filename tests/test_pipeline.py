"""`make reproduce`: sweeps validate, reruns skip, failures are summarised, and killing at any point is resumable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stmkit import pipeline
from stmkit.config import ConfigError
from stmkit.pipeline import is_complete, run_keys, select
from stmkit.sweeps import SWEEPS_DIR, RunSpec, load_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_validates(path):
    profile = yaml.safe_load(path.read_text()).get("profile", path.stem)  # a named sweep says its profile
    runs = load_sweep(profile, path)
    assert runs and len({r.name for r in runs}) == len(runs)
    if profile != path.stem:
        with pytest.raises(ConfigError, match=f"sweep of profile '{profile}'"):
            load_sweep("smoke", path)


def _sweep(tmp_path, runs):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"runs": runs}))
    return path


@pytest.mark.parametrize(
    "runs, match",
    [
        ([{"name": "a", "notebook": "01_score_tokens", "overides": {}}], "unknown key 'overides'"),
        ([{"name": "a", "notebook": "99_nothing"}], "no notebook notebooks/99_nothing"),
        ([{"name": "a", "notebook": "01_score_tokens", "after": ["b"]}], "not an earlier run"),
        ([{"name": "a", "notebook": "01_score_tokens", "overrides": {"masking.tua": 3}}], r"\(a\).*'tua'"),
        ([{"name": "a", "notebook": "01_score_tokens"}, {"name": "a", "notebook": "02_mask_tokens"}], "duplicate"),
    ],
)
def test_bad_sweeps_are_clear_errors(tmp_path, runs, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep("smoke", _sweep(tmp_path, runs))


def test_keys_change_exactly_downstream_of_a_change():
    a = RunSpec("score", "01_score_tokens", feeds=("table01",))
    b = RunSpec("mask", "02_mask_tokens", after=("score",), feeds=("fig08",))
    base = run_keys("smoke", [a, b])
    assert base == run_keys("smoke", [a, b])
    b2 = RunSpec("mask", "02_mask_tokens", overrides={"masking.quantile": 0.3}, after=("score",))
    changed = run_keys("smoke", [a, b2])
    assert changed["score"] == base["score"] and changed["mask"] != base["mask"]
    a2 = RunSpec("score", "01_score_tokens", params={"example_index": 1})
    up = run_keys("smoke", [a2, b])
    assert up["score"] != base["score"] and up["mask"] != base["mask"]


def test_only_selects_a_target_and_what_it_needs():
    runs = [RunSpec("score", "01_score_tokens", feeds=("table01",)),
            RunSpec("mask", "02_mask_tokens", after=("score",), feeds=("fig08",))]
    assert [r.name for r in select(runs, "fig08")] == ["score", "mask"]
    assert [r.name for r in select(runs, "table01")] == ["score"]
    with pytest.raises(ConfigError, match="no run of this profile feeds it"):
        select(runs, "table99")


@pytest.fixture
def cli(monkeypatch, capsys):
    """pipeline.main in-process (its signal handlers left out); returns (status, stdout, stderr)."""
    monkeypatch.setattr(pipeline.signal, "signal", lambda *a: None)
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("a notebook was executed"))

    def run(*argv):
        rc = pipeline.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_unknown_profile_lists_the_profiles(cli):
    rc, _, err = cli("--profile", "nope", "--dry-run")
    assert rc == 2 and err.startswith("stmkit reproduce: error: unknown profile 'nope'") and "cpu-demo" in err


def test_profile_as_a_path(cli, tmp_path):
    rc, out, _ = cli("--profile", str(pipeline.CONFIG_DIR / "smoke.yaml"), "--dry-run", "--results-dir", str(tmp_path))
    assert rc == 0 and "profile smoke," in out
    rc, _, err = cli("--profile", "configs/x.yaml", "--dry-run")
    assert rc == 2 and "configs/x.yaml does not exist (profiles: " in err and err.count("\n") == 1
    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text("extends: smoke\n")
    rc, _, err = cli("--profile", str(elsewhere), "--dry-run")
    assert rc == 2 and "profiles in configs/ by name" in err


def test_dry_run_creates_no_results_folder(cli, tmp_path):
    rc, out, _ = cli("--profile", "smoke", "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert rc == 0 and "papermill" in out
    assert not (tmp_path / "r").exists()


def test_dry_run_estimates_this_machine_from_recorded_costs(cli, tmp_path):
    rc, out, _ = cli("--profile", "cpu-demo", "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert rc == 0 and "estimated" in out and "GFLOP/s" in out
    assert "evaluate (05_evaluate) feeds" in out and "(recorded)" in out


def test_unwritable_results_or_cache_is_named_before_anything_runs(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = cli("--profile", "smoke", "--results-dir", str(blocker / "r"))
    assert rc == 2 and err.startswith(f"stmkit reproduce: error: --results-dir {blocker / 'r'} is not a writable")
    monkeypatch.setenv("STMKIT_CACHE", str(blocker / "cache"))
    rc, _, err = cli("--profile", "smoke", "--results-dir", str(tmp_path / "r"))
    assert rc == 2 and err.startswith(f"stmkit reproduce: error: STMKIT_CACHE={blocker / 'cache'} is not a writable")


def _reproduce(results, *extra, **kw):
    cmd = [sys.executable, "-m", "stmkit.pipeline", "--profile", "smoke", "--results-dir", str(results), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, **kw)


KILL_SWEEP = [
    {"name": "score", "notebook": "01_score_tokens"},
    {"name": "mask", "notebook": "02_mask_tokens", "after": ["score"]},
    {"name": "score-again", "notebook": "01_score_tokens", "params": {"example_index": 1}},
]


def _markers(results, sweep=None):
    """run.json mtimes of the runs that are complete (marker with the right key and executed notebook)."""
    runs = load_sweep("smoke", sweep)
    keys = run_keys("smoke", runs)
    return {r.name: (Path(results) / "runs" / r.name / "run.json").stat().st_mtime_ns
            for r in runs if is_complete(Path(results), r, keys[r.name])}


def _assert_complete_and_clean(results, sweep=None):
    runs = load_sweep("smoke", sweep)
    keys = run_keys("smoke", runs)
    for r in runs:
        folder = Path(results) / "runs" / r.name
        record = json.loads((folder / "run.json").read_text())
        assert record["run_key"] == keys[r.name]
        json.loads((folder / f"{r.notebook}.ipynb").read_text())  # a whole notebook, not half a file
    leftovers = [p for p in Path(results).rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_smoke_reproduce_then_rerun_executes_nothing(tmp_path):
    first = _reproduce(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    _assert_complete_and_clean(tmp_path)
    # Every output the smoke profile declares is made by its real notebooks (each report generator runs).
    figures = json.loads((tmp_path / "runs" / "figures" / "run.json").read_text())["results"]
    assert figures["covers_not_made"] == [], figures["covers_not_made"]
    assert (tmp_path / "REPORT.md").is_file() and (tmp_path / "REPORT.html").is_file()
    # The report opens with the verdict, computed from the seeds the smoke sweep trains (2 per main arm).
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Verdict at this scale" in report and "could not be computed" not in report
    assert "ground truth [0, 1]" in report and "STM, end-of-turn trained [0]" in report
    assert (tmp_path / "tables" / "verdict.csv").is_file() and "**Where answers stop.**" in report
    # STM's siblings train through 04_sft and get their own section, with the mask run's probability x entropy plane
    assert "## Beyond the paper: STM and its siblings" in report and "Not computed" not in report
    assert "**DFT**: forgets less" in report and "**EAFT**" in report and "**conflict masking**" in report
    assert (tmp_path / "figures" / "probability_entropy_plane.png").is_file()
    assert (tmp_path / "figures" / "categories_confident_conflicts.png").is_file()
    before = _markers(tmp_path)
    again = _reproduce(tmp_path)
    assert again.returncode == 0 and "0 executed" in again.stdout
    assert _markers(tmp_path) == before


@pytest.mark.slow
def test_a_warm_rerun_keeps_the_wall_time_of_the_computing_execution(tmp_path):
    sweep = _sweep(tmp_path, [{"name": "score", "notebook": "01_score_tokens"},
                              {"name": "figures", "notebook": "07_figures", "after": ["score"]}])
    env = {**os.environ, "STMKIT_CACHE": str(tmp_path / "cache")}  # nothing cached: score computes its artifacts
    first = _reproduce(tmp_path / "out", "--sweep", str(sweep), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    read = lambda f: json.loads((tmp_path / "out" / f).read_text())  # noqa: E731
    last, computed = read("pipeline_timings.json"), read("pipeline_timings_computed.json")
    assert set(last) == {"score", "figures"} and set(computed) == {"score"}  # the figures notebook caches nothing
    # no recorded cost for these runs: no invented ETA before one has finished, then the mean of finished runs
    assert "score (01_score_tokens) elapsed 0:00, time left unknown until a run finishes" in first.stdout
    assert re.search(r"figures \(07_figures\) elapsed [0-9:]+, ~[0-9:]+ left", first.stdout), first.stdout
    (tmp_path / "out" / "runs" / "score" / "run.json").unlink()
    again = _reproduce(tmp_path / "out", "--sweep", str(sweep), env=env)
    assert again.returncode == 0 and "1 executed" in again.stdout, again.stdout + again.stderr
    assert read("pipeline_timings_computed.json") == computed  # re-executed from the cache: not a computing time


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_batch(tmp_path):
    sweep = _sweep(tmp_path, [
        {"name": "broken", "notebook": "01_score_tokens", "params": {"example_index": 10_000}},
        {"name": "needs-broken", "notebook": "02_mask_tokens", "after": ["broken"]},
        {"name": "fine", "notebook": "01_score_tokens"},
    ])
    res = _reproduce(tmp_path / "out", "--sweep", str(sweep))
    assert res.returncode == 1
    assert "1 executed" in res.stdout and "failed: broken" in res.stdout and "blocked: needs-broken" in res.stdout
    shown = tmp_path / "out" / "runs" / "broken" / "01_score_tokens.ipynb"
    assert str(shown) in res.stdout and "IndexError" in shown.read_text()
    assert (tmp_path / "out" / "runs" / "fine" / "run.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sig, during, delay", [(signal.SIGKILL, 1, 2.0), (signal.SIGTERM, 2, 0.5),
                                                (signal.SIGINT, 3, 0.2)])
def test_kill_at_any_point_then_resume_completes_without_redoing(tmp_path, sig, during, delay):
    """Kill while run `during` executes (found from the progress line, not a clock), then resume."""
    sweep = _sweep(tmp_path, KILL_SWEEP)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stmkit.pipeline", "--profile", "smoke", "--results-dir", str(out), "--sweep",
         str(sweep)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    marker = f"[{during}/{len(KILL_SWEEP)}]"
    for line in proc.stdout:
        if line.startswith(marker):
            break
    else:
        pytest.fail(f"the pipeline never printed {marker}")
    time.sleep(delay)
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        time.sleep(1.0)  # let an orphaned kernel notice its parent is gone
    finished = _markers(out, sweep)
    assert len(finished) < len(KILL_SWEEP), "the kill came after the end; kill earlier"
    res = _reproduce(out, "--sweep", str(sweep))
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_complete_and_clean(out, sweep)
    after = _markers(out, sweep)
    for name, mtime in finished.items():
        assert after[name] == mtime, f"run {name} finished before the kill but was executed again"


def test_notebook_keys_follow_cell_sources_not_editor_metadata(tmp_path):
    src = json.loads((ROOT / "notebooks" / "01_score_tokens.ipynb").read_text())
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(src))
    before = pipeline.notebook_hash(path)
    saved = json.loads(json.dumps(src))  # as JupyterLab saves it after running: outputs, counts, kernel metadata
    saved["metadata"]["kernelspec"] = {"name": "stmkit", "display_name": "stmkit (.venv)", "language": "python"}
    saved["metadata"]["widgets"] = {"state": {}}
    for i, cell in enumerate(saved["cells"]):
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x\n"]}]
            cell["execution_count"] = i
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-12-03T22:00:00Z"}
    path.write_text(json.dumps(saved, indent=2))
    assert pipeline.notebook_hash(path) == before
    saved["cells"][-1]["source"] = ["run.finish()"]
    path.write_text(json.dumps(saved))
    assert pipeline.notebook_hash(path) != before


def test_a_notebook_run_by_hand_never_replaces_the_pipelines_run(tmp_path, monkeypatch):
    import stmkit.experiment as ex

    monkeypatch.setenv("STMKIT_RESULTS", str(tmp_path))
    batch = ex.start("score", "smoke", "", "score", "", "key-from-the-pipeline")
    batch.finish(table01=[])
    hand = ex.start("score", "smoke", "", "score", "", "")  # as JupyterLab runs it: no key, default folder
    assert hand.interactive and hand.dir == tmp_path / "smoke" / "interactive" / "runs" / "score"
    hand.finish(table01=[{"by": "hand"}])
    record = json.loads((tmp_path / "smoke" / "runs" / "score" / "run.json").read_text())
    assert record["run_key"] == "key-from-the-pipeline" and record["results"]["table01"] == []
    # an interactive notebook reads its own upstream runs first, then the pipeline's
    assert hand.load_run("score").results.table01 == [{"by": "hand"}]
    assert batch.load_run("score").results.table01 == []
