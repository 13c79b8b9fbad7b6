"""Batched generation: equal to one prompt at a time, greedy whatever the model's config says, seeded sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from stmkit.generation import (
    Decoding,
    chat_prompt_ids,
    generate,
    generate_texts,
    greedy,
    sample_texts,
    sampling,
    stop_token_ids,
)
from stmkit.tasks import load

SHORT = ["Say hi.", "What is 2 + 3?", "Write a function to add two numbers."]


@pytest.fixture(scope="module")
def prompts():
    # Different lengths, so batches are left-padded; some answers end their turn, some hit the token limit.
    return [e.prompt for e in load("gsm8k", "test", 4)] + SHORT + [e.prompt for e in load("mbpp", "test", 3)]


def test_batched_greedy_equals_one_at_a_time(tiny, prompts):
    model, tok = tiny
    batched = generate(model, tok, prompts, greedy(24), batch_size=8, progress=False)
    single = generate(model, tok, prompts, greedy(24), batch_size=1, progress=False)
    assert [c[0].token_ids for c in batched] == [c[0].token_ids for c in single]
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    finished = [c[0].finished for c in batched]
    assert any(finished) and not all(finished), "the prompt set should exercise both stop reasons"


def _argmax_loop(model, tok, prompt: str, n: int) -> list[int]:
    """Greedy by hand: full forward each step, no KV cache, argmax of the last position."""
    ids = chat_prompt_ids(tok, prompt)
    stop = set(stop_token_ids(tok))
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
    return out


def test_greedy_is_explicit_even_if_the_model_config_samples(tiny, prompts):
    model, tok = tiny
    expected = [_argmax_loop(model, tok, p, 16) for p in prompts[:4]]
    saved = copy.deepcopy(model.generation_config)
    try:
        # Llama 3's generation_config.json samples (T 0.6, top_p 0.9); the tiny model is too peaked for that to
        # show, so a hot temperature and a repetition penalty stand in: none of it may leak into greedy decoding.
        gc = model.generation_config
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty = True, 3.0, 1.0, 0, 3.0
        got = generate(model, tok, prompts[:4], greedy(16), batch_size=4, progress=False)
    finally:
        model.generation_config = saved
    assert [c[0].token_ids for c in got] == expected


def test_completions_stop_at_end_of_turn(tiny, prompts):
    model, tok = tiny
    done = [c[0] for c in generate(model, tok, prompts, greedy(24), progress=False) if c[0].finished]
    assert done
    for c in done:
        assert len(c.token_ids) < 24 and "<|im_end|>" not in c.text
        assert all(t not in stop_token_ids(tok) for t in c.token_ids)
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny):
    model, tok = tiny
    state = torch.get_rng_state()
    a = sample_texts(model, tok, SHORT, sampling(3, max_new_tokens=12, seed=1), progress=False)
    b = sample_texts(model, tok, SHORT, sampling(3, max_new_tokens=12, seed=1), progress=False)
    c = sample_texts(model, tok, SHORT, sampling(3, max_new_tokens=12, seed=2), progress=False)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and a != c
    assert [len(x) for x in a] == [3, 3, 3]


def test_chat_message_lists_and_text_helper(tiny):
    model, tok = tiny
    as_text = generate_texts(model, tok, ["Say hi."], 8, progress=False)
    as_chat = generate_texts(model, tok, [[{"role": "user", "content": "Say hi."}]], 8, progress=False)
    assert as_text == as_chat


def test_decoding_settings_are_validated():
    with pytest.raises(ValueError, match="needs do_sample=True"):
        Decoding(num_samples=4)
    with pytest.raises(ValueError, match="temperature > 0"):
        sampling(2, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy(0)
    assert "temperature" not in greedy(8).key() and sampling(2).key()["temperature"] == 0.7


def test_a_bare_string_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="wrap it"):
        generate(model, tok, "Say hi.")


def test_static_and_dynamic_kv_cache_give_the_same_greedy_answers(tiny, prompts):
    model, tok = tiny
    static = generate(model, tok, prompts, greedy(24), batch_size=8, progress=False, kv_cache="static")
    dynamic = generate(model, tok, prompts, greedy(24), batch_size=8, progress=False, kv_cache="dynamic")
    assert [c[0].token_ids for c in static] == [c[0].token_ids for c in dynamic]
    with pytest.raises(ValueError, match="kv_cache='paged'"):
        generate(model, tok, prompts, greedy(4), progress=False, kv_cache="paged")
