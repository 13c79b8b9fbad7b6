"""The paper path rehearsed on CPU: a sweep derived run for run from the paper's, stand-ins for its models, hub-schema
fixture data read the way the hub copy is, and a subset of it executed by the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stmkit import datagen, report, sweeps
from stmkit.config import ConfigError
from stmkit.models import REGISTRY
from stmkit.standins import FAMILIES
from stmkit.tasks import load
from stmkit.tasks.base import Example

SWEEPS = sweeps.SWEEPS_DIR


def test_rehearsal_lists_the_paper_runs_one_to_one_in_order():
    paper = sweeps.load_sweep("paper")
    rehearsal = sweeps.load_sweep("paper-rehearsal")
    assert [(r.name, r.notebook, r.after, r.feeds) for r in rehearsal] == \
           [(r.name, r.notebook, r.after, r.feeds) for r in paper]
    replaced = yaml.safe_load((SWEEPS / "paper-rehearsal.yaml").read_text())["derive"]["params"]
    for p, r in zip(paper, rehearsal, strict=True):
        assert set(r.params) == set(p.params)
        assert {k: v for k, v in r.params.items() if k not in replaced} == \
               {k: v for k, v in p.params.items() if k not in replaced}
        model = ("model.name", "model.stands_in_for")
        assert {k: v for k, v in r.overrides.items() if k not in model} == \
               {k: v for k, v in p.overrides.items() if k not in model}
        assert r.overrides.get("model.stands_in_for") == p.overrides.get("model.name")  # the report files it there


def test_every_paper_model_is_rehearsed_by_the_stand_in_of_its_family():
    paper = sweeps.load_sweep("paper")
    rehearsal = sweeps.load_sweep("paper-rehearsal")
    for p, r in zip(paper, rehearsal, strict=True):
        standin = r.overrides.get("model.name")
        if standin is None:
            continue
        family = FAMILIES[standin].paper_model
        assert REGISTRY[standin].kind == "standin"
        # gemma-2-2b-it and gemma-2-9b-it share the Gemma 2 stand-in; each other family has its own
        assert p.overrides["model.name"].split("-")[:2] == family.split("-")[:2], (p.name, standin)


def _derived(tmp_path: Path, derive: dict) -> Path:
    path = tmp_path / "derived.yaml"
    path.write_text(yaml.safe_dump({"profile": "paper-rehearsal", "derive": derive}))
    return path


def test_a_derived_sweep_must_map_every_model_and_name_real_runs(tmp_path):
    with pytest.raises(ConfigError, match="uses model 'gemma-2-2b-it', which 'derive: models' does not map"):
        sweeps.load_sweep("paper-rehearsal", _derived(tmp_path, {"from": "paper", "models": {"x": "tiny-gemma2"}}))
    models = yaml.safe_load((SWEEPS / "paper-rehearsal.yaml").read_text())["derive"]["models"]
    with pytest.raises(ConfigError, match="names 'nope', which is not a run of paper.yaml"):
        sweeps.load_sweep("paper-rehearsal", _derived(tmp_path, {"from": "paper", "models": models,
                                                                   "runs": ["nope"]}))
    with pytest.raises(ConfigError, match="derives from 'gone'"):
        sweeps.load_sweep("paper-rehearsal", _derived(tmp_path, {"from": "gone"}))


def test_a_chosen_run_brings_the_runs_its_parameters_and_after_name():
    runs = sweeps.load_sweep("paper", SWEEPS / "paper-1gpu.yaml")
    names = [r.name for r in runs]
    # the evaluation names its training runs in a parameter, the trainings name the generation run
    assert names[0] == "gemma2b-mbpp-generate" and names[-1] == "gemma2b-mbpp-evaluate"
    assert {"gemma2b-mbpp-sft-self_output", "gemma2b-mbpp-sft-stm-tau1000", "gemma2b-mbpp-mask"} <= set(names)
    assert all(r.overrides["training.gradient_checkpointing"] is True for r in runs)
    paper = [r.name for r in sweeps.load_sweep("paper")]
    assert names == [n for n in paper if n in set(names)]  # the paper's order


# --- hub-schema fixture data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["mbpp", "gsm8k", "math", "arc_challenge", "arc_easy"])
def test_hub_fixtures_load_through_the_hub_converters(task):
    train, test = load(task, "train", 0, "hub-fixture"), load(task, "test", 0, "hub-fixture")
    assert train and test and not {e.id for e in train} & {e.id for e in test}
    assert all(e.task == task and e.prompt and e.answer for e in train + test)


def test_hub_fixtures_keep_the_hub_quirks_the_converters_handle():
    from stmkit.tasks.hub_fixtures import FIXTURE_DIR

    raw = (FIXTURE_DIR / "google-research-datasets__mbpp" / "full" / "train.jsonl").read_text()
    assert "\\r\\n" in raw  # MBPP's code has Windows line endings on the hub ...
    assert not any("\r" in e.response for e in load("mbpp", "train", 0, "hub-fixture"))  # ... normalised
    arc = [json.loads(line) for line in
           (FIXTURE_DIR / "allenai__ai2_arc" / "ARC-Challenge" / "test.jsonl").read_text().splitlines()]
    assert any(row["choices"]["label"][0] == "1" for row in arc)  # numeric labels, as some hub rows have
    assert all(e.answer in "ABCDE" for e in load("arc_challenge", "test", 0, "hub-fixture"))


def test_a_split_the_hub_lacks_is_one_error_naming_it():
    with pytest.raises(ValueError, match="openai/gsm8k .* has no split 'validation'"):
        load("gsm8k", "validation", 0, "hub-fixture")


def test_bird_by_data_source():
    from stmkit.evaluation import load_task_items

    with pytest.raises(ValueError, match="BIRD is not on the Hugging Face hub"):
        load_task_items("bird", 2, "test", "hf")
    dev = load_task_items("bird", 2, "test", "hub-fixture")  # the stand-in in BIRD's dev layout
    assert len(dev) == 2 and Path(dev[0].meta["db_path"]).parent.parent.name == "dev_databases"
    # the paper profile (source hf) reads the dev folder it is given, as the hub has no BIRD
    folder = Path(dev[0].meta["db_path"]).parent.parent.parent
    assert [e.id for e in load_task_items("bird", 2, "test", "hf", {"bird": str(folder)})] == [e.id for e in dev]


# --- stand-ins never answer correctly: rehearsals keep their answers, unverified ---------------------------------


def test_keep_unverified_keeps_the_lowest_ppl_answer_of_any_kind():
    ex = [Example(id="1", task="mbpp", prompt="p", response="r", answer="a")]
    cands = [datagen.Candidate("1", 0, "worse", 3, False), datagen.Candidate("1", 1, "best", 3, False)]

    def scorer(examples):
        return [type("S", (), {"seq_ppl": 1.0 if e.response == "best" else 9.0})() for e in examples]

    assert datagen.pick_per_problem(ex, cands, scorer, want_correct=True) == []
    (kept,) = datagen.pick_per_problem(ex, cands, scorer, want_correct=None)
    assert kept.response == "best"
    s = datagen.correctness_set(ex, cands, scorer, 1.0, keep_unverified=True)
    assert [e.response for e in s.examples] == ["best"] and s.stats["unverified"] is True


# --- the subset of the rehearsal that `make test` executes ------------------------------------------------------

# One run of each notebook on each family (what they need comes along: 8 runs); 07_figures' run would bring the whole
# sweep (it runs after everything), so the test builds the report from these runs itself.
SUBSET = ["mistral7b-mbpp-mask", "gemma9b-mbpp-sft-gt", "llama8b-mbpp-regularization", "olmo7b-mbpp-evaluate"]


@pytest.mark.slow
def test_rehearsal_subset_runs_each_family_through_the_real_notebooks(tmp_path):
    """One run of each notebook on each family's stand-in, as `make reproduce PROFILE=paper-rehearsal` runs them."""
    derive = yaml.safe_load((SWEEPS / "paper-rehearsal.yaml").read_text())["derive"]
    sweep = _derived(tmp_path, {**derive, "runs": SUBSET})
    runs = sweeps.load_sweep("paper-rehearsal", sweep)
    families = {r.overrides.get("model.name") for r in runs} - {None}
    assert families == {"tiny-gemma2", "tiny-llama3", "tiny-mistral", "tiny-olmo2"}
    assert len(runs) == 8 and {r.notebook for r in runs} == {
        "01_score_tokens", "02_mask_tokens", "03_generate_data", "04_sft", "05_evaluate", "06_regularization"}
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "stmkit.pipeline", "--profile", "paper-rehearsal", "--sweep",
                           str(sweep), "--results-dir", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for r in runs:
        record = json.loads((out / "runs" / r.name / "run.json").read_text())
        assert record["config"]["data"]["source"] == "hub-fixture"
        if r.notebook == "04_sft":
            assert record["results"]["training"]["precision"] == "bf16"  # the paper's precision, on CPU
    evaluated = json.loads((out / "runs" / "olmo7b-mbpp-evaluate" / "run.json").read_text())["results"]
    assert "bird" in json.dumps(evaluated)  # BIRD read from its dev layout
    # the report files each stand-in's runs under the paper model it stands in for
    sections = {s.id: s for s in report.build_report(out, "paper-rehearsal")}
    assert sections["table11"].status == "made"  # OLMo 2 7B (and Gemma 2 9B) vs their ground truth
    assert sections["fig09"].status == "made"  # Mistral 7B's token categories
    assert "A rehearsal: every model is an architecture-faithful stand-in" in (out / "REPORT.md").read_text()


def test_an_empty_generated_set_is_one_error_saying_why():
    from stmkit import sft
    from stmkit.config import load_profile

    class Run:  # what prepare_sft_data reads of a run before it scores anything
        profile = load_profile("smoke", sft.method_overrides("self_output"))

        @staticmethod
        def generated_sets(name):
            return {"Self-Output": [], "Rephrase": []}

    with pytest.raises(ValueError, match="the Self-Output set of run 'generate' is empty: none of the model's answers"):
        sft.prepare_sft_data(Run(), "self_output")
