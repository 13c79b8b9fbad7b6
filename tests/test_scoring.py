"""Token scoring: aligned to training input_ids, equal to the model's own loss, invariant to batching and padding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from stmkit.cache import Cache
from stmkit.scoring import (
    end_of_turn,
    length_sorted_batches,
    render,
    render_examples,
    score_examples,
    score_rendered,
)

EXAMPLES = [
    {"id": "a", "prompt": "Write a function to add two numbers.", "response": "def add(a, b):\n    return a + b"},
    {"id": "b", "prompt": "What is 2 + 3?", "response": "2 + 3 = 5\n#### 5"},
    {"id": "c", "prompt": "Say hello.", "response": "Hello!"},
    {"id": "d", "prompt": "List three colours." * 3, "response": "red, green and blue, and also a long tail " * 4},
]


def test_render_puts_the_response_after_the_generation_prompt(tiny):
    _, tok = tiny
    r = render(tok, "Say hello.", "Hello!", "x")
    prompt_text = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                          tokenize=False)
    assert tok.decode(r.input_ids[: r.response_start]) == prompt_text
    assert tok.decode(r.input_ids[r.response_start:]) == "Hello!" + end_of_turn(tok)
    assert end_of_turn(tok) == "<|im_end|>"


def test_truncation_counts_cut_tokens_and_refuses_prompt_only(tiny):
    _, tok = tiny
    full = render(tok, "Say hello.", "Hello there, how are you today?", "x")
    cut = render(tok, "Say hello.", "Hello there, how are you today?", "x", max_length=full.response_start + 2)
    assert cut.n_response == 2 and cut.truncated == full.n_response - 2
    with pytest.raises(ValueError, match="prompt alone"):
        render(tok, "Say hello." * 50, "Hi", "x", max_length=8)


@pytest.mark.parametrize("fixture", ["tiny", pytest.param("smol", marks=pytest.mark.slow)])
def test_mean_nll_equals_the_models_own_loss(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    rendered = render_examples(tok, EXAMPLES)
    scored = score_rendered(model, rendered, tok.pad_token_id, batch_size=4, progress=False)
    for r, s in zip(rendered, scored, strict=True):
        ids = torch.tensor([r.input_ids])
        labels = ids.clone()
        labels[0, : r.response_start] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert s.mean_nll == pytest.approx(loss, abs=1e-5)
        assert len(s.logprobs) == r.n_response and s.seq_ppl == pytest.approx(np.exp(loss), rel=1e-4)


def test_scores_do_not_change_with_batch_size_or_padding_side(tiny):
    model, tok = tiny
    rendered = render_examples(tok, EXAMPLES)
    one = score_rendered(model, rendered, tok.pad_token_id, batch_size=1, progress=False)
    for bs in (2, 4):
        for side in ("right", "left"):
            other = score_rendered(model, rendered, tok.pad_token_id, batch_size=bs, progress=False, padding_side=side)
            for a, b in zip(one, other, strict=True):
                assert a.id == b.id
                np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_batches_are_length_sorted_and_capped():
    lengths = [5, 50, 10, 49, 11, 6]
    batches = length_sorted_batches(lengths, batch_size=2, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [lengths[b[0]] for b in batches] == [50, 11, 6]
    capped = length_sorted_batches(lengths, batch_size=8, max_tokens=60)
    assert all(lengths[b[0]] * len(b) <= 60 for b in capped)


def test_score_examples_is_cached_by_content(tiny, tmp_path):
    model, tok = tiny
    cache = Cache(tmp_path)
    first, key = score_examples(model, tok, EXAMPLES, model_fingerprint="fp", cache=cache, progress=False)
    again, key2 = score_examples(model, tok, EXAMPLES, model_fingerprint="fp", cache=cache, progress=False)
    assert key == key2 and [s.logprobs for s in first] == [s.logprobs for s in again]
    changed = [dict(EXAMPLES[0], response="def add(a, b): return b + a")] + EXAMPLES[1:]
    _, key3 = score_examples(model, tok, changed, model_fingerprint="fp", cache=cache, progress=False)
    _, key4 = score_examples(model, tok, EXAMPLES, model_fingerprint="other", cache=cache, progress=False)
    assert len({key, key3, key4}) == 3


def test_empty_response_is_refused_with_its_id(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="'z' has an empty response"):
        render_examples(tok, [{"id": "z", "prompt": "p", "response": ""}])


def _poisoned(model):
    """A copy of the model whose final norm is NaN: every log-prob it gives is NaN (as corrupted weights did)."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.model.norm.weight.fill_(float("nan"))
    return bad


def test_non_finite_logprobs_are_refused_with_the_example_and_never_cached(tiny, tmp_path):
    from stmkit.numerics import NonFiniteError

    model, tok = tiny
    with pytest.raises(NonFiniteError, match=r"example 'a' \(index 0\)"):
        score_rendered(_poisoned(model), render_examples(tok, EXAMPLES), tok.pad_token_id, progress=False)
    cache = Cache(tmp_path)
    with pytest.raises(NonFiniteError, match="example 'a'"):
        score_examples(_poisoned(model), tok, EXAMPLES, model_fingerprint="fp", cache=cache, progress=False)
    assert not (tmp_path / "scores").exists() or not any((tmp_path / "scores").iterdir())


def test_entropies_are_recorded_from_the_same_forward_pass(tiny, tmp_path):
    """Full-vocabulary entropy (nats) and top-20 entropy / log 20 of each response token's predictive distribution,
    checked against the model's own logits; score_examples records them, evaluation's log-likelihoods do not."""
    model, tok = tiny
    scored, _ = score_examples(model, tok, EXAMPLES[:2], model_fingerprint="fp", cache=Cache(tmp_path),
                               progress=False)
    plain = score_rendered(model, render_examples(tok, EXAMPLES[:2]), tok.pad_token_id, progress=False)
    assert plain[0].entropy == [] and plain[0].topk_entropy == []
    for s in scored:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.input_ids])).logits[0].double()
        rows = logits[s.response_start - 1 : len(s.input_ids) - 1]
        p = torch.softmax(rows, -1)
        full = -(p * torch.log_softmax(rows, -1)).sum(-1)
        top = torch.softmax(torch.sort(rows, -1, descending=True).values[:, :20], -1)
        norm = -(top * top.log()).sum(-1) / np.log(20)
        np.testing.assert_allclose(s.entropy, full.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.topk_entropy, norm.numpy(), rtol=1e-4, atol=1e-5)
        assert len(s.entropy) == len(s.logprobs) and all(0.0 <= h <= 1.0 + 1e-9 for h in s.topk_entropy)
