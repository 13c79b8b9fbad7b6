"""Report generators: every paper table and figure from recorded runs, and a clear 'missing' when inputs lack.

The records here are synthetic run.json files written through the same record types as the notebooks (the smoke pipeline test builds a
real report end to end); they let each generator's 'made' path run for profiles a test cannot afford (paper).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stmkit.records import RunRecord, ScoringResults, SFTResults, results_type
from stmkit.report import Context, Section, build_sections
from stmkit.report.runs import GEMMA2B, LLAMA, OLMO, main_setting

TASKS = ["mbpp", "arc_challenge", "arc_easy"]


def _cfg(model: str, target: str = "mbpp", **training) -> dict:
    return {"model": {"name": model}, "data": {"target": target, "n_train": 8},
            "masking": {"tau": training.pop("tau", 2.5)}, "seed": 0,
            "training": {"finetune": "lora", "learning_rate": 1e-3, "weight_decay": 0.0, "kl_coef": 0.0, **training}}


def _acc(base: float) -> dict:
    return {t: {"accuracy": base + 0.01 * i, "ci_low": base - 0.1, "ci_high": base + 0.1, "n": 10}
            for i, t in enumerate(TASKS)}


def _transfer(bwt: float) -> dict:
    return {"ti": 5.0, "ti_low": -5.0, "ti_high": 15.0, "bwt": bwt, "bwt_low": bwt - 3, "bwt_high": bwt + 3,
            "bwt_tasks": TASKS[1:]}


class Results:
    """A results/<profile> folder of run.json records."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, name: str, stage: str, config: dict, **results) -> None:
        """One run.json written as Run.finish writes it: its stage's typed results inside a RunRecord."""
        folder = self.root / "runs" / name
        folder.mkdir(parents=True, exist_ok=True)
        record = RunRecord(run=name, stage=stage, results=results_type(stage)(**results), config=config)
        (folder / "run.json").write_text(json.dumps(record.to_json()))

    def sft(self, name: str, model: str, method: str, target: str = "mbpp", masked: float = 0.2, **extra) -> None:
        training = {k: extra.pop(k) for k in list(extra) if k in ("finetune", "learning_rate", "weight_decay",
                                                                   "kl_coef", "tau")}
        label = {"gt": "Ground Truth", "stm": "STM", "self_output": "Self-Output", "rephrase": "Rephrase",
                 "random": "Random", "low": "Low", "dpf": "DPF", "stm+dpf": "STM+DPF"}[method]
        self.add(name, "sft", _cfg(model, target, **training), label=extra.pop("label", label), method=method,
                 masking={"masked_share": 0.0 if method == "gt" else masked, "trained_tokens": 100},
                 delta_w=1.0 + masked, label_ppl=extra.pop("label_ppl", 2.0 + masked),
                 final_train_loss=0.5 - masked,
                 train_losses=[{"epoch": 0.5, "loss": 1.0, "step": 1}, {"epoch": 1.0, "loss": 0.5 - masked, "step": 2}],
                 eval_losses=[{"epoch": 0.0, "eval_loss": 1.0, "step": 0}, {"epoch": 1.0, "eval_loss": 0.9, "step": 2}],
                 spectra=[{"layer": 0, "projection": "q_proj", "effective_rank": 3.0, "singular_values": [1.0, 0.5],
                           "module": "m"}],
                 **extra)

    def evaluate(self, name: str, model: str, runs: dict[str, float], target: str = "mbpp", **extra) -> None:
        self.add(name, "evaluate", _cfg(model, target), n_items=10,
                 accuracy={"Original": _acc(0.4)} | {r: _acc(0.4 + b / 100) for r, b in runs.items()},
                 transfer={r: _transfer(b) for r, b in runs.items()},
                 drift={r: {"all": {"kl": 0.1, "delta_nll": 0.01}} for r in runs}, **extra)


@pytest.fixture()
def demo(tmp_path) -> Results:
    """What cpu-demo plus cpu-demo-extra and the new notebook options record, for one small model."""
    res = Results(tmp_path / "cpu-demo")
    m = "smollm2-135m-instruct"
    cats = [{"tokens": t, "category": c, "share": s, "count": 1, "source": "GT"}
            for t, shares in (("all", (0.2, 0.3, 0.5)), ("masked", (0.3, 0.3, 0.4)))
            for c, s in zip(("Numbers", "Symbols & special characters", "Words"), shares, strict=True)]
    res.add("mask", "mask", _cfg(m), categories=cats, categories_by_task={"gsm8k": cats, "math": cats})
    res.sft("sft-gt", m, "gt", masked=0.0)
    res.sft("sft-stm", m, "stm", masked=0.3)
    res.sft("sft-stm-tau1.5", m, "stm", masked=0.5, tau=1.5)
    res.sft("sft-random", m, "random", masked=0.3)
    res.sft("sft-low", m, "low", masked=0.6)
    res.sft("sft-self_output", m, "self_output", masked=0.0, label_ppl=1.4)
    res.sft("sft-dora-gt", m, "gt", masked=0.0, finetune="dora")
    res.sft("sft-dora-stm", m, "stm", masked=0.3, finetune="dora")
    res.sft("sft-lr-gt", m, "gt", masked=0.0, learning_rate=1e-4)
    res.sft("sft-lr-stm", m, "stm", masked=0.3, learning_rate=1e-4)
    res.sft("sft-dpf", m, "dpf", masked=0.1, reference_run="sft-gt")
    res.sft("sft-math-stm", m, "stm", target="math", masked=0.3)
    res.sft("sft-continual", m, "stm", masked=0.3, init_run="sft-math-stm", label="STM after MATH")
    for c in (0.0, 1.0):
        res.sft(f"sft-so-{c:g}", m, "self_output", masked=0.0, correctness=c, label=f"Self-Output {100 * c:g}% correct")
    res.add("regularization", "regularization", _cfg(m), adapters={"GT wd 0.2": "/a", "STM": "/b"}, table08=[
        {"run": "GT wd 0.2", "method": "Weight decay", "weight_decay": 0.2, "dropout": 0.3, "kl_coef": "0",
         "delta_w": 1.5, "adapter_key": "k1"},
        {"run": "STM", "method": "STM", "weight_decay": 0.0, "dropout": 0.05, "kl_coef": "0", "delta_w": 1.2,
         "adapter_key": "k2"}])
    trained = ["sft-gt", "sft-stm", "sft-stm-tau1.5", "sft-random", "sft-low", "sft-self_output", "sft-dora-gt",
               "sft-dora-stm", "sft-lr-gt", "sft-lr-stm", "sft-dpf", "sft-math-stm", "sft-continual", "sft-so-0",
               "sft-so-1", "regularization/GT wd 0.2", "regularization/STM"]
    ckpt = {r: [{"step": s, "epoch": s / 2, "task": "mbpp", "accuracy": 0.4 + 0.01 * s, "ci_low": 0.3,
                 "ci_high": 0.5, "n": 10} for s in (0, 1, 2)] for r in ("sft-gt", "sft-stm")}
    res.evaluate("evaluate", m, {r: -float(i) for i, r in enumerate(trained)}, checkpoint_accuracy=ckpt,
                 self_bleu={lab: {"task": "math", "n_items": 5, "n_samples": 4, "self_bleu": 20.0 + i,
                                  "self_bleu_sd": 3.0, "accuracy": 0.1} for i, lab in enumerate(["Original",
                                                                                                 "sft-gt"])})
    return res


def _sections(res: Results, profile: str = "cpu-demo") -> dict[str, Section]:
    ctx = Context.load(res.root, profile)
    return {s.id: s for s in build_sections(ctx)}


def test_every_generator_makes_its_output_from_matching_runs(demo):
    secs = _sections(demo)
    failed = {i: s.body for i, s in secs.items() if "generator failed" in s.body}
    assert not failed, failed
    made = {i for i, s in secs.items() if s.status == "made"}
    expected = {"table02", "table03", "table04", "table05", "table06", "table07", "table08", "table12", "table14",
                "table19", "table20", "fig02", "fig04", "fig05", "fig08", "fig09", "fig10", "fig11", "fig12",
                "fig13", "fig14"}
    assert expected <= made, expected - made
    for ident in expected:
        for f in secs[ident].files:
            assert (demo.root / f).is_file(), (ident, f)


def test_tables_pick_the_rows_they_compare(demo):
    secs = _sections(demo)
    t2 = pd.read_csv(demo.root / "tables" / "table02_main.csv")
    # Table 2: the paper's four methods on plain LoRA runs, not the DoRA, lr-sweep, DPF or regularisation rows.
    assert set(t2["run"]) == {"sft-gt", "sft-stm", "sft-self_output", "sft-math-stm"}
    t4 = pd.read_csv(demo.root / "tables" / "table04_finetune.csv")
    assert set(t4["finetune"]) == {"lora", "dora"} and "sft-stm-tau1.5" not in set(t4["run"])
    t5 = pd.read_csv(demo.root / "tables" / "table05_learning_rate.csv")
    assert set(t5["learning_rate"]) == {1e-3, 1e-4} and "sft-dora-gt" not in set(t5["run"])
    t8 = pd.read_csv(demo.root / "tables" / "table08_regularization.csv")
    assert list(t8["BWT_%"]) == [-15.0, -16.0]  # joined from the evaluation of "regularization/<label>"
    assert list(t8.columns[:6]) == ["run", "method", "weight_decay", "dropout", "kl_coef", "delta_w"]
    t19 = pd.read_csv(demo.root / "tables" / "table19_continual.csv")
    assert list(t19.drop_duplicates("step")["run"]) == ["Original", "sft-math-stm", "sft-continual"]
    t20 = pd.read_csv(demo.root / "tables" / "table20_correctness.csv")
    assert list(t20["correctness_%"].dropna()) == [0.0, 100.0]
    assert "Ground Truth +1.00" in secs["table06"].claim
    assert "substitute" in secs["fig09"].body and "`gsm8k`" in secs["fig09"].body
    assert "`math`" in secs["fig10"].body
    fig4 = pd.read_csv(demo.root / "tables" / "fig04_accuracy_per_checkpoint.csv")
    assert set(fig4["method"]) == {"Ground Truth", "STM"} and len(fig4) == 6


def test_claims_follow_the_intervals(demo):
    secs = _sections(demo)
    # sft-gt BWT 0 [-3, 3], sft-stm BWT -1 [-4, 2]: overlapping intervals are not a finding.
    assert "not distinguishable from noise" in secs["table02"].claim
    assert "STM's update is smaller than ground truth's (||ΔW||): no" in secs["table07"].claim  # 1.3 vs 1.0


def test_paper_models_get_their_own_tables(tmp_path):
    res = Results(tmp_path / "paper")
    for model, short in ((LLAMA, "llama"), (GEMMA2B, "gemma"), (OLMO, "olmo")):
        lr = 2e-5  # the paper profile's: runs at another rate belong to the learning-rate table only
        res.sft(f"{short}-gt", model, "gt", masked=0.0, learning_rate=lr)
        res.sft(f"{short}-stm", model, "stm", masked=0.3, learning_rate=lr)
        res.sft(f"{short}-dora-gt", model, "gt", masked=0.0, finetune="dora", learning_rate=lr)
        res.sft(f"{short}-dora-stm", model, "stm", masked=0.3, finetune="dora", learning_rate=lr)
        res.evaluate(f"{short}-evaluate", model, {f"{short}-gt": 0.0, f"{short}-stm": -1.0, f"{short}-dora-gt": -2.0,
                                                  f"{short}-dora-stm": -3.0})
    secs = _sections(res, "paper")
    assert secs["table16"].status == "made" and secs["table11"].status == "made"
    t16 = pd.read_csv(res.root / "tables" / "table16_finetune.csv")
    assert set(t16["run"]) == {"llama-gt", "llama-stm", "llama-dora-gt", "llama-dora-stm"}
    t4 = pd.read_csv(res.root / "tables" / "table04_finetune.csv")
    assert set(t4["run"]) == {"gemma-gt", "gemma-stm", "gemma-dora-gt", "gemma-dora-stm"}
    t11 = pd.read_csv(res.root / "tables" / "table11_more_models.csv")
    assert set(t11["model"]) == {OLMO}
    assert secs["fig07"].status == "made"  # Gemma's convergence runs
    assert secs["table15"].status == "missing" and "ablation" in secs["table15"].body


def test_missing_inputs_say_what_they_need(tmp_path):
    res = Results(tmp_path / "empty")
    res.root.mkdir(parents=True)
    secs = _sections(res)
    assert len(secs) == 35
    for ident, s in secs.items():
        assert s.status in ("missing", "unavailable"), ident
        assert s.body.startswith(("Not produced by this profile: needs", "Not available in this kit")), (ident, s.body)


def test_the_scale_line_counts_the_examples_a_run_trained_on(tmp_path):
    ctx = Context(tmp_path, "paper", {})
    config = {"model": {"name": "gemma-2-2b-it"}, "data": {"target": "mbpp", "n_train": 0}, "seed": 42}
    hub = RunRecord(run="score", stage="score", results=ScoringResults(), config=config)
    assert "all training examples" in ctx.scale(hub)  # n_train 0 means the whole train split, not none
    trained = RunRecord(run="sft", stage="sft", results=SFTResults(training={"examples": 374}), config=config)
    assert "374 training examples" in ctx.scale(trained)


def test_the_main_setting_comes_from_the_run_records_not_the_yaml_as_edited_since(tmp_path):
    def run(lr: float, finetune: str) -> RunRecord:
        return RunRecord(run="sft", stage="sft", results=SFTResults(),
                         profile_setting={"learning_rate": lr, "finetune": finetune})

    recorded = run(0.123, "dora")
    assert main_setting(Context(tmp_path, "cpu-demo", {"a": recorded, "b": recorded})) == (0.123, "dora")
    other = run(0.5, "lora")
    with pytest.raises(ValueError, match="differently configured profiles"):
        main_setting(Context(tmp_path, "cpu-demo", {"a": recorded, "b": other}))


def test_a_run_records_its_profiles_own_setting_before_overrides(tmp_path, monkeypatch):
    import stmkit.experiment as ex

    monkeypatch.setenv("STMKIT_RESULTS", str(tmp_path))
    run = ex.start("sft", "smoke", "training.learning_rate=0.5,training.finetune=dora", "lr", "", "")
    assert run.profile.training.learning_rate == 0.5
    assert run.log.record.profile_setting == {"learning_rate": 1.0e-3, "finetune": "lora"}


def test_table09_reads_prompt_and_instruction_level_ifeval_accuracy_from_the_items(tmp_path):
    from stmkit.tasks import ifeval

    res = Results(tmp_path / "cpu-full")
    m = "smollm2-135m-instruct"
    res.sft("sft-gt", m, "gt", masked=0.0)
    res.sft("sft-stm", m, "stm", masked=0.3)
    items = ifeval.build_standin(4)

    def summary(name: str, answer: str) -> dict:
        records = [{"id": e.id, **ifeval.score(e, answer)} for e in items]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        acc = sum(r["correct"] for r in records) / len(records)
        return {"ifeval": {"accuracy": acc, "ci_low": 0.0, "ci_high": 1.0, "n": len(records), "items_path": str(path)}}

    def change(low: float, high: float) -> dict:
        return {"per_task": {"ifeval": {"change": (low + high) / 2, "change_low": low, "change_high": high}}}

    res.add("evaluate", "evaluate", _cfg(m), n_items=4,
            accuracy={"Original": summary("o", "Tea is good."), "sft-gt": summary("g", ""),
                      "sft-stm": summary("s", "Tea is good.")},
            transfer={"sft-gt": change(-0.6, -0.3), "sft-stm": change(-0.1, 0.1)})
    sec = _sections(res, "cpu-full")["table09"]
    assert sec.status == "made", sec.body
    assert "NOT IFEval" in sec.body and "Paper (Table 9" in sec.body
    assert sec.claim.startswith("STM keeps instruction following better than ground truth") and ": yes" in sec.claim
    df = pd.read_csv(res.root / "tables" / "table09_ifeval.csv")
    assert list(df["run"]) == ["Original", "sft-gt", "sft-stm"]
    expected = ifeval.accuracies([ifeval.score(e, "Tea is good.") for e in items])
    assert df.loc[0, "instruction_strict"] == pytest.approx(expected["instruction_strict"])
    assert df.loc[1, "instruction_strict"] == 0.0 and df.loc[0, "instructions"] == expected["n_instructions"]
