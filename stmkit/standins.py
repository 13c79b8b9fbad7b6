"""Architecture-faithful stand-ins for the paper's model families, built locally (no downloads): rehearse the paper
path on CPU before anyone pays for a GPU hour.

Each stand-in uses transformers' own config and model class for its family, a few layers and a small width, a
byte-level BPE tokenizer trained on the embedded benchmark text with the family's special tokens, and a chat
template written from the released model's public behaviour on the points that break pipelines:

- ``tiny-gemma2`` (Gemma 2): ``<start_of_turn>``/``<end_of_turn>``, assistant turns named ``model``, BOS in the
  template, **no system role** (raises, as the released template does), strict user/model alternation; logit
  soft-capping (final and attention), alternating sliding-window and full attention layers, tied embeddings.
- ``tiny-llama3`` (Llama 3): header tokens, ``<|eot_id|>`` as end of turn, BOS in the template, **no pad token**;
  llama3 rope scaling, untied embeddings.
- ``tiny-mistral`` (Mistral): ``[INST] ... [/INST]``, the answer closed by ``</s>``, **strict user/assistant
  alternation and no system role** (raises); sliding-window attention config.
- ``tiny-olmo2`` (OLMo 2): ``<|user|>``/``<|assistant|>`` turn markers, ``<|endoftext|>`` ends an answer;
  OLMo 2's norm placement (post-norm with QK-norm).

Weights are random apart from a few dozen steps of next-token training on chat-formatted benchmark answers (so
token perplexities vary). **Numbers from stand-ins mean nothing**: they exist to exercise the paper path.
Deterministic: the same inputs build the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import atomic_dir, verify_dir
from .tasks.registry import get_task
from .tiny import pretrain

STANDIN_VERSION = 1

GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)
OLMO2_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """One paper model family's stand-in: its tokens, chat template and transformers config."""

    name: str
    paper_model: str  # the registry name of the released model it stands in for
    template: str
    bos: str
    eos: str  # the tokenizer's eos_token (Llama 3 Instruct: <|eot_id|>)
    pad: str | None  # None: the tokenizer has no pad token, as the released one
    unk: str | None
    extra: tuple[str, ...] = ()  # more special tokens (turn markers)
    config: dict[str, Any] = field(default_factory=dict)
    config_class: str = ""
    model_class: str = ""


_COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2}

FAMILIES = {
    f.name: f
    for f in [
        Family("tiny-gemma2", "gemma-2-2b-it", GEMMA2_TEMPLATE, "<bos>", "<eos>", "<pad>", "<unk>",
               ("<start_of_turn>", "<end_of_turn>"),
               {**_COMMON, "head_dim": 16, "sliding_window": 64, "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 16, "tie_word_embeddings": True,
                "max_position_embeddings": 2048},
               "Gemma2Config", "Gemma2ForCausalLM"),
        Family("tiny-llama3", "llama-3-8b-instruct", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", None, None,
               ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
               {**_COMMON, "rope_theta": 500000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 512}},
               "LlamaConfig", "LlamaForCausalLM"),
        Family("tiny-mistral", "mistral-7b-instruct", MISTRAL_TEMPLATE, "<s>", "</s>", None, "<unk>",
               ("[INST]", "[/INST]"),
               {**_COMMON, "sliding_window": 4096, "max_position_embeddings": 4096, "tie_word_embeddings": False},
               "MistralConfig", "MistralForCausalLM"),
        Family("tiny-olmo2", "olmo-2-7b-instruct", OLMO2_TEMPLATE, "<|endoftext|>", "<|endoftext|>", "<|pad|>", None,
               ("<|system|>", "<|user|>", "<|assistant|>"),
               {**_COMMON, "max_position_embeddings": 4096, "tie_word_embeddings": False},
               "Olmo2Config", "Olmo2ForCausalLM"),
    ]
}


def _tokenizer(family: Family, texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = list(dict.fromkeys(t for t in (family.bos, family.eos, family.pad, family.unk, *family.extra) if t))
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=768, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=family.bos, eos_token=family.eos,
                                  pad_token=family.pad, unk_token=family.unk,
                                  additional_special_tokens=list(family.extra))
    tok.chat_template = family.template
    return tok


def _chat_texts(tok: Any) -> list[str]:
    """MBPP and GSM8K answers in the family's own chat format (what the stand-in briefly learns)."""
    texts = []
    for name in ("mbpp", "gsm8k"):
        for ex in get_task(name).embedded()[:150]:
            texts.append(tok.apply_chat_template([{"role": "user", "content": ex.prompt},
                                                  {"role": "assistant", "content": ex.response}], tokenize=False))
    return texts


def build_standin(name: str, dest: Path) -> Path:
    """Build one stand-in (model + tokenizer + chat template) into dest, atomically."""
    import torch
    import transformers
    from transformers import GenerationConfig

    family = FAMILIES[name]
    plain = [f"{ex}" for ex in _raw_corpus()]
    tok = _tokenizer(family, plain)
    tok = _tokenizer(family, plain + _chat_texts(tok))  # second pass: the turn markers' surroundings merge too
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in (("bos", family.bos), ("eos", family.eos))}
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tok), bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        pad_token_id=tok.pad_token_id, **family.config)
    torch.manual_seed(0)
    model = getattr(transformers, family.model_class)(config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pretrain(model, tok, _chat_texts(tok), steps=60)
    model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                                               pad_token_id=tok.pad_token_id)
    with atomic_dir(dest, meta={"standin_version": STANDIN_VERSION, "family": name}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return dest


def _raw_corpus() -> list[str]:
    return [f"{ex.prompt}\n{ex.response}" for name in ("mbpp", "gsm8k") for ex in get_task(name).embedded()[:150]]


def ensure_standin(name: str, models_dir: Path) -> Path:
    """The stand-in's folder under models_dir, built on first use and verified by content."""
    if name not in FAMILIES:
        raise KeyError(f"no stand-in named {name!r}; stand-ins: {', '.join(FAMILIES)}")
    dest = Path(models_dir) / f"{name}-v{STANDIN_VERSION}"
    if not dest.is_dir():
        build_standin(name, dest)
    verify_dir(dest)
    return dest
