"""||ΔW||, singular values and effective rank on hand-built updates with known answers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from stmkit import weights
from stmkit.weights import Update, effective_rank, numerical_rank


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_known_low_rank_update_has_its_rank_norm_and_spectrum():
    u, v = _orthonormal(12, 3, 0), _orthonormal(9, 3, 1)
    s = torch.tensor([3.0, 2.0, 0.5], dtype=torch.float64)
    delta = u @ torch.diag(s) @ v.T
    up = Update("model.layers.4.self_attn.q_proj", dense=delta)
    np.testing.assert_allclose(up.singular_values()[:3], [3.0, 2.0, 0.5], atol=1e-10)
    assert numerical_rank(up.singular_values(), up.shape) == 3
    assert up.fro_norm() == pytest.approx(math.sqrt(9 + 4 + 0.25))
    p = np.array([3.0, 2.0, 0.5]) / 5.5
    assert effective_rank(up.singular_values()) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert (up.layer, up.projection) == (4, "q_proj")


def test_effective_rank_of_equal_singular_values_is_their_count():
    assert effective_rank([2.0, 2.0, 2.0, 2.0, 0.0, 0.0]) == pytest.approx(4.0)
    assert effective_rank([5.0]) == pytest.approx(1.0)
    assert effective_rank([0.0, 0.0]) == 0.0
    assert 1.0 < effective_rank([10.0, 1.0]) < 2.0  # a dominant direction counts for less than two


def test_lora_factors_give_the_same_norm_and_spectrum_as_the_dense_product():
    g = torch.Generator().manual_seed(3)
    b, a = torch.randn(20, 4, generator=g), torch.randn(4, 15, generator=g)
    low = Update("m.q_proj", A=a, B=b, scaling=2.0)
    dense = Update("m.q_proj", dense=2.0 * (b.double() @ a.double()))
    assert low.fro_norm() == pytest.approx(dense.fro_norm(), rel=1e-9)
    np.testing.assert_allclose(low.singular_values(), dense.singular_values()[:4], rtol=1e-9)
    assert numerical_rank(dense.singular_values(), dense.shape) == 4
    torch.testing.assert_close(low.matrix(), dense.matrix())


def test_total_norm_is_the_frobenius_norm_over_all_modules():
    ups = [Update("a.q_proj", dense=torch.full((2, 2), 1.0)), Update("b.o_proj", dense=torch.full((3, 1), 2.0))]
    table = weights.norms_table(ups)
    assert list(table["fro_norm"]) == pytest.approx([2.0, math.sqrt(12)])
    assert weights.total_norm(table) == pytest.approx(math.sqrt(4 + 12))
    assert weights.total_norm(ups) == pytest.approx(4.0)
    assert "Frobenius" in weights.DELTA_W_CAPTION


def _peft(model, use_dora: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=use_dora, task_type="CAUSAL_LM")
    peft = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():  # a non-zero update (B starts at zero)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return peft


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_updates_match_the_merged_weights(tiny, use_dora):
    model, _ = tiny
    peft = _peft(model, use_dora)
    ups = {u.name: u for u in weights.updates(peft)}
    assert len(ups) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    merged = copy.deepcopy(peft).merge_and_unload()
    base = dict(model.named_modules())
    for name, module in merged.named_modules():
        if name in ups:
            want = module.weight.detach().double() - base[name].weight.detach().double()
            torch.testing.assert_close(ups[name].matrix(), want, rtol=1e-4, atol=1e-6)
    if not use_dora:  # LoRA updates have rank <= r
        assert all(numerical_rank(u.singular_values(), u.shape) <= 4 for u in ups.values())


def test_saved_lora_adapter_gives_the_same_updates_as_the_model(tiny, tmp_path):
    model, _ = tiny
    peft = _peft(model, False)
    peft.save_pretrained(tmp_path)
    from_files = weights.summarize(tmp_path)
    from_model = weights.summarize(peft)
    assert from_files["total"] == pytest.approx(from_model["total"], rel=1e-6)
    spectra = from_files["spectra"]
    assert set(spectra["projection"]) == {"q_proj", "o_proj"} and list(spectra["layer"]) == [0, 0, 1, 1]
    assert (spectra["effective_rank"] <= 4 + 1e-9).all() and (spectra["rank"] == 4).all()


def test_full_finetuning_update_is_tuned_minus_base(tiny):
    model, _ = tiny
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.o_proj.weight.add_(1.0)
    table = weights.norms_table(weights.updates(tuned, base=model))
    assert len(table) == 14
    o = table[table["module"] == "model.layers.1.self_attn.o_proj"]
    assert float(o["fro_norm"].iloc[0]) == pytest.approx(64.0)  # a 64 x 64 matrix of ones
    assert weights.total_norm(table) == pytest.approx(64.0)
    with pytest.raises(ValueError, match="needs base="):
        list(weights.updates(tuned))
