"""Per-token log-probabilities and perplexities of responses under a model, batched and cached.

ppl_i = exp(-log p(x_i | x_<i)) (natural log) for every response token, aligned to the training input_ids;
sequence PPL = exp(mean NLL over the response tokens). The same forward pass records each response token's
predictive entropy: over the full vocabulary (nats) and over the top-K tokens renormalised, divided by log K (in
[0, 1]; K = 20, EAFT's estimate, arXiv 2601.02151). Low probability with low entropy is a "confident conflict".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import lm
from .cache import Cache, CacheCorruptError, content_key, dumps_finite
from .numerics import require_finite
from .progress import bar as progress_bar

SCORING_VERSION = 2  # 2: entropies recorded beside the log-probs
ENTROPY_TOP_K = 20


@dataclass
class Rendered:
    """One example tokenised exactly as training sees it: prompt tokens, then response tokens ending in EOT."""

    id: str
    input_ids: list[int]
    response_start: int  # index of the first response token
    truncated: int = 0  # response tokens cut off by max_length

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


@dataclass
class Scored:
    """A rendered example with the log-probability of each response token."""

    id: str
    input_ids: list[int]
    response_start: int
    logprobs: list[float]  # one per response token
    truncated: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    entropy: list[float] = field(default_factory=list)  # per response token, full vocabulary (nats)
    topk_entropy: list[float] = field(default_factory=list)  # per response token, top-K, divided by log K

    @property
    def probability(self) -> np.ndarray:
        return np.exp(np.asarray(self.logprobs, dtype=np.float64))

    @property
    def ppl(self) -> np.ndarray:
        return np.exp(-np.asarray(self.logprobs, dtype=np.float64))

    @property
    def mean_nll(self) -> float:
        return float(-np.mean(self.logprobs)) if self.logprobs else float("nan")

    @property
    def seq_ppl(self) -> float:
        return math.exp(self.mean_nll) if self.logprobs else float("nan")

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.response_start :]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input_ids": self.input_ids,
            "response_start": self.response_start,
            "logprobs": self.logprobs,
            "truncated": self.truncated,
            "meta": self.meta,
            "entropy": self.entropy,
            "topk_entropy": self.topk_entropy,
        }


def end_of_turn(tokenizer: Any) -> str:
    """The token the chat template puts right after an assistant message (e.g. <|im_end|>, <end_of_turn>)."""
    marker = "STMKIT_MARKER_7f3a"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    tail = text.split(marker, 1)[1]
    for special in sorted(tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()), key=len, reverse=True):
        if special and tail.lstrip(" ").startswith(special):
            return special
    return tokenizer.eos_token


def render(
    tokenizer: Any, prompt: str | list[dict[str, str]], response: str, item_id: str = "", max_length: int = 0
) -> Rendered:
    """Chat-template the prompt (with the generation prompt), then the response tokens and the end-of-turn token.

    `prompt` is the user message, or a list of chat messages (system/user/assistant turns before the response).
    The response is tokenised on its own so that its tokens are exactly the response (no merge across the
    boundary); this is the rendering training uses too. Truncation cuts response tokens from the right.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(prompt_ids, "keys"):  # some versions return a BatchEncoding
        prompt_ids = prompt_ids["input_ids"]
    prompt_ids = list(prompt_ids)
    eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [eot]
    ids = prompt_ids + response_ids
    truncated = 0
    if max_length and len(ids) > max_length:
        truncated = len(ids) - max_length
        if len(prompt_ids) >= max_length:
            raise ValueError(
                f"example {item_id!r}: the prompt alone has {len(prompt_ids)} tokens, more than max_length "
                f"{max_length}; raise data.max_length or shorten the prompt"
            )
        ids = ids[:max_length]
    return Rendered(item_id, ids, len(prompt_ids), truncated)


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), capped by count and padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or width * (len(cur) + 1) > max_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def response_logprobs(
    model: Any,
    rows: Sequence[Rendered],
    pad_id: int,
    padding_side: str = "right",
    entropies: bool = False,
) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(log-probs, full entropy, top-K entropy / log K) of each row's response tokens in one forward pass (the LM
    head only at those positions); the entropies, from the same logits, only with `entropies` (else None)."""
    import torch

    device = next(model.parameters()).device
    ids, mask = lm.pad([r.input_ids for r in rows], pad_id, padding_side)
    ids, mask = ids.to(device), mask.to(device)
    decoder, head, cap = lm.head_of(model)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=lm.positions(mask)).last_hidden_state
    width = ids.shape[1]
    sel_b, sel_t, targets = [], [], []
    for b, r in enumerate(rows):
        offset = width - len(r.input_ids) if padding_side == "left" else 0
        # token t is predicted from position t-1
        t = torch.arange(r.response_start, len(r.input_ids), device=device) + offset
        sel_b.append(torch.full_like(t, b))
        sel_t.append(t - 1)
        targets.append(ids[b, t])
    sel_b, sel_t, targets = torch.cat(sel_b), torch.cat(sel_t), torch.cat(targets)
    logits = lm.head_logits(head, cap, hidden[sel_b, sel_t])
    chosen, logp = lm.chosen_logprobs(logits, targets)
    columns = [chosen.cpu().numpy()]
    if entropies:
        columns += [t.cpu().numpy() for t in lm.token_entropies(logits, ENTROPY_TOP_K, logp)]
    out, start = [], 0
    for r in rows:
        parts = [c[start : start + r.n_response].astype(np.float64) for c in columns]
        out.append((parts + [None, None])[:3])
        start += r.n_response
    return out


def score_rendered(
    model: Any,
    rendered: Sequence[Rendered],
    pad_id: int,
    batch_size: int = 8,
    max_tokens_per_batch: int = 8192,
    progress: bool = True,
    padding_side: str = "right",
    entropies: bool = False,
) -> list[Scored]:
    """Score many rendered examples: length-sorted batches, inference mode, results in input order.

    entropies: also record each response token's predictive entropies (scoring for masking does; evaluation's
    log-likelihoods need only the log-probs)."""
    import torch

    for r in rendered:
        if r.n_response < 1:
            raise ValueError(f"example {r.id!r} has no response tokens to score")
    batches = length_sorted_batches([len(r.input_ids) for r in rendered], batch_size, max_tokens_per_batch)
    results: list[Any] = [None] * len(rendered)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in progress_bar(batches, desc="scoring", unit="batch", disable=not progress):
            rows = response_logprobs(model, [rendered[i] for i in batch], pad_id, padding_side, entropies)
            for i, row in sorted(zip(batch, rows, strict=True), key=lambda pair: pair[0]):
                # NaN > tau is False: a NaN would pass as a confident token that is never masked
                require_finite(row[0], f"example {rendered[i].id!r} (index {i}) log-probs", unit="response token")
                if entropies:
                    require_finite(row[1], f"example {rendered[i].id!r} (index {i}) entropies", unit="response token")
                results[i] = row
    model.train(was_training)
    return [
        Scored(r.id, list(r.input_ids), r.response_start, lp.tolist(), r.truncated,
               entropy=[] if full is None else full.tolist(), topk_entropy=[] if topk is None else topk.tolist())
        for r, (lp, full, topk) in zip(rendered, results, strict=True)
    ]


def render_examples(tokenizer: Any, examples: Iterable[Any], max_length: int = 0) -> list[Rendered]:
    """Render task Examples (or dicts with id/prompt/response) for scoring and training."""
    out = []
    for ex in examples:
        d = ex if isinstance(ex, dict) else ex.to_dict()
        if not d.get("response"):
            raise ValueError(f"example {d.get('id')!r} has an empty response; nothing to score or train on")
        out.append(render(tokenizer, d["prompt"], d["response"], str(d["id"]), max_length))
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary, special tokens and chat template."""
    vocab = sorted(tokenizer.get_vocab().items())
    return content_key(
        "tokenizer", 1, vocab=vocab, special=tokenizer.all_special_tokens, template=tokenizer.chat_template
    )


def data_fingerprint(examples: Iterable[Any]) -> str:
    """Hash of the ids, prompts and responses of a dataset."""
    rows = [(d["id"], d["prompt"], d["response"]) for d in (e if isinstance(e, dict) else e.to_dict() for e in examples)]
    return content_key("data", 1, rows=rows)


def save_scored(path: Path, scored: Sequence[Scored]) -> None:
    with open(path, "w") as f:
        for s in scored:
            f.write(dumps_finite(s.to_dict(), f"scores of example {s.id!r}") + "\n")


def load_scored(path: Path) -> list[Scored]:
    with open(path) as f:
        return [Scored(**json.loads(line)) for line in f if line.strip()]


def score_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    model_fingerprint: str,
    max_length: int = 0,
    batch_size: int = 8,
    max_tokens_per_batch: int = 8192,
    cache: Cache | None = None,
    progress: bool = True,
) -> tuple[list[Scored], str]:
    """Score examples under a model, reusing the cache when model, tokenizer, template and data are unchanged.

    Returns (scored examples in input order, cache key).
    """
    import torch

    cache = cache or Cache()
    dtype = str(next(model.parameters()).dtype)
    key = content_key(
        "scores",
        SCORING_VERSION,
        model=model_fingerprint,
        tokenizer=tokenizer_fingerprint(tokenizer),
        data=data_fingerprint(examples),
        max_length=max_length,
        dtype=dtype,
    )
    hit = cache.get("scores", key)
    if hit is not None:
        scored = load_scored(hit / "scores.jsonl")
        bad = next((s.id for s in scored if not np.isfinite(s.logprobs).all()), None)
        if bad is not None:  # written before stmkit refused non-finite scores
            raise CacheCorruptError(f"cache entry {hit} holds non-finite log-probs (example {bad!r}); delete {hit} "
                                    "and rerun to score again")
        return scored, key
    t0 = time.perf_counter()
    rendered = render_examples(tokenizer, examples, max_length)
    scored = score_rendered(model, rendered, tokenizer.pad_token_id, batch_size, max_tokens_per_batch, progress,
                            entropies=True)
    # the compute time is stored with the scores: a cached rerun still reports what scoring cost (Table 17)
    meta = {"n": len(scored), "dtype": dtype, "torch": torch.__version__, "wall_s": time.perf_counter() - t0}
    with cache.put("scores", key, meta=meta) as tmp:
        save_scored(tmp / "scores.jsonl", scored)
    return scored, key
