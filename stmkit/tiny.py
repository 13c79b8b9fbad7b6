"""A tiny Llama-architecture chat model built locally (no downloads): for tests and the smoke profile.

It has a byte-level BPE tokenizer trained on the embedded benchmark text, a ChatML chat template like SmolLM2's,
and is briefly trained on chat-formatted benchmark answers so that its token perplexities vary (a random model
would find every token equally surprising). Deterministic: the same inputs build the same model.
"""

from __future__ import annotations

from pathlib import Path

from .cache import atomic_dir, verify_dir
from .tasks.registry import get_task

TINY_VERSION = 2
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Chat-formatted prompts and answers from the embedded MBPP and GSM8K items, plus ARC questions."""
    texts = []
    for name in ("mbpp", "gsm8k"):
        for ex in get_task(name).embedded()[:300]:
            texts.append(
                f"<|im_start|>user\n{ex.prompt}<|im_end|>\n<|im_start|>assistant\n{ex.response}<|im_end|>\n"
            )
    return texts


def _train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def pretrain(model, tok, texts: list[str], steps: int = 120, seq: int = 128, batch: int = 8) -> None:
    """A few hundred thousand tokens of next-token training so the model is not uniform."""
    import torch

    ids = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]]
    data = torch.tensor(ids[: (len(ids) // seq) * seq]).view(-1, seq)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_tiny_model(dest: Path) -> Path:
    """Build the tiny model and tokenizer into dest (atomically)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    texts = _corpus()
    tok = _train_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pretrain(model, tok, texts)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    with atomic_dir(dest, meta={"tiny_version": TINY_VERSION}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return dest


def ensure_tiny_model(models_dir: Path) -> Path:
    """The tiny model's folder under models_dir, built on first use."""
    dest = Path(models_dir) / f"tiny-llama-v{TINY_VERSION}"
    if not dest.is_dir():
        build_tiny_model(dest)
    verify_dir(dest)
    return dest
