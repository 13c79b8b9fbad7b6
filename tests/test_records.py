"""Typed run records: what a notebook writes is what the report reads, checked without running a notebook."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import stmkit.experiment as ex
from stmkit.records import (
    RESULTS_BY_STAGE,
    EvaluationResults,
    RecordError,
    RunRecord,
    ScoringResults,
    SFTResults,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_a_record_survives_json_with_its_stage_type():
    rec = RunRecord(run="sft-stm", stage="sft", config={"model": {"name": "m"}, "data": {"target": "mbpp"}},
                    results=SFTResults(method="stm", label="STM", adapter_dir="/a", masking={"masked_share": 0.2}),
                    timings_s={"total": 1.5}, profile_setting={"learning_rate": 1e-3, "finetune": "lora"})
    back = RunRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert back == rec and isinstance(back.results, SFTResults)
    assert back.model == {"name": "m"} and back.target == "mbpp"
    assert back.results.trained_model() == {"adapter_dir": "/a"}


def test_a_record_from_another_version_is_one_error_naming_the_file_and_field(tmp_path):
    path = tmp_path / "runs" / "score" / "run.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"stage": "score", "results": {"table1": []}}))
    with pytest.raises(RecordError, match=r"run\.json: results \['table1'\] are not fields of ScoringResults"):
        RunRecord.load(path)
    path.write_text(json.dumps({"stage": "polish", "results": {}}))
    with pytest.raises(RecordError, match="no record type for stage 'polish'"):
        RunRecord.load(path)
    path.write_text(json.dumps({"stage": "score", "reslts": {}}))
    with pytest.raises(RecordError, match=r"fields \['reslts'\] are not part of a run record"):
        RunRecord.load(path)


def test_finish_writes_the_stage_type_and_refuses_another_or_an_unknown_field(tmp_path):
    run = ex.start("evaluate", "smoke", "", "ev", str(tmp_path), "key")
    with pytest.raises(TypeError, match="unexpected keyword argument 'acuracy'"):
        run.finish(acuracy={})
    with pytest.raises(TypeError, match="the 'evaluate' run records EvaluationResults, not ScoringResults"):
        run.finish(ScoringResults())
    path = run.finish(EvaluationResults(target="mbpp"), n_items=3)
    rec = RunRecord.load(path)
    assert rec.results == EvaluationResults(target="mbpp", n_items=3) and rec.run_key == "key"
    assert rec.stage == "evaluate" and rec.config["name"] == "smoke" and "total" in rec.timings_s


def _finish_calls(notebook: Path) -> tuple[str, list[str]]:
    """(the stage the notebook starts, the keyword names its run.finish call passes)."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    tree = ast.parse(code)
    stage, keywords = "", []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "start" and node.args and isinstance(node.args[0], ast.Constant):
                stage = node.args[0].value
            if node.func.attr == "finish":
                keywords += [k.arg for k in node.keywords if k.arg]
    return stage, keywords


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("0*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_finishes_with_fields_of_its_stage_record(notebook):
    stage, keywords = _finish_calls(notebook)
    assert stage in RESULTS_BY_STAGE, f"{notebook.name} starts stage {stage!r}, which has no record type"
    names = {f.name for f in dataclasses.fields(RESULTS_BY_STAGE[stage])}
    assert keywords, f"{notebook.name} never calls run.finish with its results"
    assert set(keywords) <= names, f"{notebook.name}: {sorted(set(keywords) - names)} are not fields of its record"
