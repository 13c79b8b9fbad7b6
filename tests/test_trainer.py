"""The trainer (stmkit.trainer): its loss equals TRL's and hand computations (compact LM head, DFT, EAFT), validation
loss stays plain NLL, and non-finite losses and weights are refused. All on the tiny model (seconds each)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stmkit import adapters, training
from stmkit.cache import Cache
from stmkit.trainer import build_trainer, save_weights, token_weights


def _lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


@pytest.mark.parametrize("loss", ["nll", "dft"])
def test_compact_lm_head_gives_the_same_update_as_trl(tiny, tmp_path, monkeypatch, lora_cfg, synthetic_rows, loss):
    """Off GPU stmkit projects only trained positions; one SGD step (accumulation 4x2) matches TRL's own loss,
    plain NLL and TRL's DFT (loss_type="dft") alike."""
    _, tok = tiny
    rows = synthetic_rows([1, 5, 30, 2, 9, 3, 17, 4], seed=1)
    cfg = dataclasses.replace(lora_cfg, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, max_steps=1, grad_accum=4,
                              loss=loss)

    def run(cache_dir):
        return training.train("tiny-llama", rows, cfg, tokenizer=tok, cache=Cache(cache_dir), progress=False)

    ours = run(tmp_path / "a")
    monkeypatch.setattr("stmkit.trainer.COMPACT_HEAD_OFF_GPU", False)
    trl = run(tmp_path / "b")
    assert ours.record["compact_lm_head"] and not trl.record["compact_lm_head"]
    assert ours.train_losses()["loss"].iloc[0] == pytest.approx(trl.train_losses()["loss"].iloc[0], rel=1e-5)
    b_ours = _lora_b(adapters.load_trained(ours.adapter_dir, device="cpu")[0])
    b_trl = _lora_b(adapters.load_trained(trl.adapter_dir, device="cpu")[0])
    scale = max(float(v.abs().max()) for v in b_trl.values())
    for name in b_trl:
        torch.testing.assert_close(b_ours[name], b_trl[name], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("compact", [True, False])
def test_non_finite_loss_stops_training_naming_the_step(tiny, tmp_path, monkeypatch, lora_cfg, synthetic_rows,
                                                        compact):
    """NaN weights give a NaN loss: refused at the step it appears (stmkit's compact head and TRL's own loss)."""
    from stmkit.numerics import NonFiniteError

    _, tok = tiny
    monkeypatch.setattr("stmkit.trainer.COMPACT_HEAD_OFF_GPU", compact)
    trainer = build_trainer("tiny-llama", training.as_dataset(synthetic_rows([3, 4])), lora_cfg, tmp_path,
                            tokenizer=tok, device="cpu", progress=False)
    with torch.no_grad():
        trainer.model.get_base_model().model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"training step 1\b.*loss"):
        trainer.train()
    lora_b = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"weight .*lora_B.* to be saved"):  # the last step has no loss after it
        save_weights(trainer, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def _batch(trainer, rows):
    batch = trainer.data_collator([{**r, "_row": i} for i, r in enumerate(rows)])
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}


def _hand_weighted_loss(model, batch, weight_of) -> float:
    """Mean over trained tokens of weight * NLL, from full logits and an explicit loop (no shared code)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    total, n = 0.0, 0
    labels = batch["labels"]
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = logits[b, t - 1]
            logp = torch.log_softmax(row, -1)
            total += -float(logp[y]) * weight_of(row, float(logp[y]))
            n += 1
    return total / n


def _eaft_weight(row: torch.Tensor, _logp: float) -> float:
    top = torch.sort(row, descending=True).values[:20]
    p = torch.softmax(top, -1)
    return float(-(p * p.log()).sum() / np.log(20))


@pytest.mark.parametrize("compact", [True, False])
def test_eaft_loss_equals_a_hand_computation(tiny, tmp_path, monkeypatch, lora_cfg, synthetic_rows, compact):
    """EAFT: each trained token's NLL times its top-20 entropy / log 20 (detached), averaged over trained tokens."""
    _, tok = tiny
    monkeypatch.setattr("stmkit.trainer.COMPACT_HEAD_OFF_GPU", compact)
    rows = synthetic_rows([3, 12, 7], seed=4)
    cfg = dataclasses.replace(lora_cfg, loss="eaft")
    trainer = build_trainer("tiny-llama", rows, cfg, tmp_path, tokenizer=tok, device="cpu", progress=False)
    trainer.model.train()
    batch = _batch(trainer, rows)
    got = float(trainer.compute_loss(trainer.model, dict(batch)).detach())
    want = _hand_weighted_loss(trainer.model, batch, _eaft_weight)
    plain = _hand_weighted_loss(trainer.model, batch, lambda row, lp: 1.0)
    assert got == pytest.approx(want, rel=1e-4)
    assert got < plain  # the weights are in [0, 1] and a random model is far from uniform over its top 20


def test_dft_and_eaft_weights_stop_the_gradient_through_the_weight():
    logits = torch.randn(5, 50, requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4, 5])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
    for loss in ("dft", "eaft"):
        w = token_weights(loss, logits, logp)
        assert not w.requires_grad and ((w >= 0) & (w <= 1)).all()
    dft = token_weights("dft", logits, logp)
    torch.testing.assert_close(dft, logp.exp().detach())
    assert token_weights("nll", logits, logp) is None
    with pytest.raises(ValueError, match="unknown training.loss"):
        token_weights("focal", logits, logp)


@pytest.mark.parametrize("loss", ["dft", "eaft"])
def test_validation_loss_is_plain_nll_under_a_reweighted_training_loss(tiny, tmp_path, lora_cfg, synthetic_rows,
                                                                       loss):
    """Validation curves of different methods compare: evaluation ignores the training loss's token weights."""
    _, tok = tiny
    rows = synthetic_rows([4, 9], seed=5)
    trainer = build_trainer("tiny-llama", rows, dataclasses.replace(lora_cfg, loss=loss), tmp_path, tokenizer=tok,
                            device="cpu", progress=False)
    trainer.model.eval()
    batch = _batch(trainer, rows)
    with torch.no_grad():
        got = float(trainer.compute_loss(trainer.model, dict(batch)))
    assert got == pytest.approx(_hand_weighted_loss(trainer.model, batch, lambda row, lp: 1.0), rel=1e-4)
