"""The verdict table on synthetic runs with planted effects: words follow the data, never the other way round."""

from __future__ import annotations

import numpy as np

from stmkit import verdict
from stmkit.records import EvaluationResults, GenerationResults, RunRecord, ScoringResults, SFTResults
from stmkit.verdict import BASE, VerdictInput


def _planted(seeds=(0, 1, 2), items=200, rise_gt=0.2, rise_stm=0.05) -> VerdictInput:
    rng = np.random.default_rng(0)
    keys = [f"arc_easy:{i}" for i in range(items)]
    base = dict(zip(keys, rng.normal(1.0, 0.3, items), strict=True))
    acc_base = {k: float(rng.random() < 0.5) for k in keys}
    arms = {"ground truth": {s: f"gt-s{s}" for s in seeds}, "STM": {s: f"stm-s{s}" for s in seeds}}
    data = VerdictInput(arms=arms)
    data.items[(BASE, "gold_nll")] = base
    data.items[(BASE, "accuracy")] = acc_base
    for arm, rise in (("ground truth", rise_gt), ("STM", rise_stm)):
        for label in arms[arm].values():
            shift = rng.normal(0, 0.01)
            data.items[(label, "gold_nll")] = {k: v + rise + shift + rng.normal(0, 0.05) for k, v in base.items()}
            data.items[(label, "accuracy")] = dict(acc_base)  # accuracy does not move
            data.delta_w[label] = (2.0 if arm == "ground truth" else 0.5) + rng.normal(0, 0.05)
    data.seq_ppl = {"Ground Truth": {str(i): 4.0 + rng.random() for i in range(20)},
                    "Self-Output": {str(i): 1.2 + 0.1 * rng.random() for i in range(20)}}
    return data


def _row(rows, claim_key, arm, measure_word):
    return next(r for r in rows if r.claim == verdict.CLAIMS[claim_key] and r.arm == arm and measure_word in r.measure)


def test_planted_effects_hold_and_absent_ones_are_inconclusive():
    rows = verdict.build(_planted())
    gt = _row(rows, "gt_forgets", "ground truth", "gold-answer NLL")
    assert gt.verdict == "holds" and abs(gt.estimate - 0.2) < 0.03 and gt.seeds == 3 and gt.items == 200
    assert _row(rows, "stm_less", "STM", "gold-answer NLL").verdict == "holds"
    assert _row(rows, "gt_forgets", "ground truth", "accuracy").verdict == "inconclusive"
    assert _row(rows, "delta_w", "STM − ground truth", "ΔW").verdict == "holds"
    assert _row(rows, "ppl_order", "Ground Truth − Self-Output", "sequence PPL").verdict == "holds"
    assert _row(rows, "gt_forgets", "ground truth", "KL").verdict == "not measured"


def test_stm_forgetting_more_is_contradicted():
    rows = verdict.build(_planted(rise_gt=0.05, rise_stm=0.3))
    assert _row(rows, "stm_less", "STM", "gold-answer NLL").verdict == "contradicted"


def test_one_seed_never_supports_a_claim():
    rows = verdict.build(_planted(seeds=(0,)))
    gt = _row(rows, "gt_forgets", "ground truth", "gold-answer NLL")
    assert gt.verdict == "inconclusive" and "one seed" in gt.reason
    assert _row(rows, "delta_w", "STM − ground truth", "ΔW").verdict == "inconclusive"


def test_pairs_by_seed_and_item_and_the_table_formats():
    data = _planted()
    del data.items[("stm-s2", "gold_nll")]  # a missing model drops its seed, not the row
    rows = verdict.build(data)
    assert _row(rows, "stm_less", "STM", "gold-answer NLL").seeds == 2
    df = verdict.table(rows)
    assert {"claim", "estimate", "95% CI", "MDE (80%)", "paper", "verdict"} <= set(df.columns)


def test_report_section_from_run_records(tmp_path):
    from stmkit import report_verdict

    items = tmp_path / "items.jsonl"
    items.write_text('{"task": "arc_easy", "id": "1", "correct": true}\n{"task": "arc_easy", "id": "2", "correct": false}\n')
    sft = {
        f"sft-{m}-s{s}": {"method": m, "delta_w": 1.0 + s,
                          "record": RunRecord(run=f"sft-{m}-s{s}", stage="sft", results=SFTResults(method=m),
                                              config={"training": {"seed": s}, "masking": {}})}
        for m in ("gt", "stm") for s in (0, 1)
    }
    ev = RunRecord(run="evaluate", stage="evaluate", results=EvaluationResults(
        target="mbpp", accuracy={name: {"arc_easy": {"items_path": str(items)}} for name in [*sft, "Original"]}))
    data = report_verdict.collect(sft, [ev], None, lambda info: True)
    assert data.arms == {"ground truth": {0: "sft-gt-s0", 1: "sft-gt-s1"}, "STM": {0: "sft-stm-s0", 1: "sft-stm-s1"}}
    md = report_verdict.section(data, tmp_path / "tables", "tiny")
    assert md.startswith("## Verdict at this scale") and "BWT" in md and (tmp_path / "tables" / "verdict.csv").is_file()


def test_readme_quotes_the_computed_verdict_table(tmp_path):
    from stmkit import report

    root = tmp_path / "results"
    (root / "tables").mkdir(parents=True)
    (root / "tables" / "verdict.md").write_text("Verdict caption\n\n| claim | verdict |\n|---|---|\n| 1 | holds |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.MAP_START}\nold map\n{report.MAP_END}\n\n{report.VERDICT_START}\nold\n"
                      f"{report.VERDICT_END}\ntail\n")
    report.update_readme(readme, root)
    text = readme.read_text()
    assert "| 1 | holds |" in text and "old\n" not in text and text.endswith("tail\n") and "old map" not in text
    # another profile's report rewrites only its own blocks: the curve, not the default's verdict or paper map
    readme.write_text(text + f"{report.CURVE_START}\nold curve\n{report.CURVE_END}\n")
    (root / "tables" / "forgetting_curve_summary.md").write_text("| run | step 5 |\n|---|---|\n| sft-gt | +0.01 |\n")
    (root / "tables" / "verdict.md").write_text("| claim | verdict |\n|---|---|\n| 1 | contradicted |\n")
    report.update_readme(readme, root, "cpu-curve")
    text = readme.read_text()
    assert "| sft-gt | +0.01 |" in text and "old curve" not in text and "| 1 | holds |" in text


def test_kl_is_a_distance_from_the_base_whose_own_kl_is_zero():
    data = _planted()
    for label in data.arms["ground truth"].values():
        data.items[(label, "kl")] = {f"arc_easy:{i}": 0.05 + 0.001 * (i % 7) for i in range(50)}
    row = _row(verdict.build(data), "gt_forgets", "ground truth", "KL")
    assert row.verdict == "holds" and abs(row.estimate - 0.053) < 0.002


def test_missing_base_items_and_a_zero_base_are_named_not_crashes():
    data = _planted()
    data.items[(BASE, "accuracy")] = {k: v for k, v in list(data.items[(BASE, "accuracy")].items())[:100]}
    row = _row(verdict.build(data), "gt_forgets", "ground truth", "accuracy")
    assert row.items == 100  # only the items the base was measured on
    data.items[(BASE, "accuracy")] = dict.fromkeys(data.items[(BASE, "accuracy")], 0.0)
    row = _row(verdict.build(data), "gt_forgets", "ground truth", "accuracy")
    assert row.verdict == "not measured" and "scores 0" in row.reason


def test_relative_accuracy_is_the_mean_of_per_task_changes():
    # task a: base 0.5, drops by 0.25 (-50%); task b: base 1.0, unchanged (0%), with 3x the items: BWT = -25%.
    keys = [f"a:{i}" for i in range(4)] + [f"b:{i}" for i in range(12)]
    base = {k: (float(int(k[2:]) % 2) if k.startswith("a") else 1.0) for k in keys}  # a: mean 0.5, b: 1.0
    tuned = {k: (0.0 if k in ("a:1",) else base[k]) for k in keys}  # a: 0.5 -> 0.25
    data = VerdictInput(arms={"ground truth": {0: "gt0", 1: "gt1"}})
    data.items[(BASE, "accuracy")] = base
    data.items[("gt0", "accuracy")] = tuned
    data.items[("gt1", "accuracy")] = tuned
    row = _row(verdict.build(data), "gt_forgets", "ground truth", "accuracy")
    assert abs(row.estimate - (-50.0 + 0.0) / 2) < 1e-9


def test_paper_numbers_come_from_the_papers_tables():
    from stmkit import report_verdict

    paper = report_verdict.paper_numbers()
    assert paper["gt_forgets:accuracy"][0] == -34.71
    assert abs(paper["stm_less:accuracy"][0] - 34.55) < 0.01
    assert abs(paper["stm_keeps_target:target_accuracy"][0] - 5.43) < 0.01


def _with_siblings(rises: dict[str, float], targets: dict[str, float]) -> VerdictInput:
    """_planted plus sibling arms, each with its own non-target rise and target gold NLL change."""
    data = _planted()
    rng = np.random.default_rng(3)
    tkeys = [f"mbpp:{i}" for i in range(100)]
    tbase = dict(zip(tkeys, rng.normal(1.5, 0.3, 100), strict=True))
    data.items[(BASE, "target_gold_nll")] = tbase
    base = data.items[(BASE, "gold_nll")]
    for arm, rise in rises.items():
        data.arms.setdefault(arm, {s: f"{arm}-s{s}" for s in (0, 1, 2)})
        for label in data.arms[arm].values():
            if arm not in ("ground truth", "STM"):
                data.items[(label, "gold_nll")] = {k: v + rise + rng.normal(0, 0.05) for k, v in base.items()}
            data.items[(label, "target_gold_nll")] = {k: v + targets[arm] + rng.normal(0, 0.05)
                                                      for k, v in tbase.items()}
    return data


def test_siblings_are_each_judged_against_ground_truth():
    data = _with_siblings({"ground truth": 0.2, "STM": 0.05, "DFT": 0.02, "EAFT": 0.4},
                          {"ground truth": -0.5, "STM": -0.1, "DFT": -0.5, "EAFT": -0.5})
    rows = verdict.siblings(data)
    assert [r.arm for r in rows if "gold-answer NLL, non" in r.measure] == ["STM", "DFT", "EAFT"]
    assert _row(rows, "sibling_less", "DFT", "gold-answer NLL").verdict == "holds"
    assert _row(rows, "sibling_less", "EAFT", "gold-answer NLL").verdict == "contradicted"
    assert _row(rows, "sibling_target", "STM", "gold-answer NLL, target").verdict == "contradicted"
    assert _row(rows, "sibling_target", "DFT", "gold-answer NLL, target").verdict == "inconclusive"
    pts = verdict.per_seed_points(data, "EAFT", "gold_nll")
    assert len(pts) == 3 and all(p["low"] < p["mean"] < p["high"] and abs(p["mean"] - 0.4) < 0.05 for p in pts)


def test_siblings_section_appears_only_with_a_sibling_method(tmp_path):
    from stmkit import report_verdict

    assert report_verdict.siblings_section(_planted(), tmp_path / "t", tmp_path / "f") == ""
    data = _with_siblings({"ground truth": 0.2, "STM": 0.05, "conflict masking": 0.1},
                          {"ground truth": -0.5, "STM": -0.1, "conflict masking": -0.4})
    md = report_verdict.siblings_section(data, tmp_path / "t", tmp_path / "f")
    assert md.startswith("## Beyond the paper: STM and its siblings")
    assert "**conflict masking**: forgets less — gold NLL holds" in md
    assert (tmp_path / "t" / "siblings.csv").is_file() and (tmp_path / "f" / "siblings_forgetting_vs_gain.png").is_file()
    assert "the paper's side" not in md


def test_claim6_also_reads_every_sampled_answer_from_the_generate_record():
    from stmkit import report_verdict

    rng = np.random.default_rng(1)
    gt = {str(i): 4.0 + rng.random() for i in range(24)}
    # no sample passed the tests
    score = RunRecord(run="score", stage="score", results=ScoringResults(seq_ppl={"Ground Truth": gt,
                                                                                   "Self-Output": {}}))
    generate = RunRecord(run="generate", stage="generate", results=GenerationResults(sample_ppl={
        "Self-Output": {k: 1.3 + 0.1 * rng.random() for k in gt}, "Rephrase": {k: 2.0 + 0.1 * rng.random() for k in gt}}))
    rows = verdict.build(report_verdict.collect({}, [], score, lambda info: True, generate))
    empty = _row(rows, "ppl_order", "Ground Truth − Self-Output", "sequence PPL")
    assert empty.verdict == "not measured" and "holds 0 problem" in empty.reason
    every = _row(rows, "ppl_order", "Ground Truth − Self-Output, every sample", "sequence PPL")
    assert every.verdict == "holds" and every.items == 24
    assert _row(rows, "ppl_order", "Ground Truth − Rephrase, every rewrite", "sequence PPL").verdict == "holds"
