"""Multiple choice by log-likelihood: option sums equal a manual forward, the shared context cache equals separate
rows, and a non-finite score is refused naming the item."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from stmkit.loglik import loglik_choices
from stmkit.numerics import NonFiniteError
from stmkit.tasks import get_task, load


def test_loglik_equals_a_manual_forward(tiny):
    model, tok = tiny
    ctx, option = "Question: What is 2 + 3?\nAnswer:", "five"
    (lp,) = loglik_choices(model, tok, [ctx], [[option]], progress=False)
    c = tok(ctx)["input_ids"]
    o = tok(" " + option, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([c + o])).logits[0].float()
    manual = sum(torch.log_softmax(logits[len(c) - 1 + k], -1)[t].item() for k, t in enumerate(o))
    assert lp[0] == pytest.approx(manual, abs=1e-4)


@pytest.mark.parametrize("task", ["arc_easy", "sciq", "piqa"])
def test_shared_context_cache_equals_separate_rows(tiny, task):
    model, tok = tiny
    items = load(task, "test", 5)
    contexts = [get_task(task).loglik_context(ex) for ex in items]
    kw = {"batch_size": 3, "progress": False}
    shared = loglik_choices(model, tok, contexts, [ex.choices for ex in items], share_context=True, **kw)
    rows = loglik_choices(model, tok, contexts, [ex.choices for ex in items], share_context=False, **kw)
    assert np.allclose(np.concatenate(shared), np.concatenate(rows), atol=1e-4)


def test_non_finite_option_scores_are_refused_naming_the_item(tiny):
    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    for share in (True, False):
        with pytest.raises(NonFiniteError, match="item 0"):
            loglik_choices(broken, tok, ["Q: a?", "Q: b?"], [["x", "y"], ["z"]], share_context=share, progress=False)
