"""Masking rules: which tokens each rule masks, labels TRL can use, and no silent drops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stmkit.masking import IGNORE, compute_masks, mask_dataset, masked_share_curve, tau_to_probability
from stmkit.scoring import Scored


def scored(item_id, ppls, prompt_len=3):
    ppls = np.asarray(ppls, dtype=float)
    n = len(ppls)
    return Scored(item_id, list(range(100, 100 + prompt_len + n)), prompt_len, (-np.log(ppls)).tolist())


DATA = [scored("a", [1.0, 3.0, 1.2, 10.0, 2.4]), scored("b", [5.0, 1.1, 1.1, 2.6]), scored("c", [9.0, 8.0])]


def test_tau_as_probability():
    assert tau_to_probability(2.5) == pytest.approx(0.4)
    assert tau_to_probability(math.inf) == 0.0


def test_threshold_masks_tokens_above_tau_only_in_the_response():
    res = mask_dataset(DATA, "threshold", tau=2.5)
    assert res.masks[0].tolist() == [False, True, False, True, False]
    lab = res.labels[0]
    assert lab[:3] == [IGNORE] * 3  # prompt never trained
    assert lab[3:] == [103, IGNORE, 105, IGNORE, 107]
    assert res.stats["masked_tokens"] == 2 + 2 + 2 and res.stats["response_tokens"] == 11


def test_tau_must_exceed_one_and_inf_masks_nothing():
    with pytest.raises(ValueError, match="tau must be > 1"):
        compute_masks(DATA, "threshold", tau=1.0)
    assert all(not m.any() for m in compute_masks(DATA, "threshold", tau=math.inf))


def test_low_is_the_complement_except_ties():
    hi = compute_masks(DATA, "threshold", tau=2.5)
    lo = compute_masks(DATA, "low", tau=2.5)
    for h, low in zip(hi, lo, strict=True):
        assert not (h & low).any() and (h | low).all()


def test_random_matches_counts_per_example_without_replacement_and_is_seeded():
    hi = compute_masks(DATA, "threshold", tau=2.5)
    r1 = compute_masks(DATA, "random", tau=2.5, seed=1)
    r2 = compute_masks(DATA, "random", tau=2.5, seed=1)
    r3 = compute_masks(DATA * 20, "random", tau=2.5, seed=2)
    for h, a, b in zip(hi, r1, r2, strict=True):
        assert a.sum() == h.sum() and (a == b).all()
    assert any((a != b).any() for a, b in zip(compute_masks(DATA * 20, "random", tau=2.5, seed=1), r3, strict=True))


def test_random_draws_uniformly_over_response_positions():
    data = [scored(f"x{i}", [1.0] * 9 + [9.0]) for i in range(3000)]
    masks = compute_masks(data, "random", tau=2.5, seed=0)
    freq = np.mean([m for m in masks], axis=0)
    assert np.allclose(freq, 0.1, atol=0.02)


def test_quantile_masks_exactly_the_top_share():
    masks = compute_masks(DATA, "quantile", quantile=3 / 11)
    flat = np.concatenate([s.ppl for s in DATA])
    chosen = np.concatenate(masks)
    assert chosen.sum() == 3
    assert set(np.round(flat[chosen], 6)) == {10.0, 9.0, 8.0}


def test_fully_masked_example_keeps_its_eos_or_is_dropped_and_counted():
    keep = mask_dataset(DATA, "threshold", tau=2.5, fully_masked="keep_eos")
    assert keep.stats["examples_fully_masked"] == 1 and keep.stats["examples_out"] == 3
    c = keep.labels[keep.ids.index("c")]
    assert [x for x in c if x != IGNORE] == [DATA[2].input_ids[-1]]
    # last response tokens 2.4, 2.6, 8.0: the end-of-turn token is masked in two of three examples
    assert mask_dataset(DATA, "threshold", tau=2.5).stats["end_of_turn_masked_share"] == pytest.approx(2 / 3)
    kept = mask_dataset(DATA, "threshold", tau=2.5, train_end_of_turn=True)
    assert kept.stats["end_of_turn_masked_share"] == 0 and kept.stats["train_end_of_turn"] is True
    assert [m.tolist() for m in kept.masks[:2]] == [[False, True, False, True, False], [True, False, False, False]]
    drop = mask_dataset(DATA, "threshold", tau=2.5, fully_masked="drop")
    assert drop.dropped == ["c"] and drop.stats["examples_dropped"] == 1 and drop.stats["examples_in"] == 3


def test_dpf_and_stm_dpf_use_the_adapter_scores():
    tuned = [scored("a", [1.0, 9.0, 1.2, 10.0, 1.0]), scored("b", [5.0, 1.1, 4.0, 2.6]), scored("c", [9.0, 8.0])]
    dpf = compute_masks(DATA, "dpf", adapter_scored=tuned, dpf_delta=2.5)
    assert dpf[0].tolist() == [False, True, False, False, False]  # 9 - 3 = 6 > 2.5
    # The paper's DPF: every token whose PPL rose under the adapter (delta 0), whatever tau is.
    assert compute_masks(DATA, "dpf", tau=1000, adapter_scored=tuned)[1].tolist() == [False, False, True, False]
    both = compute_masks(DATA, "stm+dpf", tau=2.5, adapter_scored=tuned)
    assert both[1].tolist() == [True, False, True, True]  # 5 > tau, 4 - 1.1 > 0, 2.6 > tau
    with pytest.raises(ValueError, match="adapter"):
        compute_masks(DATA, "dpf")


def test_dataset_for_trl_and_share_curve():
    res = mask_dataset(DATA, "threshold", tau=2.5)
    ds = res.to_dataset()
    assert ds.column_names == ["id", "input_ids", "labels"] and len(ds) == 3
    curve = masked_share_curve(DATA, [1.5, 2.5, 1000])
    assert curve[1]["masked_share"] == pytest.approx(6 / 11) and curve[2]["masked_share"] == 0.0


def test_non_finite_logprob_is_refused_not_left_unmasked():
    from stmkit.numerics import NonFiniteError

    bad = Scored("nan-example", [1, 2, 3, 4, 5], 3, [-0.1, float("nan")])
    for rule in ("threshold", "random", "quantile", "low"):
        with pytest.raises(NonFiniteError, match=r"'nan-example'.*response token 1"):
            compute_masks(DATA + [bad], rule, tau=2.5)


def test_truncated_example_with_nothing_trainable_is_dropped_under_its_own_reason():
    # cut off at max_length: its last token is a piece of the answer, not the end-of-turn token
    cut = Scored("cut", list(range(100, 106)), 3, (-np.log([9.0, 8.0, 7.0])).tolist(), truncated=4)
    for policy in ("keep_eos", "drop"):
        res = mask_dataset(DATA + [cut], "threshold", tau=2.5, fully_masked=policy)
        assert "cut" not in res.ids and res.dropped_truncated == ["cut"] and "cut" in res.dropped
        assert res.stats["examples_dropped_truncated"] == 1 and res.stats["examples_in"] == 4
        assert "cut" not in res.fully_masked  # fully_masked counts what the keep_eos/drop policy handled
    # train_end_of_turn keeps the real end-of-turn token only, never the cut-off token
    kept = mask_dataset([cut], "threshold", tau=2.5, train_end_of_turn=True)
    assert kept.ids == [] and kept.dropped_truncated == ["cut"]
    partly = Scored("part", list(range(100, 105)), 3, (-np.log([1.0, 9.0])).tolist(), truncated=1)
    res = mask_dataset([partly], "threshold", tau=2.5, train_end_of_turn=True)
    assert res.masks[0].tolist() == [False, True] and res.labels[0][-1] == IGNORE


def test_end_of_turn_share_counts_only_examples_that_have_one():
    # A kept truncated example ends in a piece of the answer: its last mask says nothing about the end-of-turn token.
    ended = Scored("ended", list(range(100, 105)), 3, (-np.log([1.0, 9.0])).tolist())
    cut = Scored("cut", list(range(100, 105)), 3, (-np.log([1.0, 9.0])).tolist(), truncated=2)
    res = mask_dataset([ended, cut], "threshold", tau=2.5)
    assert res.truncated == ["cut"]
    assert res.stats["end_of_turn_masked_share"] == 1.0  # 1 of the 1 examples that end in end-of-turn
    only_cut = mask_dataset([cut], "threshold", tau=2.5)
    assert only_cut.stats["end_of_turn_masked_share"] == 0.0


def with_entropy(s: Scored, topk: list[float]) -> Scored:
    return Scored(s.id, s.input_ids, s.response_start, s.logprobs, topk_entropy=topk, entropy=[1.0] * len(topk))


def test_conflict_masks_only_confident_high_ppl_tokens():
    """Confident conflicts: ppl > tau and top-K entropy / log K below the threshold; a subset of STM's mask."""
    data = [with_entropy(DATA[0], [0.9, 0.1, 0.1, 0.6, 0.2]), with_entropy(DATA[1], [0.3, 0.1, 0.9, 0.1])]
    masks = compute_masks(data, "conflict", tau=2.5, conflict_entropy=0.5)
    assert [m.tolist() for m in masks] == [[False, True, False, False, False], [True, False, False, True]]
    stm = compute_masks(data, "threshold", tau=2.5)
    assert all((c <= s).all() for c, s in zip(masks, stm, strict=True))
    res = mask_dataset(data, "conflict", tau=2.5, conflict_entropy=0.7)
    assert res.stats["conflict_entropy"] == 0.7 and res.stats["masked_tokens"] == 4


def test_conflict_needs_entropies_and_a_threshold_in_range():
    with pytest.raises(ValueError, match="example 'a' has no per-token entropies"):
        compute_masks(DATA, "conflict")
    with pytest.raises(ValueError, match="conflict_entropy must be in"):
        compute_masks([with_entropy(DATA[2], [0.1, 0.1])], "conflict", conflict_entropy=0.0)
    bad = with_entropy(DATA[2], [0.1, float("nan")])
    with pytest.raises(Exception, match="entropies"):
        compute_masks([bad], "conflict")


def test_entropy_quadrants_split_every_token_once_and_match_the_conflict_rule(tmp_path):
    from stmkit import analysis, plots

    data = [with_entropy(DATA[0], [0.9, 0.1, 0.1, 0.6, 0.2]), with_entropy(DATA[1], [0.3, 0.1, 0.9, 0.1])]
    q = analysis.entropy_quadrants({"Ground Truth": data}, tau=2.5, conflict_entropy=0.5).iloc[0]
    shares = ["confident_conflict", "uncertain_low_p", "confident_agree", "uncertain_high_p"]
    assert q["tokens"] == 9 and sum(q[c] for c in shares) == pytest.approx(1.0)
    conflicts = sum(int(m.sum()) for m in compute_masks(data, "conflict", tau=2.5, conflict_entropy=0.5))
    assert q["confident_conflict"] == pytest.approx(conflicts / 9) and q["stm_masked"] == pytest.approx(4 / 9)
    fig = plots.probability_entropy_plane({"Ground Truth": data, "Self-Output": data[:1]}, 2.5, 0.5, "t")
    assert len(fig.axes) >= 2 and "confident conflicts" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="Ground Truth: scored without per-token entropies"):
        analysis.entropy_quadrants({"Ground Truth": DATA}, 2.5, 0.5)
