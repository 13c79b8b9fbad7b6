"""Accuracy over training (Figures 4, 7, 11, 12): finding a run's checkpoints and evaluating each on the tiny model."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest
import torch

from stmkit import curves, generation
from stmkit.adapters import weights_fingerprint
from stmkit.cache import Cache, atomic_write_json
from stmkit.config import load_profile
from stmkit.evaluation import evaluate_model
from stmkit.training import RESULT_FILE, TrainResult


def _entry(tmp_path, steps=(2,), final_step=4, per_epoch=4, make=None):
    """A training cache entry laid out as training.train writes it: adapter/, checkpoints/step-N/, train_result.json."""
    entry = tmp_path / "adapters" / "k123"
    saved = []
    for step in steps:
        rel = f"checkpoints/step-{step:06d}"
        (make or (lambda p, s: p.mkdir(parents=True)))(entry / rel, step)
        saved.append({"step": step, "epoch": round(step / per_epoch, 4), "dir": rel})
    (make or (lambda p, s: p.mkdir(parents=True)))(entry / "adapter", final_step)
    result = TrainResult(entry, "k123", "lora", "tiny-llama", checkpoints=saved,
                         record={"steps": final_step, "epochs": final_step / per_epoch, "steps_per_epoch": per_epoch})
    atomic_write_json(entry / RESULT_FILE, result.to_json())
    # what 04_sft records in run.json: adapter_dir and training = TrainResult.summary() (absolute checkpoint dirs)
    return entry, {"adapter_dir": str(result.adapter_dir), "training": result.summary()}


def test_checkpoints_from_train_result(tmp_path):
    entry, run_results = _entry(tmp_path, steps=(1, 2, 3))
    points = curves.list_checkpoints(run_results)
    assert [(p.step, p.epoch, p.final) for p in points] == [(1, 0.25, False), (2, 0.5, False), (3, 0.75, False),
                                                            (4, 1.0, True)]
    assert points[0].path == entry / "checkpoints" / "step-000001" and points[-1].path == entry / "adapter"
    assert {p.kind for p in points} == {"adapter_dir"}
    # 06_regularization records only the adapter folder: train_result.json beside it is enough.
    assert curves.list_checkpoints({"adapter_dir": str(entry / "adapter")}) == points


def test_checkpoints_from_run_json_when_train_result_is_missing(tmp_path):
    entry, run_results = _entry(tmp_path, steps=(2,))
    (entry / RESULT_FILE).unlink()
    expected = [(2, 0.5, entry / "checkpoints" / "step-000002"), (4, 1.0, entry / "adapter")]
    assert [(p.step, p.epoch, p.path) for p in curves.list_checkpoints(run_results)] == expected
    # relative checkpoint folders resolve against the entry (the folder above adapter_dir)
    run_results["training"]["checkpoints"] = ["checkpoints/step-000002"]
    assert [(p.step, p.epoch, p.path) for p in curves.list_checkpoints(run_results)] == expected
    # full fine-tuning records model_dir; its checkpoints load as full models
    full = {"model_dir": run_results["adapter_dir"], "training": run_results["training"]}
    assert {p.kind for p in curves.list_checkpoints(full)} == {"model_dir"}


def test_checkpoint_errors_name_the_problem(tmp_path):
    entry, run_results = _entry(tmp_path, steps=(2,))
    with pytest.raises(KeyError, match="neither 'adapter_dir' nor 'model_dir'"):
        curves.list_checkpoints({"training": {}})
    shutil.rmtree(entry / "checkpoints")
    with pytest.raises(FileNotFoundError, match="step-000002"):
        curves.list_checkpoints(run_results)
    (entry / RESULT_FILE).unlink()
    run_results["training"]["checkpoints"] = [str(entry / "checkpoints" / "last")]
    with pytest.raises(ValueError, match="step-<number>"):
        curves.list_checkpoints(run_results)


def test_no_checkpoints_gives_the_final_model_only(tmp_path):
    _, run_results = _entry(tmp_path, steps=())
    assert [(p.step, p.final) for p in curves.list_checkpoints(run_results)] == [(4, True)]


def test_resolve_task_specs():
    assert curves.resolve_task_specs("target, gsm8k,mbpp", "mbpp") == ["mbpp", "gsm8k"]
    assert curves.resolve_task_specs(" arc_easy:loglik ,target", "math") == ["arc_easy:loglik", "math"]
    assert curves.resolve_task_specs("", "mbpp") == []
    with pytest.raises(KeyError, match="unknown task"):
        curves.resolve_task_specs("gsm8", "mbpp")
    with pytest.raises(ValueError, match="unknown mode"):
        curves.resolve_task_specs("gsm8k:beam", "mbpp")


def test_checkpoint_accuracy_on_the_tiny_model(tiny, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    base = copy.deepcopy(model)
    base_fp = weights_fingerprint(base)

    def make_adapter(path, steps):
        torch.manual_seed(0)
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                             target_modules="all-linear"))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        ids = torch.tensor([tok("Q: What is 2 + 3?\nA: 2 + 3 = 5\n#### 5")["input_ids"]])
        for _ in range(steps):
            pm(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        pm.save_pretrained(path)

    _, run_results = _entry(tmp_path, steps=(1,), final_step=2, per_epoch=2, make=make_adapter)
    cfg = dataclasses.replace(load_profile("smoke").eval, max_new_tokens=4, bootstrap=20)
    cache = Cache(tmp_path / "cache")
    kw = {"base_fingerprint": base_fp, "config": cfg, "cache": cache, "progress": False}
    rows = curves.checkpoint_accuracy(base, tok, run_results, ["gsm8k", "arc_easy"], 2, **kw)
    assert [(r["step"], r["epoch"], r["task"]) for r in rows] == [
        (0, 0.0, "gsm8k"), (0, 0.0, "arc_easy"), (1, 0.5, "gsm8k"), (1, 0.5, "arc_easy"),
        (2, 1.0, "gsm8k"), (2, 1.0, "arc_easy")]  # fmt: skip
    assert all(set(curves.CURVE_FIELDS) == set(r) for r in rows)
    assert all(r["n"] == 2 and r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rows)
    assert len({r["key"] for r in rows}) == 6  # three different models, two tasks each
    original = evaluate_model(base, tok, ["gsm8k", "arc_easy"], 2, config=cfg, fingerprint=base_fp, cache=cache,
                              progress=False)
    assert [r["key"] for r in rows[:2]] == [original["gsm8k"]["key"], original["arc_easy"]["key"]]
    assert weights_fingerprint(base) == base_fp  # adapters were merged into copies, the base is untouched

    def boom(*a, **k):
        raise AssertionError("cached checkpoint evaluations must not generate again")

    monkeypatch.setattr(generation, "generate", boom)
    assert curves.checkpoint_accuracy(base, tok, run_results, ["gsm8k", "arc_easy"], 2, **kw) == rows

    fig = curves.accuracy_curve_figure({"run": rows})
    assert [ax.get_title() for ax in fig.axes] == ["gsm8k (test)", "arc_easy (test)"]
    with pytest.raises(TypeError, match="list of task specs"):
        curves.checkpoint_accuracy(base, tok, run_results, "gsm8k", 2, **kw)


def test_checkpoint_models_are_evaluable_models_named_by_step(tmp_path):
    entry, run_results = _entry(tmp_path, steps=(1, 2), final_step=4)
    models = curves.checkpoint_models("sft-gt", run_results)
    assert list(models) == ["sft-gt@step1", "sft-gt@step2"]  # the final model is the run itself
    assert models["sft-gt@step2"] == {"adapter_dir": str(entry / "checkpoints" / "step-000002")}
