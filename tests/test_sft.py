"""The SFT recipe (stmkit.sft) on the smoke profile: methods as profile overrides, DPF and STM+DPF (`reference_run`),
continual fine-tuning (`init_run`), the Self-Output correctness ablation (`correctness`), the label PPL every run
records, the command line and its accelerate configs. Tiny model, seconds each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import stmkit.experiment as ex
from stmkit import adapters, datagen, evaluation, masking, sft, training
from stmkit.cache import atomic_write_json
from stmkit.config import parse_overrides
from stmkit.records import GenerationResults, RunRecord, SFTResults, StageResults
from stmkit.scoring import render_examples, score_rendered
from stmkit.tasks import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A results folder and an artifact cache of their own (the notebook kernel inherits the variable too)."""
    root = tmp_path_factory.mktemp("sft-variants")
    mp = pytest.MonkeyPatch()
    mp.setenv("STMKIT_CACHE", str(root / "cache"))
    yield root
    mp.undo()


def start(env: Path, method: str, name: str) -> ex.Run:
    return ex.start("sft", "smoke", sft.method_overrides(method, ""), name, str(env / "results"))


def record_run(env: Path, name: str, results: StageResults) -> None:
    """What a finished run leaves for the runs after it: run.json with its typed results."""
    record = RunRecord(run=name, stage=results.STAGE, results=results)
    atomic_write_json(env / "results" / "runs" / name / "run.json", record.to_json())


def train_run(run: ex.Run, prepared: sft.SFTData) -> training.TrainResult:
    p = run.profile
    return training.train(p.model.name, prepared.data, p.training, tokenizer=run.tokenizer, device=p.model.device,
                          dtype=p.model.dtype, progress=False, init_adapter=prepared.init_adapter_dir)


def test_a_method_sets_its_masking_rule_and_loss_in_the_overrides():
    assert sft.method_overrides("gt", "training.finetune=dora") == "training.finetune=dora,masking.rule=none"
    # The pipeline passes sweep overrides as a JSON mapping; the result must still parse as one profile override.
    merged = sft.method_overrides("stm", '{"training.finetune":"dora"}')
    assert parse_overrides(merged) == {"training": {"finetune": "dora"}, "masking": {"rule": "threshold"}}
    with pytest.raises(ValueError, match="unknown method"):
        sft.method_overrides("nope")
    # STM's siblings: DFT and EAFT set the loss, conflict masking its rule
    assert sft.method_overrides("dft") == "masking.rule=none,training.loss=dft"
    assert json.loads(sft.method_overrides("eaft", '{"training.seed": 1}')) == {
        "masking.rule": "none", "training.loss": "eaft", "training.seed": 1}
    assert sft.method_overrides("conflict") == "masking.rule=conflict"


def test_accelerate_configs_parse_and_build_their_plugins():
    """Dry run of `accelerate launch --config_file ...` for each config: accelerate's parsing, validation, launch env."""
    root = ROOT / "configs" / "accelerate"
    ddp = sft.check_accelerate_config(root / "ddp.yaml")
    assert ddp["distributed_type"].endswith("MULTI_GPU") and ddp["mixed_precision"] == "bf16"
    fsdp = sft.check_accelerate_config(root / "fsdp.yaml")
    assert fsdp["env"]["ACCELERATE_USE_FSDP"] == "true" and fsdp["plugin"]["fsdp_version"] == 2
    assert "FULL_STATE_DICT" in fsdp["plugin"]["state_dict_type"]
    zero3 = sft.check_accelerate_config(root / "deepspeed_zero3.yaml")
    assert zero3["plugin"]["zero_stage"] == 3 and zero3["plugin"]["save_16bit"] is True
    assert "ACCELERATE_USE_FSDP" not in os.environ  # the dry run leaves the environment as it was


@pytest.fixture(scope="module")
def gt_run(env):
    """The ground-truth run `sft-gt` (trained here, recorded as 04_sft records it): DPF's reference, stage 1."""
    run = start(env, "gt", "sft-gt")
    prepared = sft.prepare_sft_data(run, "gt")
    res = train_run(run, prepared)
    record_run(env, "sft-gt", SFTResults(adapter_dir=str(res.adapter_dir), **prepared.info))
    return run, prepared, res


def test_dpf_masks_by_the_rise_under_the_reference_run(env, gt_run):
    run0, gt, gt_res = gt_run
    assert sft.METHOD_LABELS["dpf"] == "DPF" and sft.METHOD_LABELS["stm+dpf"] == "STM+DPF"
    assert sft.method_overrides("stm+dpf", "data.n_train=8") == "data.n_train=8,masking.rule=stm+dpf"
    run = start(env, "dpf", "sft-dpf")
    dpf = sft.prepare_sft_data(run, "dpf", reference_run="sft-gt")
    assert dpf.label == "DPF" and dpf.info["reference_run"] == "sft-gt" and dpf.data.rule == "dpf"
    base_fp = run.model_fingerprint
    assert dpf.info["reference_fingerprint"] == adapters.combined_fingerprint(base_fp, gt_res.adapter_dir)
    assert "scores_ground_truth_under_sft-gt" in run.log.record.cache_keys  # cached under its own fingerprint
    # The same masks by hand: the examples scored under the base with sft-gt's adapter merged.
    with adapters.trained_model(run.model, {"adapter_dir": str(gt_res.adapter_dir)}, base_fp) as (tuned, _, _b):
        rendered = render_examples(run.tokenizer, run.target_examples("train"), run.profile.data.max_length)
        under = score_rendered(tuned, rendered, run.tokenizer.pad_token_id, progress=False)
    tau = run.profile.masking.tau
    want = masking.compute_masks(gt.scored, "dpf", tau, adapter_scored=under)
    assert all(np.array_equal(a, b) for a, b in zip(dpf.data.masks, want, strict=True))
    assert 0 < dpf.data.stats["masked_tokens"] < dpf.data.stats["response_tokens"]
    # STM+DPF masks what STM masks and every token whose PPL rose at all (dpf_delta 0)
    both = sft.prepare_sft_data(start(env, "stm+dpf", "sft-stm-dpf"), "stm+dpf", reference_run="sft-gt")
    stm = masking.mask_dataset(gt.scored, "threshold", tau)
    for b, s, d in zip(both.data.masks, stm.masks, dpf.data.masks, strict=True):
        assert (b >= s).all() and (b >= d).all()
    assert both.label == "STM+DPF" and both.data.stats["dpf_delta"] == 0.0
    # label PPL: mean sequence PPL of the training responses under the scoring model (the base, for all three)
    assert dpf.info["label_ppl"] == pytest.approx(float(np.mean([s.seq_ppl for s in gt.scored])))
    assert gt.info["label_ppl"] == dpf.info["label_ppl"] and gt.info["scoring_model"] == "base"


def test_dpf_parameters_are_checked_by_name(env, gt_run):
    with pytest.raises(ValueError, match="method 'dpf' needs reference_run: .*sft-gt"):
        sft.prepare_sft_data(start(env, "dpf", "sft-dpf-bad"), "dpf")
    with pytest.raises(ValueError, match="reference_run = 'sft-gt' is only used by methods dpf, stm\\+dpf"):
        sft.prepare_sft_data(start(env, "stm", "sft-stm-bad"), "stm", reference_run="sft-gt")
    with pytest.raises(FileNotFoundError, match="run 'sft-missing' has no"):
        sft.prepare_sft_data(start(env, "dpf", "sft-dpf-bad"), "dpf", reference_run="sft-missing")
    record_run(env, "half-done", SFTResults())
    with pytest.raises(ValueError, match="reference_run = 'half-done': that run recorded no adapter_dir"):
        sft.prepare_sft_data(start(env, "dpf", "sft-dpf-bad"), "dpf", reference_run="half-done")


def test_command_line_trains_stm_dpf_and_records_it(env, gt_run):
    assert sft.main(["--profile", "smoke", "--method", "stm+dpf", "--reference-run", "sft-gt", "--run-name",
                     "cli-stm-dpf", "--results-dir", str(env / "results")]) == 0
    res = json.loads((env / "results" / "runs" / "cli-stm-dpf" / "run.json").read_text())["results"]
    assert res["reference_run"] == "sft-gt" and res["label"] == "STM+DPF" and res["masking"]["rule"] == "stm+dpf"
    assert Path(res["adapter_dir"]).is_dir() and res["final_train_loss"] == res["training"]["final_train_loss"]
    assert res["label_ppl"] > 1 and res["init_run"] is None and res["correctness"] is None


def test_continual_run_scores_after_stage_one_and_trains_on_top(env, gt_run):
    run0, gt, gt_res = gt_run
    run = start(env, "stm", "sft-stm-next")
    nxt = sft.prepare_sft_data(run, "stm", init_run="sft-gt")
    base_fp = run.model_fingerprint
    stage1_fp = adapters.combined_fingerprint(base_fp, gt_res.adapter_dir)
    assert nxt.info["init_run"] == "sft-gt" and nxt.init_adapter_dir == str(gt_res.adapter_dir.resolve())
    assert nxt.info["scoring_model"] == "base + sft-gt" and nxt.info["scoring_fingerprint"] == stage1_fp
    # scored under the model after stage 1, so the PPLs (and STM's mask) differ from the base's
    assert not all(np.allclose(a.ppl, b.ppl) for a, b in zip(nxt.scored, gt.scored, strict=True))
    assert nxt.info["label_ppl"] != gt.info["label_ppl"]
    res = train_run(run, nxt)
    assert res.record["init_adapter"] == nxt.init_adapter_dir
    assert res.record["init_adapter_fingerprint"] == adapters.adapter_fingerprint(gt_res.adapter_dir)
    results = SFTResults(adapter_dir=str(res.adapter_dir), **nxt.info)
    ids = torch.tensor([nxt.data.input_ids[0]])
    with adapters.trained_model(run.model, results.trained_model(), base_fp) as (model, fp, base):
        assert fp == adapters.combined_fingerprint(stage1_fp, res.adapter_dir) and base is run.model
        with torch.no_grad():
            got = model(input_ids=ids).logits
    loaded, _ = adapters.load_trained(res.adapter_dir, device="cpu")  # merges the init adapter first, too
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, got, rtol=1e-4, atol=1e-4)
        assert (got - run.model(input_ids=ids).logits).abs().max() > 0
    with pytest.raises(ValueError, match="init_adapter_dir.*merge=True"):
        with adapters.trained_model(run.model, results.trained_model(), base_fp, merge=False):
            pass
    # a third stage, a fully fine-tuned start, and a DPF reference from another stage are refused by name
    record_run(env, "sft-stm-next", results)
    with pytest.raises(ValueError, match="init_run = 'sft-stm-next' itself continues from 'sft-gt'"):
        sft.prepare_sft_data(start(env, "stm", "x"), "stm", init_run="sft-stm-next")
    record_run(env, "sft-full", SFTResults(model_dir=str(env)))
    with pytest.raises(ValueError, match="init_run = 'sft-full' fine-tuned all weights"):
        sft.prepare_sft_data(start(env, "stm", "x"), "stm", init_run="sft-full")
    with pytest.raises(ValueError, match="DPF compares two models of the same stage"):
        sft.prepare_sft_data(start(env, "dpf", "x"), "dpf", reference_run="sft-gt", init_run="sft-gt")


def _ablation_generate_run(env: Path) -> None:
    """A generate run.json with ablation sets as 03_generate_data writes them (0% is empty, as on a tiny model)."""
    folder = env / "results" / "runs" / "generate"
    items = load("mbpp", "train", 4)
    sets = {}
    for share, examples, good in ((1.0, items[:2], 2), (0.5, items[:3], 1), (0.0, [], 0)):
        path = folder / f"self_output_correct_{round(100 * share)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        datagen.save_examples(path, examples)
        label = f"Self-Output {round(100 * share)}% correct"
        sets[label] = {"path": str(path), "label": label, "problems": 4, "kept": len(examples),
                       "correct_share_target": share, "correct_kept": good, "incorrect_kept": len(examples) - good}
    record_run(env, "generate", GenerationResults(ablation=sets))


def test_correctness_trains_on_the_matching_ablation_set(env):
    _ablation_generate_run(env)
    half = sft.prepare_sft_data(start(env, "self_output", "so-50"), "self_output", correctness=0.5)
    assert half.label == "Self-Output 50% correct" and half.source == "Self-Output 50% correct"
    assert half.info["correctness"] == 0.5 and half.info["correct_kept"] == 1 and half.info["incorrect_kept"] == 2
    assert len(half.data.labels) == 3 and half.data.rule == "none"
    full = sft.prepare_sft_data(start(env, "self_output", "so-100"), "self_output", correctness=1)  # an int
    assert full.label == "Self-Output 100% correct" and full.info["correct_kept"] == 2
    with pytest.raises(ValueError, match=r"correctness = 0.75: .*no Self-Output ablation set .*levels: 0, 0.5, 1\)"):
        sft.prepare_sft_data(start(env, "self_output", "x"), "self_output", correctness=0.75)
    with pytest.raises(ValueError, match="correctness = 0: the ablation set 'Self-Output 0% correct' .* is empty"):
        sft.prepare_sft_data(start(env, "self_output", "x"), "self_output", correctness=0.0)
    with pytest.raises(ValueError, match="correctness = 0.5 selects a Self-Output ablation set: .*not 'stm'"):
        sft.prepare_sft_data(start(env, "stm", "x"), "stm", correctness=0.5)
    with pytest.raises(ValueError, match=r"correctness = 1.5: a share of correct answers, in \[0, 1\]"):
        sft.prepare_sft_data(start(env, "self_output", "x"), "self_output", correctness=1.5)
    # negative: not used (the notebook's default), so self_output trains on the Self-Output set (none here)
    with pytest.raises(RuntimeError, match="trains on Self-Output data; run 03_generate_data"):
        sft.prepare_sft_data(start(env, "self_output", "x"), "self_output", correctness=-1.0)


@pytest.mark.slow
def test_notebook_continual_run_records_its_parameters(env, gt_run):
    """04_sft under papermill: a continual STM run on top of sft-gt; run.json holds what 05_evaluate and Figure 2 read."""
    import papermill as pm

    _, _, gt_res = gt_run
    pm.execute_notebook(
        str(ROOT / "notebooks" / "04_sft.ipynb"), str(env / "04_sft.ipynb"), kernel_name="stmkit", progress_bar=False,
        parameters={"profile": "smoke", "results_dir": str(env / "results"), "run_name": "nb-continual",
                    "method": "stm", "init_run": "sft-gt"},
        execution_timeout=300, cwd=str(ROOT / "notebooks"),
    )
    res = json.loads((env / "results" / "runs" / "nb-continual" / "run.json").read_text())["results"]
    assert res["init_run"] == "sft-gt" and res["init_adapter_dir"] == str(gt_res.adapter_dir.resolve())
    assert res["reference_run"] is None and res["correctness"] is None and res["label"] == "STM"
    assert res["label_ppl"] > 1 and res["final_train_loss"] == res["training"]["final_train_loss"]
    assert res["training"]["init_adapter"] == res["init_adapter_dir"]
    trained = evaluation.expand_trained_runs({"nb-continual": res})["nb-continual"]
    assert trained["init_adapter_dir"] == res["init_adapter_dir"]  # what 05_evaluate hands to trained_model
