"""Batched generation from chat prompts: greedy (evaluation) and seeded sampling (Self-Output, Rephrase).

Prompts are user messages rendered with the model's chat template (the generation prompt appended), exactly as
``stmkit.scoring.render`` renders them for scoring and training. Prompts are grouped into length-sorted batches,
left-padded, and decoded with the KV cache (on CPU a static, preallocated one: the dynamic cache re-copies itself
every step; measured on cpu-demo's 32 MBPP prompts, 70.7 s instead of 87.8 s, identical greedy answers; see
``benchmarks/bench_generation.py``); a sequence stops at the chat template's end-of-turn token
(``stmkit.scoring.end_of_turn``) or the tokenizer's EOS.

**Greedy is set explicitly.** Every decoding setting that matters (``do_sample``, ``num_beams``, ``temperature``,
``top_p``, ``top_k``, ``repetition_penalty``, ...) is passed to ``generate`` so that the model's own
``generation_config.json`` cannot change it. The reference implementation passed only ``max_new_tokens`` and so
silently *sampled* for Llama 3 8B Instruct (its generation config sets ``do_sample: true``, temperature 0.6, top_p
0.9) while the paper says greedy; see the docstring of ``stmkit.tasks.prompts``.

Greedy outputs do not depend on batching (a test checks batched == one prompt at a time on the tiny model; in
low precision on GPU, padding can still flip a near-tie). Sampled outputs depend on the seed and on how the
prompts fall into batches: the same call with the same settings gives the same samples.

``VLLMEngine`` is an optional backend (GPU, when ``vllm`` is installed): pass it in place of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .lm import pad as _pad
from .progress import bar as progress_bar
from .scoring import end_of_turn, length_sorted_batches

GENERATION_VERSION = 2  # 2: static KV cache on CPU
Prompt = str | Sequence[dict[str, str]]  # a user message, or a whole chat (list of {"role", "content"})


@dataclass(frozen=True)
class Decoding:
    """Decoding settings. The default is greedy (the paper's evaluation); sampling needs do_sample=True."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1  # completions per prompt (sampling only; greedy ones would all be equal)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be >= 1")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples!r} must be >= 1")
        if self.num_samples > 1 and not self.do_sample:
            raise ValueError(
                f"num_samples={self.num_samples} needs do_sample=True: greedy completions are identical"
            )
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(
                f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}; "
                "for greedy decoding set do_sample=False"
            )

    def key(self) -> dict[str, Any]:
        """The settings that determine the output (for cache keys); sampling-only fields dropped when greedy."""
        d = asdict(self)
        if not self.do_sample:
            for k in ("temperature", "top_p", "num_samples", "seed"):
                d.pop(k)
        return d


@dataclass
class Completion:
    """One generated answer: text (special tokens removed), its token ids, and whether it ended the turn."""

    text: str
    token_ids: list[int] = field(default_factory=list)  # generated tokens, without the stop token
    finished: bool = True  # False: cut at max_new_tokens


def greedy(max_new_tokens: int = 256) -> Decoding:
    """Greedy decoding settings."""
    return Decoding(max_new_tokens=max_new_tokens)


def sampling(
    n: int, temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 256, seed: int = 0
) -> Decoding:
    """Sampling settings: n completions per prompt (the paper's Self-Output: 32 at T=0.7, top_p=0.95)."""
    return Decoding(max_new_tokens, True, temperature, top_p, n, seed)


def chat_prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt in the chat template, generation prompt appended (as scoring.render renders it)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The chat template's end-of-turn token, then EOS if different (Llama 3: <|eot_id|>, <|end_of_text|>)."""
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def hf_generation_config(decoding: Decoding, stop_ids: Sequence[int], pad_id: int) -> Any:
    """A transformers GenerationConfig with every decoding knob set: the model's own defaults cannot leak in."""
    from transformers import GenerationConfig

    explicit: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": decoding.do_sample,
        "num_beams": 1,
        "num_return_sequences": decoding.num_samples,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "length_penalty": 1.0,
        "eos_token_id": list(stop_ids),
        "pad_token_id": pad_id,
        "use_cache": True,
    }
    if decoding.do_sample:
        # top_k 0 disables top-k filtering (transformers' default would silently apply top_k=50).
        # min_p/epsilon/eta 0 switch those filters off rather than leaving them for the model's config to fill.
        explicit.update(
            temperature=decoding.temperature, top_p=decoding.top_p, top_k=0, typical_p=1.0, min_p=0.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0,
        )  # fmt: skip
    else:
        # Neutral values: with do_sample=False they are unused, but set so a model's config cannot supply others.
        explicit.update(temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0)
    return GenerationConfig(**explicit)


def _pad_left(rows: Sequence[Sequence[int]], pad_id: int):
    return _pad(rows, pad_id, side="left")


def _finish(ids: Sequence[int], stop: set[int], tokenizer: Any) -> Completion:
    """Cut generated ids at the first stop token and decode them."""
    ids = list(ids)
    end = next((i for i, t in enumerate(ids) if t in stop), None)
    kept = ids if end is None else ids[:end]
    return Completion(tokenizer.decode(kept, skip_special_tokens=True), kept, finished=end is not None)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    decoding: Decoding | None = None,
    *,
    batch_size: int = 8,
    max_tokens_per_batch: int = 32768,
    progress: bool = True,
    desc: str = "generating",
    kv_cache: str = "auto",
) -> list[list[Completion]]:
    """Completions for each prompt (decoding.num_samples each), in input order; greedy unless decoding samples.

    Batches hold at most batch_size sequences (prompts x samples) and max_tokens_per_batch padded tokens
    (prompt + max_new_tokens), longest prompts first, so an out-of-memory error shows up in the first batch.
    kv_cache: "auto" (static on CPU, transformers' default elsewhere), "static" or "dynamic".
    """
    if kv_cache not in ("auto", "static", "dynamic"):
        raise ValueError(f"kv_cache={kv_cache!r} must be 'auto', 'static' or 'dynamic'")
    decoding = decoding or Decoding()
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts, not a single string; wrap it: [prompt]")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if isinstance(model, VLLMEngine):
        return model.generate(
            [chat_prompt_ids(tokenizer, p) for p in prompts], decoding, stop_token_ids(tokenizer)
        )
    if not prompts:
        return []
    import torch

    stop = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = hf_generation_config(decoding, stop, pad_id)
    encoded = [chat_prompt_ids(tokenizer, p) for p in prompts]
    per_batch = max(1, batch_size // decoding.num_samples)
    lengths = [len(ids) + decoding.max_new_tokens for ids in encoded]
    batches = length_sorted_batches(lengths, per_batch, max(max_tokens_per_batch // decoding.num_samples, 1))
    device = next(model.parameters()).device
    if kv_cache == "static" or (kv_cache == "auto" and device.type == "cpu"):
        config.cache_implementation = "static"  # see the module docstring; GPUs keep transformers' default
    results: list[list[Completion] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    # Seeded sampling without disturbing the caller's random state.
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(decoding.seed)
            if device.type == "cuda":
                torch.cuda.manual_seed_all(decoding.seed)
            bar = progress_bar(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
            for batch in batches:
                ids, mask = _pad_left([encoded[i] for i in batch], pad_id)
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
                new = out[:, ids.shape[1] :].tolist()
                for j, i in enumerate(batch):
                    rows = new[j * decoding.num_samples : (j + 1) * decoding.num_samples]
                    results[i] = [_finish(r, set(stop), tokenizer) for r in rows]
                bar.update(len(batch))
            bar.close()
    finally:
        model.train(was_training)
    assert all(r is not None for r in results)  # every prompt sits in exactly one batch
    return results  # type: ignore[return-value]


def generate_texts(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int = 256, **kw: Any
) -> list[str]:
    """Greedy answers to each prompt, as text."""
    return [c[0].text for c in generate(model, tokenizer, prompts, greedy(max_new_tokens), **kw)]


def sample_texts(model: Any, tokenizer: Any, prompts: Sequence[Prompt], decoding: Decoding, **kw: Any) -> list[list[str]]:
    """decoding.num_samples sampled answers to each prompt, as text (seeded by decoding.seed)."""
    if not decoding.do_sample:
        raise ValueError("sample_texts needs a sampling Decoding (generation.sampling(...)); for greedy answers use "
                         "generate_texts")
    return [[c.text for c in cs] for cs in generate(model, tokenizer, prompts, decoding, **kw)]


class VLLMEngine:
    """vLLM behind generate(): build it once (GPU) and pass it as the model; LoRA adapters via adapter_dir.

    A thin adapter, not exercised by the CPU test suite. Greedy maps to temperature 0; stop tokens and
    max_new_tokens as with transformers. Log-likelihood evaluation and drift still need the transformers model.
    """

    def __init__(self, model: str, adapter_dir: str | None = None, seed: int = 0, **llm_kwargs: Any):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "VLLMEngine needs vllm (GPU only): `pip install vllm`, or generate with the transformers model"
            ) from exc
        if adapter_dir is not None:
            llm_kwargs.setdefault("enable_lora", True)
        self.llm = LLM(model=str(model), seed=seed, **llm_kwargs)
        self.adapter_dir = adapter_dir

    def generate(
        self, prompt_ids: Sequence[list[int]], decoding: Decoding, stop_ids: Sequence[int]
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=decoding.num_samples,
            temperature=decoding.temperature if decoding.do_sample else 0.0,
            top_p=decoding.top_p if decoding.do_sample else 1.0,
            top_k=-1,
            max_tokens=decoding.max_new_tokens,
            seed=decoding.seed if decoding.do_sample else None,
            stop_token_ids=list(stop_ids),
            skip_special_tokens=True,
        )
        lora = None
        if self.adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, str(self.adapter_dir))
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outs = self.llm.generate(prompts, params, lora_request=lora)
        return [
            [
                Completion(o.text, [t for t in o.token_ids if t not in stop_ids], o.finish_reason == "stop")
                for o in out.outputs
            ]
            for out in outs
        ]
