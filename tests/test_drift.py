"""Drift: zero for the unmodified model, positive after a weight change, the same through a PEFT adapter switch
as with two models, and the base answers cached."""

from __future__ import annotations

import copy

import pytest
import torch

from stmkit import drift, generation
from stmkit.cache import Cache

TASKS = ["gsm8k", "arc_easy"]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    model, tok = tiny
    cache = Cache(tmp_path_factory.mktemp("drift_cache"))
    ref = drift.reference_responses(model, tok, TASKS, 3, max_new_tokens=16, cache=cache, progress=False)
    return ref, cache


def _perturbed(model, scale: float = 0.02):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def _lora(model, steps: int):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    )
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12] * 4])
    pm.train()
    for _ in range(steps):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return pm.eval()


def test_reference_uses_fixed_validation_prompts_and_is_cached(tiny, reference, monkeypatch):
    model, tok = tiny
    ref, cache = reference
    assert ref.tasks == TASKS and len(ref.items) == 6
    ids = [e.id for e in drift.drift_examples("gsm8k", 3)]
    assert [it.id for it in ref.items[:3]] == ids
    from stmkit.tasks.registry import committed_splits

    assert set(ids) <= set(committed_splits("gsm8k")["validation"])
    assert all(it.response_ids and it.gold_ids for it in ref.items)

    def boom(*a, **k):
        raise AssertionError("the cached reference must not be generated again")

    monkeypatch.setattr(generation, "generate", boom)
    again = drift.reference_responses(model, tok, TASKS, 3, max_new_tokens=16, cache=cache, progress=False)
    assert again.key == ref.key and again.items == ref.items


def test_drift_is_zero_for_the_unmodified_model(tiny, reference):
    model, tok = tiny
    d = drift.measure_drift(model, tok, reference[0], base=model, n_resamples=50, progress=False)
    assert set(d) == {*TASKS, "all"}
    for task in TASKS:
        assert d[task]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert d[task]["delta_nll"] == pytest.approx(0.0, abs=1e-6)
        assert d[task]["delta_gold_nll"] == pytest.approx(0.0, abs=1e-6)
        assert d[task]["nll_base"] > 0 and d[task]["n_prompts"] == 3


def test_drift_is_positive_after_perturbing_weights(tiny, reference):
    model, tok = tiny
    d = drift.measure_drift(_perturbed(model), tok, reference[0], base=model, n_resamples=50, progress=False)
    for task in TASKS:
        assert d[task]["kl"] > 1e-3 and d[task]["kl_low"] <= d[task]["kl"] <= d[task]["kl_high"]
        assert d[task]["delta_nll"] != 0
    assert d["all"]["kl"] == pytest.approx(sum(d[t]["kl"] for t in TASKS) / len(TASKS))


def test_peft_adapter_switch_equals_two_models(tiny, reference):
    model, tok = tiny
    ref = reference[0]
    fresh = _lora(model, steps=0)  # LoRA B starts at zero: the adapter changes nothing yet
    assert drift.measure_drift(fresh, tok, ref, n_resamples=20, progress=False)["all"]["kl"] == pytest.approx(
        0, abs=1e-6
    )
    trained = _lora(model, steps=3)
    via_switch = drift.measure_drift(trained, tok, ref, n_resamples=20, progress=False)
    merged = copy.deepcopy(trained).merge_and_unload()
    via_two = drift.measure_drift(merged, tok, ref, base=model, n_resamples=20, progress=False)
    assert via_switch["all"]["kl"] > 1e-4
    for task in TASKS:
        assert via_switch[task]["kl"] == pytest.approx(via_two[task]["kl"], rel=1e-3, abs=1e-6)
        assert via_switch[task]["delta_nll"] == pytest.approx(via_two[task]["delta_nll"], rel=1e-3, abs=1e-6)


def test_base_with_an_injected_adapter_is_refused(tiny, reference):
    model, tok = tiny
    trained = _lora(model, steps=1)
    with pytest.raises(ValueError, match="injected"):
        drift.measure_drift(trained, tok, reference[0], base=trained.base_model.model, progress=False)
    with pytest.raises(ValueError, match="no base distribution"):
        drift.measure_drift(_perturbed(model), tok, reference[0], progress=False)


def test_base_pass_is_memoised_and_results_cached_by_fingerprint(tiny, reference, tmp_path, monkeypatch):
    model, tok = tiny
    ref, _ = reference
    fresh = drift.DriftReference(ref.items, ref.key, ref.settings)  # no memo yet
    calls = []
    real = drift._hidden_at
    monkeypatch.setattr(drift, "_hidden_at", lambda m, *a: calls.append(m) or real(m, *a))
    one, two = _perturbed(model, 0.01), _perturbed(model, 0.03)
    first = drift.measure_drift(one, tok, fresh, base=model, n_resamples=20, progress=False)
    n_first = len(calls)
    drift.measure_drift(two, tok, fresh, base=model, n_resamples=20, progress=False)
    assert sum(m is model for m in calls[n_first:]) == 0 and len(calls) - n_first == n_first // 2
    # the memoised base pass gives the numbers a fresh one gives
    again = drift.measure_drift(one, tok, drift.DriftReference(ref.items, ref.key, ref.settings), base=model,
                                n_resamples=20, progress=False)
    assert again == first
    cache = Cache(tmp_path)
    cached = drift.measure_drift(one, tok, fresh, base=model, n_resamples=20, progress=False, fingerprint="fp-one",
                                 cache=cache)
    n = len(calls)
    assert drift.measure_drift(None, tok, fresh, base=model, n_resamples=20, progress=False, fingerprint="fp-one",
                               cache=cache) == cached == first
    assert len(calls) == n  # a cache hit runs no model


def test_non_finite_log_probs_are_refused_naming_the_prompt(tiny, reference):
    from stmkit.numerics import NonFiniteError

    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"drift: answers: (gsm8k|arc_easy) prompt '[^']+': per-token KL"):
        drift.measure_drift(broken, tok, reference[0], base=model, n_resamples=20, progress=False)
