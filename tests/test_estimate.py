"""Time estimates: recorded cold costs scaled by this machine's calibration; guesses and unknowns are named."""

from __future__ import annotations

from stmkit import estimate
from stmkit.sweeps import RunSpec

COSTS = {
    "reference": {"machine": "ref", "gflops": 100.0},
    "profiles": {"p": {"runs": {"train-a": 200.0, "train-b": 100.0, "eval": 50.0}},
                 "uncalibrated": {"gflops": None, "runs": {"x": 10.0}},
                 "mixed": {"runs": {"old": {"seconds": 30.0, "gflops": None}, "other": {"seconds": 30.0, "gflops": 25.0}}}},
}
RUNS = [RunSpec("train-a", "04_sft"), RunSpec("train-c", "04_sft"), RunSpec("eval", "05_evaluate"),
        RunSpec("report", "07_figures")]


def test_recorded_costs_scale_with_the_machine_and_unknowns_are_named():
    est = {e.run: e for e in estimate.estimate_runs("p", RUNS, gflops=50.0, costs=COSTS)}
    assert est["train-a"].seconds == 400.0 and est["train-a"].basis == "recorded"  # half as fast: twice as long
    assert est["train-c"].seconds == 400.0 and est["train-c"].basis == "notebook mean"  # mean of the sweep's 04_sft
    assert est["report"].seconds is None and est["report"].basis == "none"
    text = estimate.describe(list(est.values()), 50.0, COSTS)
    assert "3 of 4 runs" in text and "train-c" in text and "no recorded cost: report" in text


def test_an_uncalibrated_profile_is_not_scaled():
    (e,) = estimate.estimate_runs("uncalibrated", [RunSpec("x", "01_score_tokens")], gflops=50.0, costs=COSTS)
    assert e.seconds == 10.0


def test_calibration_measures_a_positive_rate():
    assert estimate.calibrate(0.05, size=64) > 0


def test_a_run_measured_elsewhere_carries_its_own_calibration():
    est = {e.run: e.seconds for e in estimate.estimate_runs(
        "mixed", [RunSpec("old", "04_sft"), RunSpec("other", "04_sft")], gflops=50.0, costs=COSTS)}
    assert est == {"old": 30.0, "other": 15.0}
