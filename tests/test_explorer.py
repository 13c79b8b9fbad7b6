"""The tau explorer: exact stops, the same masked share as training, infinity masks nothing, a static view kept."""

from __future__ import annotations

import numpy as np

from stmkit import explorer, masking
from stmkit.scoring import Scored

SCORED = [
    Scored("a", list(range(10)), 5, (-np.log([1.0, 3.0, 1.2, 900.0, 1.01])).tolist()),
    Scored("b", list(range(8)), 4, (-np.log([2.6, 1.0, 2000.0, 1.5])).tolist()),
]


def test_the_paper_values_are_exact_stops_and_infinity_is_the_last():
    for tau in (1.5, 2.0, 2.5, 3.0, 5.0, 10.0):
        assert tau in explorer.TAU_STOPS
    assert explorer.TAU_STOPS[-1] == float("inf")


def test_the_share_shown_is_the_share_training_masks():
    for tau in (1.5, 2.5, 1000.0):
        masked, total = explorer.masked_counts(SCORED, tau)
        stats = masking.mask_dataset(SCORED, "threshold", tau).stats
        assert (masked, total) == (stats["masked_tokens"], stats["response_tokens"])
    assert "1000" in explorer.summary_html(SCORED, 0, 1000.0) and explorer.masked_counts(SCORED, 1000.0)[0] == 1
    assert explorer.masked_counts(SCORED, float("inf"))[0] == 0
    assert "no token is masked" in explorer.summary_html(SCORED, 0, float("inf"))


def test_batch_runs_get_the_static_view(monkeypatch, tiny):
    _, tok = tiny
    monkeypatch.setenv("STMKIT_BATCH", "1")
    view = explorer.explorer(SCORED, tok, 2.5)
    assert "Static view" in view.data and "tau = <b>2.5</b>" in view.data


def test_figure_3_picks_a_problem_every_source_has():
    from stmkit.analysis import shared_problem

    def s(i):
        return Scored(i, [0, 1], 1, [-0.1])

    sources = {"Ground Truth": [s("13"), s("14"), s("15")], "Self-Output": [s("15"), s("14")], "Rephrase": [s("14")]}
    assert shared_problem(sources, "13") == ("14", "")
    assert shared_problem(sources, "14") == ("14", "")
    none = {"Ground Truth": [s("1"), s("2")], "Self-Output": [s("2")], "Rephrase": [s("1")]}
    pid, note = shared_problem(none, "1")
    assert pid == "1" and "no problem is in all 3 sources" in note
    assert shared_problem({"Ground Truth": [s("1")], "Self-Output": []}, "1") == ("1", "")


def test_the_entropy_gate_shows_conflict_masking_with_trainings_rule(monkeypatch, tiny):
    _, tok = tiny
    gated = [Scored(s.id, s.input_ids, s.response_start, s.logprobs, topk_entropy=h, entropy=[1.0] * len(h))
             for s, h in zip(SCORED, ([0.9, 0.2, 0.2, 0.1, 0.9], [0.1, 0.9, 0.8, 0.2]), strict=True)]
    masked, total = explorer.masked_counts(gated, 2.5, 0.5)
    stats = masking.mask_dataset(gated, "conflict", 2.5, conflict_entropy=0.5).stats
    assert (masked, total) == (stats["masked_tokens"], stats["response_tokens"]) == (3, 9)
    assert "predicted confidently" in explorer.summary_html(gated, 0, 2.5, 0.5)
    from stmkit.plots import tokens_html

    html = tokens_html(gated[0], tok, 2.5, 0.5)
    assert html.count("text-decoration:underline") == 2 and "top-20 entropy 0.10" in html
    # the second example: STM masks PPL 2.6 and 2000; only the first was predicted confidently
    assert tokens_html(gated[1], tok, 2.5).count("text-decoration:underline") == 2
    assert tokens_html(gated[1], tok, 2.5, 0.5).count("text-decoration:underline") == 1


def test_the_live_explorer_builds_with_and_without_the_entropy_gate(monkeypatch, tiny):
    _, tok = tiny
    monkeypatch.delenv("STMKIT_BATCH", raising=False)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    plain = explorer.explorer(SCORED, tok, 2.5)
    assert len(plain.children[0].children) == 2  # tau slider and example picker: no entropies, no gate
    gated = [Scored(s.id, s.input_ids, s.response_start, s.logprobs, topk_entropy=[0.1] * len(s.logprobs),
                    entropy=[0.5] * len(s.logprobs)) for s in SCORED]
    view = explorer.explorer(gated, tok, 2.5)
    slider, _, gate = view.children[0].children
    html = view.children[1]
    assert "STM masks tokens" in html.value
    gate.value = 0.5
    assert "predicted confidently" in html.value
    slider.value = 1000.0
    assert "1000" in html.value
