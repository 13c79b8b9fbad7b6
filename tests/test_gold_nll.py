"""Gold-answer NLL: per item, teacher-forced after the chat prompt, end-of-turn excluded, cached, paired by item."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmkit import gold_nll
from stmkit.cache import Cache
from stmkit.generation import chat_prompt_ids


def test_items_carry_the_chat_prompt_and_the_reference_answer_without_end_of_turn(tiny):
    _, tok = tiny
    items = gold_nll.gold_items(tok, "arc_easy", 5)
    assert len(items) == 5 and {it.task for it in items} == {"arc_easy"}
    from stmkit.tasks import load

    ex = load("arc_easy", "test", 5, "embedded")[0]
    lead = tok(gold_nll.MC_LEAD, add_special_tokens=False)["input_ids"]
    assert list(items[0].prompt_ids) == chat_prompt_ids(tok, ex.prompt) + lead  # "The answer is" joins the prompt
    assert tok.decode(items[0].answer_ids).strip() == ex.answer  # the gold letter alone is scored
    gsm = gold_nll.gold_items(tok, "gsm8k", 2)
    ref = load("gsm8k", "test", 2, "embedded")[0]
    assert tok.decode(gsm[0].answer_ids) == ref.response  # free-form: the whole reference, no end-of-turn


def test_nll_is_the_mean_over_answer_tokens_and_is_cached(tiny, tmp_path):
    model, tok = tiny
    items = gold_nll.gold_items(tok, "gsm8k", 3)
    cache = Cache(tmp_path)
    nll = gold_nll.gold_nll(model, tok, items, fingerprint="tiny", cache=cache, progress=False)
    it = items[1]
    ids = torch.tensor([[*it.prompt_ids, *it.answer_ids]])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
    start = len(it.prompt_ids)
    by_hand = -np.mean([logp[start + j - 1, t].item() for j, t in enumerate(it.answer_ids)])
    assert nll[it.id] == pytest.approx(by_hand, abs=1e-4)
    again = gold_nll.gold_nll(None, tok, items, fingerprint="tiny", cache=cache, progress=False)  # from the cache
    assert again == nll


def test_rise_pairs_items_and_refuses_different_ones():
    assert gold_nll.nll_rise({"a": 2.0, "b": 1.0}, {"a": 1.5, "b": 1.5}) == {"a": 0.5, "b": -0.5}
    with pytest.raises(ValueError, match="different items"):
        gold_nll.nll_rise({"a": 1.0}, {"b": 1.0})


def test_bf16_autocast_is_cached_apart_and_agrees_with_fp32(tiny, tmp_path):
    model, tok = tiny
    items = gold_nll.gold_items(tok, "gsm8k", 3)
    cache = Cache(tmp_path)
    fp32 = gold_nll.gold_nll(model, tok, items, fingerprint="tiny", cache=cache, progress=False)
    bf16 = gold_nll.gold_nll(model, tok, items, fingerprint="tiny", cache=cache, progress=False,
                             mixed_precision="bf16")
    assert bf16 != fp32  # computed, not the fp32 entry read back
    assert bf16 == pytest.approx(fp32, abs=0.05)
    with pytest.raises(ValueError, match="mixed_precision"):
        gold_nll.gold_nll(model, tok, items, fingerprint="tiny", cache=cache, progress=False, mixed_precision="fp16")
