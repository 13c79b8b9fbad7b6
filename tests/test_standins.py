"""Stand-ins of the paper's families: their architectures, and chat templates that behave like the released ones."""

from __future__ import annotations

import pytest
import torch

from stmkit.models import load_model
from stmkit.scoring import end_of_turn, render

USER = {"role": "user", "content": "Write a function."}
ANSWER = {"role": "assistant", "content": "def f(): pass"}
SYSTEM = {"role": "system", "content": "Be brief."}

EXPECTED = {  # family: (end-of-turn token, architecture check)
    "tiny-gemma2": ("<end_of_turn>", lambda c: c.final_logit_softcapping == 30.0 and c.attn_logit_softcapping == 50.0
                    and "sliding_attention" in c.layer_types and c.tie_word_embeddings),
    "tiny-llama3": ("<|eot_id|>", lambda c: c.rope_parameters["rope_type"] == "llama3" and not c.tie_word_embeddings),
    "tiny-mistral": ("</s>", lambda c: c.model_type == "mistral" and c.sliding_window == 4096),
    "tiny-olmo2": ("<|endoftext|>", lambda c: c.model_type == "olmo2"),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def standin(request):
    model, tok = load_model(request.param)
    return request.param, model, tok


def test_architecture_and_end_of_turn(standin):
    name, model, tok = standin
    eot, arch = EXPECTED[name]
    assert arch(model.config), model.config
    assert end_of_turn(tok) == eot
    r = render(tok, "Write a function.", "def f(): pass")
    assert tok.convert_ids_to_tokens(r.input_ids[-1]) == eot  # training's rendering ends in the real end of turn
    assert tok.decode(r.input_ids[: r.response_start]).startswith(tok.bos_token)  # BOS from the template, once
    assert r.input_ids.count(tok.bos_token_id) == 1 or name == "tiny-olmo2"  # OLMo 2: BOS == EOS token
    with torch.inference_mode():
        logits = model(torch.tensor([r.input_ids])).logits
    assert torch.isfinite(logits).all()


def test_templates_raise_where_the_released_ones_raise(standin):
    name, _, tok = standin
    if name == "tiny-gemma2":
        with pytest.raises(Exception, match="System role not supported"):
            tok.apply_chat_template([SYSTEM, USER], tokenize=False)
        assert "<start_of_turn>model\n" in tok.apply_chat_template([USER, ANSWER], tokenize=False)
    if name == "tiny-mistral":
        with pytest.raises(Exception, match="must alternate"):
            tok.apply_chat_template([USER, USER], tokenize=False)
        with pytest.raises(Exception, match="alternate|Only user and assistant"):
            tok.apply_chat_template([SYSTEM, USER], tokenize=False)
        assert tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True).endswith("[/INST]")
    if name == "tiny-llama3":
        from transformers import AutoTokenizer

        from stmkit.models import resolve

        assert AutoTokenizer.from_pretrained(resolve(name)).pad_token is None  # as released: no pad token...
        assert tok.pad_token is not None  # ...and the kit's loader supplies one
        assert "<|start_header_id|>system<|end_header_id|>" in tok.apply_chat_template([SYSTEM, USER], tokenize=False)
    if name == "tiny-olmo2":
        text = tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|user|>\nWrite a function.\n<|assistant|>\n")
