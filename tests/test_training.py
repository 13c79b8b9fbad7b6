"""Training with TRL's SFTTrainer: loss normalisation, no silent drops, same order for GT and STM, KL sign,
LoRA/DoRA/full save and load, cache hits. All on the tiny model (a second or two per run)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stmkit import adapters, masking, training
from stmkit.cache import Cache
from stmkit.scoring import render_examples, score_rendered
from stmkit.tasks import load
from stmkit.trainer import build_trainer


@pytest.fixture(scope="module")
def scored(tiny):
    model, tok = tiny
    rendered = render_examples(tok, load("mbpp", "train", 8), max_length=1024)
    return score_rendered(model, rendered, tok.pad_token_id, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("cache"))


def run(data, cfg, cache, tok, **kw):
    return training.train("tiny-llama", data, cfg, tokenizer=tok, cache=cache, progress=False, **kw)


def _lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def test_grad_accum_8x1_equals_batch_8_mean_over_all_trained_tokens(tiny, cache, lora_cfg, synthetic_rows):
    """One SGD step: batch 8 == batch 1 x accumulation 8 == -lr * grad of (sum NLL / all trained tokens)."""
    _, tok = tiny
    rows = synthetic_rows([1, 2, 4, 8, 16, 32, 3, 40])
    cfg = dataclasses.replace(lora_cfg, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, max_steps=1, batch_size=8)
    one = run(rows, cfg, cache, tok)
    eight = run(rows, dataclasses.replace(cfg, batch_size=1, grad_accum=8), cache, tok)
    assert one.record["steps"] == eight.record["steps"] == 1
    assert eight.record["examples_seen"] == 8 and len(eight.order) == 8
    m1, _ = adapters.load_trained(one.adapter_dir, device="cpu")
    m8, _ = adapters.load_trained(eight.adapter_dir, device="cpu")
    b1, b8 = _lora_b(m1), _lora_b(m8)
    scale = max(float(v.abs().max()) for v in b1.values())
    assert scale > 0
    for name in b1:  # LoRA B starts at zero, so B after one SGD step is the update itself
        torch.testing.assert_close(b8[name], b1[name], rtol=1e-4, atol=1e-5 * scale)

    # The same update by hand: reset B to its initial zeros and differentiate the token-mean NLL of all 8 rows.
    def grads(loss_fn):
        model, _ = adapters.load_trained(one.adapter_dir, device="cpu")
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.zero_()
                p.requires_grad_(True)
        model.train()
        loss_fn(model).backward()
        return {n: -cfg.learning_rate * p.grad for n, p in model.named_parameters() if "lora_B" in n}

    def nll(model, row):
        ids = torch.tensor([row["input_ids"]])
        logits = model(input_ids=ids).logits[0, :-1]
        lab = torch.tensor(row["labels"][1:])
        keep = lab != -100
        return -torch.log_softmax(logits[keep], -1).gather(-1, lab[keep][:, None]).sum(), int(keep.sum())

    def token_mean(model):
        parts = [nll(model, r) for r in rows]
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)

    def mean_of_means(model):  # what per-micro-batch averaging would do: every example weighs the same
        return sum(s / n for s, n in (nll(model, r) for r in rows)) / len(rows)

    want, naive = grads(token_mean), grads(mean_of_means)
    for name in b1:
        torch.testing.assert_close(b1[name], want[name], rtol=1e-4, atol=1e-5 * scale)
    gap = max(float((want[k] - naive[k]).abs().max()) for k in want)
    assert gap > 100 * 1e-5 * scale  # the test can tell the two normalisations apart


def test_all_masked_example_is_refused_and_counts_recorded(tiny, scored, cache, lora_cfg):
    _, tok = tiny
    res = masking.apply_masks(scored[:2], [np.ones(len(s.logprobs), bool) for s in scored[:2]], "threshold")
    rows = [{"id": i, "input_ids": x, "labels": y} for i, x, y in zip(res.ids, res.input_ids, res.labels, strict=True)]
    rows[1]["labels"] = [-100] * len(rows[1]["labels"])  # as if the EOS had not been kept
    with pytest.raises(training.TrainingDataError, match=r"row 1 \(id '.*'\): every label is -100.*keep_eos"):
        run(rows, lora_cfg, cache, tok)
    bad = dict(rows[0], labels=rows[0]["labels"][:-1])
    with pytest.raises(training.TrainingDataError, match="labels; they must align"):
        training.check_dataset(training.as_dataset([bad]))
    shifted = dict(rows[0], labels=[-100] + rows[0]["input_ids"][:-1])
    with pytest.raises(training.TrainingDataError, match="differs from the input token"):
        training.check_dataset(training.as_dataset([shifted]))
    # keep_eos (the masking default) leaves one trained token per fully masked example: trained on, counted
    out = run(res, dataclasses.replace(lora_cfg, max_steps=1), cache, tok)
    assert out.record["examples"] == 2 and out.record["trained_tokens"] == 2 and out.record["examples_seen"] == 2


def test_gt_and_stm_see_the_same_examples_in_the_same_order(tiny, scored, cache, lora_cfg):
    _, tok = tiny
    cfg = dataclasses.replace(lora_cfg, epochs=2)
    gt = run(masking.mask_dataset(scored, "none"), cfg, cache, tok)
    stm_data = masking.mask_dataset(scored, "threshold", tau=2.5)
    stm = run(stm_data, cfg, cache, tok)
    assert stm.record["trained_tokens"] < gt.record["trained_tokens"]
    assert gt.record["steps"] == stm.record["steps"] == 8
    assert gt.order == stm.order and len(gt.order) == 8
    assert sorted(r for mb in gt.order[:4] for r in mb) == list(range(8))  # each epoch covers every example
    other = run(stm_data, dataclasses.replace(cfg, seed=1), cache, tok)
    assert other.order != stm.order  # the order depends on the seed, so the equality above means something
    # per-step training loss is logged; STM's loss (on the tokens the model finds likely) is below GT's
    assert len(gt.train_losses()) == 8
    assert stm.record["final_train_loss"] < gt.record["final_train_loss"]


def test_bf16_mixed_precision_trains_fp32_weights_under_autocast_and_keys_apart(tiny, scored, cache, lora_cfg):
    _, tok = tiny
    data = masking.mask_dataset(scored, "none")
    cfg = dataclasses.replace(lora_cfg, max_steps=2)
    fp32 = run(data, cfg, cache, tok)
    mixed = run(data, dataclasses.replace(cfg, mixed_precision="bf16"), cache, tok)
    assert mixed.key != fp32.key and not mixed.cached
    assert mixed.record["precision"] == "float32+bf16-autocast" and fp32.record["precision"] == "float32"
    assert mixed.record["final_train_loss"] == pytest.approx(fp32.record["final_train_loss"], rel=0.05)
    from safetensors.torch import load_file

    weights = load_file(str(mixed.adapter_dir / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}  # the adapter trained in fp32 master weights
    with pytest.raises(ValueError, match="mixed_precision"):
        dataclasses.replace(cfg, mixed_precision="fp8").validate("training")


def test_rerun_with_nothing_changed_trains_nothing(tiny, scored, cache, monkeypatch, lora_cfg):
    _, tok = tiny
    data = masking.mask_dataset(scored, "threshold", tau=2.5)
    cfg = dataclasses.replace(lora_cfg, max_steps=2)
    first = run(data, cfg, cache, tok)
    monkeypatch.setattr("stmkit.trainer.build", lambda *a, **k: pytest.fail("trained again on a cache hit"))
    again = run(data, cfg, cache, tok)
    assert again.cached and again.key == first.key and again.record == first.record
    assert again.adapter_dir == first.adapter_dir
    monkeypatch.undo()
    changed = run(data, dataclasses.replace(cfg, learning_rate=2e-2), cache, tok)
    assert changed.key != first.key and not changed.cached


@pytest.mark.parametrize("finetune", ["lora", "dora", "full"])
def test_each_finetune_type_trains_saves_and_loads(tiny, scored, cache, lora_cfg, finetune):
    model0, tok = tiny
    from stmkit import weights
    from stmkit.models import resolve

    data = masking.mask_dataset(scored, "none")
    cfg = dataclasses.replace(lora_cfg, finetune=finetune, max_steps=2, learning_rate=1e-3 if finetune == "full" else 1e-2)
    # DoRA is trained from the resolved folder path, so its adapter_config points at a path any loader can open
    name = str(resolve("tiny-llama")) if finetune == "dora" else "tiny-llama"
    out = training.train(name, data, cfg, tokenizer=tok, cache=cache, progress=False,
                         eval_dataset=masking.mask_dataset(scored[:2], "none"))
    assert out.record["steps"] == 2 and out.finetune == finetune
    assert list(out.eval_losses()["step"]) == [0, 2]  # the base model's loss, then the end of training
    info = json.loads((out.adapter_dir / adapters.MODEL_INFO).read_text())
    assert info["finetune"] == finetune
    model, tok2 = adapters.load_trained(out.adapter_dir, device="cpu")
    ids = torch.tensor([data.input_ids[0]])
    with torch.no_grad():
        moved = (model(input_ids=ids).logits - model0(input_ids=ids).logits).abs().max()
    assert moved > 0  # the update is there after loading
    summary = weights.summarize_trained(out.adapter_dir)
    assert summary["total"] > 0 and len(summary["per_module"]) == 14  # 2 layers x 7 linear layers
    if finetune != "full":
        cfg_json = json.loads((out.adapter_dir / "adapter_config.json").read_text())
        assert cfg_json["base_model_name_or_path"] == name and cfg_json["use_dora"] == (finetune == "dora")
        assert {t.rsplit(".", 1)[-1] for t in cfg_json["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    if finetune == "dora":
        from peft import AutoPeftModelForCausalLM

        auto = AutoPeftModelForCausalLM.from_pretrained(out.adapter_dir).eval()
        with torch.no_grad():
            torch.testing.assert_close(auto(input_ids=ids).logits, model(input_ids=ids).logits)
    if finetune == "lora":
        assert adapters.lm_eval_model_args(out.adapter_dir).startswith(f"pretrained={resolve('tiny-llama')},peft=")


def test_kl_penalty_keeps_the_model_closer_to_its_base(tiny, scored, cache, lora_cfg):
    _, tok = tiny
    data = masking.mask_dataset(scored, "none")
    cfg = dataclasses.replace(lora_cfg, epochs=2)

    def kl_after(c):
        out = run(data, c, cache, tok)
        model, _ = adapters.load_trained(out.adapter_dir, device="cpu")
        return out, training.kl_to_base(model, data)

    plain, kl0 = kl_after(cfg)
    _, kl1 = kl_after(dataclasses.replace(cfg, kl_coef=1.0))
    strong, kl10 = kl_after(dataclasses.replace(cfg, kl_coef=10.0))
    _, kl_reward = kl_after(dataclasses.replace(cfg, kl_coef=0.5, kl_mode="reference"))
    assert kl0 > kl1 > kl10 and kl10 < 0.25 * kl0  # a larger coefficient, a smaller KL to the base
    assert kl_reward > kl0 > 0  # the reference implementation's sign rewards divergence
    # the KL path computes the same cross-entropy as TRL's: at step 1 (adapter B = 0, KL = 0) the losses agree
    first = [h for h in strong.log_history if "loss" in h]
    assert first[0]["loss"] == pytest.approx(plain.train_losses()["loss"].iloc[0], rel=1e-5)
    assert first[0]["kl_to_base"] == pytest.approx(0.0, abs=1e-6) and first[-1]["kl_to_base"] > 0


def test_init_adapter_is_merged_before_training_and_keys_the_cache(tiny, scored, cache, tmp_path, monkeypatch,
                                                                   lora_cfg):
    """Continual fine-tuning (Table 19): the new adapter starts from base + the earlier adapter, merged."""
    from stmkit.cache import content_key

    model0, tok = tiny
    gt, stm = masking.mask_dataset(scored, "none"), masking.mask_dataset(scored, "threshold", tau=2.5)
    cfg = dataclasses.replace(lora_cfg, max_steps=2)
    first = run(gt, cfg, cache, tok)
    ids = torch.tensor([gt.input_ids[0]])
    stage1, _ = adapters.load_trained(first.adapter_dir, device="cpu")
    with torch.no_grad():
        want = stage1.merge_and_unload()(input_ids=ids).logits
        # before the first step the new LoRA is zero (B = 0): the trainer's model is stage 1, merged
        trainer = build_trainer("tiny-llama", stm, cfg, tmp_path, tokenizer=tok, progress=False,
                                init_adapter=first.adapter_dir)
        torch.testing.assert_close(trainer.model.eval()(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        assert (want - model0(input_ids=ids).logits).abs().max() > 0
    del trainer
    second = run(stm, cfg, cache, tok, init_adapter=first.adapter_dir)
    plain = run(stm, cfg, cache, tok)
    assert second.key != plain.key and second.record["init_adapter"] == str(first.adapter_dir.resolve())
    assert second.record["init_adapter_fingerprint"] == adapters.adapter_fingerprint(first.adapter_dir)
    assert plain.record["init_adapter"] is None
    info = json.loads((second.adapter_dir / adapters.MODEL_INFO).read_text())
    assert info["init_adapter"] == second.record["init_adapter"]
    assert adapters.init_adapter_of(second.adapter_dir) == first.adapter_dir.resolve()
    # without an init adapter the key is what it always was (cached adapters stay valid; the loss settings, added
    # later, stay out of it at their defaults)
    later = ("loss", "eaft_top_k", "eaft_alpha", "mixed_precision", "save_at_steps")
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in later}
    old = content_key("adapter", training.TRAINING_VERSION, config=before, data="d", eval=None,
                      model="m", seed=0, precision="cpu:float32", world_size=1)
    assert training.training_key(cfg, "d", None, "m", 0, "cpu:float32") == old
    # load_trained merges the init adapter first: the result moved away from stage 1
    loaded, _ = adapters.load_trained(second.adapter_dir, device="cpu")
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - want).abs().max() > 0
    with pytest.raises(ValueError, match="continues from the adapter"):
        adapters.lm_eval_model_args(second.adapter_dir)
    monkeypatch.setattr("stmkit.trainer.build", lambda *a, **k: pytest.fail("trained again on a cache hit"))
    assert run(stm, cfg, cache, tok, init_adapter=first.adapter_dir).key == second.key
    monkeypatch.undo()
    other = run(gt, dataclasses.replace(cfg, learning_rate=2e-2), cache, tok)  # another stage 1: another key
    assert run(stm, cfg, cache, tok, init_adapter=other.adapter_dir).key != second.key
    with pytest.raises(FileNotFoundError, match="init_adapter: .*no adapter_config.json"):
        run(stm, cfg, cache, tok, init_adapter=tmp_path)


def test_checkpoints_at_configured_steps(tiny, scored, cache, lora_cfg):
    _, tok = tiny
    out = run(masking.mask_dataset(scored, "none"), dataclasses.replace(lora_cfg, epochs=2, save_every_epochs=0.5), cache,
              tok, eval_dataset=masking.mask_dataset(scored[:2], "none"))
    assert [c["step"] for c in out.checkpoints] == [2, 4, 6]  # 4 steps per epoch; the end is out.adapter_dir
    assert all((d / "adapter_model.safetensors").is_file() for d in out.checkpoint_dirs())
    assert list(out.eval_losses()["step"]) == [0, 2, 4, 6, 8]


def test_config_validation_names_the_key():
    from stmkit.config import ConfigError, load_profile

    with pytest.raises(ConfigError, match="kl_coef.*lora or dora"):
        load_profile("smoke", "training.kl_coef=0.1,training.finetune=full")
    with pytest.raises(ConfigError, match="scheduler"):
        load_profile("smoke", "training.scheduler=cosine_typo")


DDP_SCRIPT = '''
import dataclasses, json, os, sys
from stmkit import training
from stmkit.config import TrainingConfig
from stmkit.models import load_tokenizer
rows, cfg_json, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
world = int(os.environ.get("WORLD_SIZE", "1"))
cfg = dataclasses.replace(TrainingConfig(**cfg_json), batch_size=8 // world)
training.train("tiny-llama", rows, cfg, tokenizer=load_tokenizer("tiny-llama"), cache=False, out_dir=out,
               progress=False)
'''


def test_two_ddp_ranks_give_the_same_update_as_one_process(tmp_path, lora_cfg, synthetic_rows):
    """torchrun, 2 CPU ranks (gloo) x batch 4 == 1 process x batch 8: the token mean spans all ranks."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    rows = json.dumps(synthetic_rows([1, 2, 4, 8, 16, 32, 3, 40]))
    cfg = json.dumps(dataclasses.asdict(dataclasses.replace(lora_cfg, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                                                            max_steps=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    torchrun = Path(sys.executable).parent / "torchrun"
    for cmd, out in (([sys.executable], "one"), ([str(torchrun), "--standalone", "--nproc_per_node", "2"], "ddp")):
        proc = subprocess.run([*cmd, str(script), rows, cfg, str(tmp_path / out)], env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    scale = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5 * scale)
    record = json.loads((tmp_path / "ddp" / training.RESULT_FILE).read_text())["record"]
    assert record["world_size"] == 2 and record["examples_seen"] == 8 and record["distinct_examples_seen"] == 8


def test_group_by_length_batches_similar_lengths_and_still_covers_every_row(tiny, cache, lora_cfg, synthetic_rows):
    _, tok = tiny
    g = np.random.default_rng(3)
    rows = synthetic_rows(g.integers(1, 60, 32).tolist())
    lengths = [len(r["input_ids"]) for r in rows]
    cfg = dataclasses.replace(lora_cfg, optim="sgd", max_grad_norm=0.0, epochs=1)
    padded = lambda order: sum(2 * max(lengths[i] for i in mb) for mb in order)  # noqa: E731
    random_order = run(rows, cfg, cache, tok).order
    grouped = run(rows, dataclasses.replace(cfg, group_by_length=True), cache, tok).order
    assert sorted(r for mb in grouped for r in mb) == list(range(32))
    assert padded(grouped) < 0.95 * padded(random_order), (padded(grouped), padded(random_order))


def test_corrupted_cached_adapter_is_refused_on_a_cache_hit(tiny, scored, tmp_path, lora_cfg):
    from stmkit.cache import CacheCorruptError

    _, tok = tiny
    cache = Cache(tmp_path)
    data = masking.mask_dataset(scored[:2], "none")
    first = run(data, dataclasses.replace(lora_cfg, max_steps=1), cache, tok)
    weights = first.adapter_dir / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = b"\xff" * 64  # same size: NaN and huge weights where the adapter's numbers were
    weights.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match=rf"{first.dir}.*adapter_model\.safetensors.*delete"):
        run(data, dataclasses.replace(lora_cfg, max_steps=1), cache, tok)


def test_each_training_loss_keys_apart_and_the_default_keeps_old_cache_keys(lora_cfg):
    keys = {loss: training.training_key(dataclasses.replace(lora_cfg, loss=loss), "d", None, "m", 0, "cpu:float32")
            for loss in ("nll", "dft", "eaft")}
    assert len(set(keys.values())) == 3
    # the loss settings joined the config later: at their defaults the key is the one computed before them
    from stmkit.cache import content_key
    later = ("loss", "eaft_top_k", "eaft_alpha", "mixed_precision", "save_at_steps")
    old = {k: v for k, v in dataclasses.asdict(lora_cfg).items() if k not in later}
    assert keys["nll"] == content_key("adapter", training.TRAINING_VERSION, config=old, data="d", eval=None,
                                      model="m", seed=0, precision="cpu:float32", world_size=1)


def test_a_run_releases_its_scoring_model_before_training_and_keeps_the_tokenizer(tmp_path, monkeypatch):
    import stmkit.experiment as ex

    monkeypatch.setenv("STMKIT_RESULTS", str(tmp_path))
    run = ex.start("sft", "smoke", "", "release", "", "")
    assert run.model is not None
    tok = run.tokenizer
    run.release_model()
    assert run.tokenizer is tok
    with pytest.raises(RuntimeError, match="released its model"):
        _ = run.model
