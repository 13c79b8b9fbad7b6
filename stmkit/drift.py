"""Drift: how far fine-tuning moved the output distribution on non-target prompts (continuous forgetting signal).

At 135M parameters most generative accuracies sit near zero and multiple-choice accuracies barely move, so
accuracy alone cannot show forgetting. For each non-target task we fix a set of prompts (chat format, the task's
own prompt), record the *base* model's greedy answers once (cached), and after fine-tuning report

- **kl**: mean per-token KL(p_base || p_finetuned) over the full vocabulary, teacher-forced on the base's answers
  (per prompt: mean over its answer tokens; per task: mean over prompts, with a bootstrap CI over prompts);
- **delta_nll**: change in mean NLL of those answers (finetuned - base), and **delta_gold_nll**: the same for the
  gold answers (the task's reference response).

The NLL changes are reported but are not a forgetting measure on their own: training only on low-perplexity
tokens sharpens the model, which lowers the NLL of the base's own greedy tokens while the distribution moves away
from the base (measured at 135M, full fine-tuning: STM lowered that NLL by 0.07 nats/token yet had a *larger* KL
to the base than ground-truth training, 0.109 vs 0.078; ``../shared/notes/small-scale-findings.md``).

The base distribution comes from a second model, or from the same PEFT model with its adapter disabled
(``with model.disable_adapter():``), so a LoRA run needs only one copy of the weights.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import generation, lm
from .adapters import weights_fingerprint
from .cache import Cache, content_key, dumps_finite
from .evaluation import load_task_items, parse_task_spec
from .generation import chat_prompt_ids, stop_token_ids
from .lm import MIXED_PRECISIONS, autocast
from .numerics import require_finite
from .progress import bar as progress_bar
from .scoring import data_fingerprint, length_sorted_batches, tokenizer_fingerprint
from .tasks.prompts import PROMPT_VERSION
from .tasks.registry import committed_splits, get_task
from .transfer import bootstrap_ci

DRIFT_VERSION = 2  # 2: per-prompt KL recorded (the verdict's intervals resample prompts)
KL_CHUNK = 1024  # response positions per full-vocabulary log-softmax (bounds memory for 256k vocabularies)
# The base pass is kept in memory for the next model up to this size (cpu-demo: ~1.2k answer tokens x 49k
# vocabulary, ~0.3 GB); beyond it every model recomputes it (paper scale: 256k vocabularies).
BASE_MEMO_BYTES = 1 << 30


@dataclass
class DriftItem:
    """One fixed prompt with the base model's greedy answer and the gold answer, as token ids."""

    task: str
    id: str
    prompt_ids: list[int]
    response_ids: list[int]  # the base's answer, plus the end-of-turn token when it finished its turn
    gold_ids: list[int]  # the gold response + end-of-turn ([] when the task has none)
    response_text: str = ""


@dataclass
class DriftReference:
    """The fixed prompts and the base model's answers that drift is measured on.

    base_memo: the base model's log-probabilities on these answers, kept in memory (up to BASE_MEMO_BYTES) once
    computed, so drift of the next fine-tuned model against the same base object runs only the fine-tuned pass.
    """

    items: list[DriftItem]
    key: str
    settings: dict[str, Any] = field(default_factory=dict)
    base_memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(it.task for it in self.items))


def drift_examples(task_spec: str, n: int, source: str = "embedded",
                   task_data: Mapping[str, str] | None = None) -> list[Any]:
    """The fixed drift prompts of a task: its first n validation items, else the last n of its test split.

    Either way they are not the items the evaluation scores (the first n_items of test) unless it scores them all.
    """
    name, _ = parse_task_spec(task_spec)
    task = get_task(name)
    if source == "embedded" and task.loader is None and "validation" in committed_splits(task.name):
        return load_task_items(name, n, "validation", source, task_data)
    items = load_task_items(name, 0, "test", source, task_data)
    if n > len(items):
        raise ValueError(f"asked for {n} drift prompts of {name}, which has only {len(items)} test items")
    return items[-n:]


def _rows(tokenizer: Any, examples: Sequence[Any], completions: Sequence[Any]) -> list[DriftItem]:
    eot = stop_token_ids(tokenizer)[0]
    items = []
    for ex, comp in zip(examples, completions, strict=True):
        c = comp[0]
        gold = (
            list(tokenizer(ex.response, add_special_tokens=False)["input_ids"]) + [eot] if ex.response else []
        )
        # The base's answer as generated, plus the end-of-turn token when it ended its turn (not when cut off).
        response = list(c.token_ids) + ([eot] if c.finished else [])
        items.append(
            DriftItem(ex.task, str(ex.id), chat_prompt_ids(tokenizer, ex.prompt), response, gold, c.text)
        )
    return items


def reference_responses(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    n_per_task: int,
    *,
    max_new_tokens: int = 96,
    fingerprint: str | None = None,
    batch_size: int = 8,
    source: str = "embedded",
    task_data: Mapping[str, str] | None = None,
    cache: Cache | None = None,
    progress: bool = True,
) -> DriftReference:
    """The base model's greedy answers to n_per_task fixed prompts of each task (cached by model and prompts)."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, not the string {tasks!r}")
    if n_per_task < 1:
        raise ValueError(f"n_per_task={n_per_task!r} must be >= 1 (eval.drift_prompts)")
    cache = cache or Cache()
    examples = [ex for t in tasks for ex in drift_examples(t, n_per_task, source, task_data)]
    decoding = generation.greedy(max_new_tokens)
    settings = {"tasks": list(tasks), "n_per_task": n_per_task, "decoding": decoding.key()}
    key = content_key(
        "drift_ref", DRIFT_VERSION, model=fingerprint or weights_fingerprint(model),
        tokenizer=tokenizer_fingerprint(tokenizer), data=data_fingerprint(examples), settings=settings,
        prompt_version=PROMPT_VERSION, generation_version=generation.GENERATION_VERSION,
    )  # fmt: skip
    hit = cache.get("drift_ref", key)
    if hit is not None:
        with open(hit / "reference.jsonl") as f:
            items = [DriftItem(**json.loads(line)) for line in f if line.strip()]
        return DriftReference(items, key, settings)
    completions = generation.generate(
        model,
        tokenizer,
        [ex.prompt for ex in examples],
        decoding,
        batch_size=batch_size,
        progress=progress,
        desc="drift: base answers",
    )
    items = _rows(tokenizer, examples, completions)
    with cache.put("drift_ref", key, meta=settings) as tmp:
        (tmp / "reference.jsonl").write_text("".join(json.dumps(asdict(it)) + "\n" for it in items))
    return DriftReference(items, key, settings)


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def base_view(finetuned: Any, base: Any | None = None) -> Iterator[Any]:
    """The model before fine-tuning: `base` if given, else `finetuned` with its PEFT adapter disabled."""
    if base is not None:
        if not _is_peft_model(base) and any(hasattr(m, "lora_A") for m in base.modules()):
            # PeftModel.from_pretrained(base_model, ...) injects the adapter into base_model in place, so that
            # object now computes the fine-tuned distribution: comparing against it would report no drift.
            raise ValueError(
                "base has adapter layers injected (PeftModel.from_pretrained wraps the model in place); pass "
                "base=None to use the PEFT model with its adapter disabled, or load a separate base model"
            )
        yield base
        return
    if _is_peft_model(finetuned):
        with warnings.catch_warnings():  # PEFT reads a property transformers deprecates; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            with finetuned.disable_adapter():
                yield finetuned
        return
    raise ValueError(
        "no base distribution: pass base=<the model before fine-tuning>, or a PEFT model whose adapter can be "
        "disabled (peft.PeftModel.from_pretrained(base_model, adapter_dir))"
    )


def _hidden_at(model: Any, rows: Sequence[tuple[list[int], int]], pad_id: int):
    """Final hidden states at the positions that predict each row's response tokens, and those target tokens."""
    import torch

    device = next(model.parameters()).device
    ids, mask = lm.pad([r[0] for r in rows], pad_id, "right")
    ids, mask = ids.to(device), mask.to(device)
    decoder, head, cap = lm.head_of(model)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=lm.positions(mask)).last_hidden_state
    sel_b, sel_t = [], []
    for b, (row, start) in enumerate(rows):
        t = torch.arange(start, len(row), device=device)
        sel_b.append(torch.full_like(t, b))
        sel_t.append(t)
    sb, st = torch.cat(sel_b), torch.cat(sel_t)
    return hidden[sb, st - 1], ids[sb, st], head, cap


def _log_softmax(hidden: Any, head: Any, cap: float | None) -> Any:
    import torch

    return torch.log_softmax(lm.head_logits(head, cap, hidden), dim=-1)


def _base_log_probs(
    finetuned: Any, base: Any | None, rows: Sequence[tuple[list[int], int]], pad_id: int,
    memo: dict[Any, Any] | None, memo_key: Any,
) -> tuple[list[Any], Any]:
    """The base model's log-softmax chunks at the rows' response positions, and the target tokens (memoised)."""
    use_memo = memo is not None and base is not None  # an explicit base object; the PEFT base view changes per model
    if use_memo and (id(base), memo_key) in memo:
        return memo[(id(base), memo_key)][1:]
    with base_view(finetuned, base) as b:
        h_base, targets, head_b, cap_b = _hidden_at(b, rows, pad_id)
        # The base head runs here, inside the view: a PEFT adapter on lm_head must be off for it too.
        lp_chunks = [
            _log_softmax(h_base[i : i + KL_CHUNK], head_b, cap_b) for i in range(0, len(h_base), KL_CHUNK)
        ]
    if use_memo:
        size = sum(c.numel() * c.element_size() for c in lp_chunks)
        used = memo.get("_bytes", 0)
        if used + size <= BASE_MEMO_BYTES:
            memo[(id(base), memo_key)] = (base, lp_chunks, targets)  # holding base keeps its id from being reused
            memo["_bytes"] = used + size
    return lp_chunks, targets


def _token_stats(
    finetuned: Any, base: Any | None, rows: Sequence[tuple[list[int], int]], pad_id: int,
    memo: dict[Any, Any] | None = None, memo_key: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per response token: KL(base || finetuned), NLL under base, NLL under finetuned (all rows concatenated)."""
    import torch

    lp_chunks, targets = _base_log_probs(finetuned, base, rows, pad_id, memo, memo_key)
    h_ft, _, head_f, cap_f = _hidden_at(finetuned, rows, pad_id)
    kl, nll_b, nll_f = [], [], []
    for n, i in enumerate(range(0, len(h_ft), KL_CHUNK)):
        lp_b = lp_chunks[n]
        lp_f = _log_softmax(h_ft[i : i + KL_CHUNK], head_f, cap_f)
        tgt = targets[i : i + KL_CHUNK, None]
        kl.append((lp_b.exp() * (lp_b - lp_f)).sum(-1).clamp(min=0))  # clamp: float error can dip below 0
        nll_b.append(-lp_b.gather(-1, tgt)[:, 0])
        nll_f.append(-lp_f.gather(-1, tgt)[:, 0])
    cat = lambda xs: torch.cat(xs).double().cpu().numpy()  # noqa: E731
    return cat(kl), cat(nll_b), cat(nll_f)


def _per_row(
    finetuned: Any,
    base: Any | None,
    rows: list[tuple[list[int], int]],
    pad_id: int,
    *,
    batch_size: int,
    max_tokens: int,
    progress: bool,
    desc: str,
    memo: dict[Any, Any] | None = None,
    names: Sequence[str] | None = None,
) -> list[tuple[float, float, float]]:
    """(mean KL, mean NLL base, mean NLL finetuned) per row, in length-sorted batches; non-finite ones refused."""
    import torch

    out: list[tuple[float, float, float] | None] = [None] * len(rows)
    batches = length_sorted_batches([len(r[0]) for r in rows], batch_size, max_tokens)
    autocast_on = torch.is_autocast_enabled(next(finetuned.parameters()).device.type)  # the base memo, per precision
    with torch.inference_mode():
        for batch in progress_bar(batches, desc=desc, unit="batch", disable=not progress):
            kl, nb, nf = _token_stats(finetuned, base, [rows[i] for i in batch], pad_id, memo,
                                      (desc, tuple(batch), autocast_on))
            start = 0
            for i in batch:
                n = len(rows[i][0]) - rows[i][1]
                name = names[i] if names is not None else f"row {i}"
                for label, values in (("KL", kl), ("base NLL", nb), ("fine-tuned NLL", nf)):
                    require_finite(values[start : start + n], f"{desc}: {name}: per-token {label}", unit="token")
                out[i] = (
                    float(kl[start : start + n].mean()),
                    float(nb[start : start + n].mean()),
                    float(nf[start : start + n].mean()),
                )
                start += n
    return out  # type: ignore[return-value]


def measure_drift(
    finetuned: Any,
    tokenizer: Any,
    reference: DriftReference,
    *,
    base: Any | None = None,
    batch_size: int = 8,
    max_tokens_per_batch: int = 8192,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    fingerprint: str | None = None,
    cache: Cache | None = None,
    mixed_precision: str = "no",
) -> dict[str, dict[str, Any]]:
    """Drift of a fine-tuned model from its base on the reference answers, per task and overall ("all").

    Per task: kl (+ kl_low/kl_high, bootstrap over prompts), nll_base, nll_finetuned, delta_nll (on the base's
    answers), gold_nll_base, gold_nll_finetuned, delta_gold_nll, n_prompts, n_tokens, per_prompt_kl ({id: kl}). "all" averages the tasks
    with equal weight (as BWT does). KL and NLL in nats per token.

    fingerprint: the fine-tuned model's (adapters.trained_model gives it); with it the result is cached by that
    fingerprint, the reference (which names the base) and the bootstrap settings, so a rerun costs nothing.
    mixed_precision "bf16": both models' forward passes under bf16 autocast (fp32 weights; log-softmax and KL in
    fp32): ~2.5x faster on a CPU with AMX; KL comes out 2-5% lower than in fp32 (bench_precision: -4.8% on one
    adapter; -1.8% on the default's ground-truth runs), far inside seed-to-seed variation but not equal.
    """
    if not reference.items:
        raise ValueError("the drift reference has no prompts; record it with reference_responses(...) first")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} must be one of {MIXED_PRECISIONS}")
    if fingerprint is None:
        with autocast(finetuned, mixed_precision):
            return _measure(finetuned, tokenizer, reference, base, batch_size=batch_size,
                            max_tokens_per_batch=max_tokens_per_batch, n_resamples=n_resamples, seed=seed,
                            progress=progress)
    cache = cache or Cache()
    extra = {"mixed_precision": mixed_precision} if mixed_precision != "no" else {}  # earlier keys stay valid
    key = content_key("drift", DRIFT_VERSION, model=fingerprint, reference=reference.key, n_resamples=n_resamples,
                      seed=seed, **extra)
    hit = cache.get("drift", key)
    if hit is not None:
        return json.loads((hit / "drift.json").read_text())
    with autocast(finetuned, mixed_precision):
        out = _measure(finetuned, tokenizer, reference, base, batch_size=batch_size,
                       max_tokens_per_batch=max_tokens_per_batch, n_resamples=n_resamples, seed=seed, progress=progress)
    with cache.put("drift", key, meta={"model": fingerprint, "reference": reference.key}) as tmp:
        (tmp / "drift.json").write_text(dumps_finite(out, f"drift of {fingerprint}"))
    return out


def _measure(
    finetuned: Any, tokenizer: Any, reference: DriftReference, base: Any | None, *, batch_size: int,
    max_tokens_per_batch: int, n_resamples: int, seed: int, progress: bool,
) -> dict[str, dict[str, Any]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = [m.training for m in (finetuned, base) if m is not None]
    for m in (finetuned, base):
        if m is not None:
            m.eval()
    try:
        resp_rows = [(it.prompt_ids + it.response_ids, len(it.prompt_ids)) for it in reference.items]
        empty = [it.id for it in reference.items if not it.response_ids]
        if empty:
            raise ValueError(
                f"drift prompts {empty[:5]} have an empty base answer; raise drift_max_new_tokens"
            )
        names = [f"{it.task} prompt {it.id!r}" for it in reference.items]
        resp = _per_row(
            finetuned, base, resp_rows, pad, batch_size=batch_size, max_tokens=max_tokens_per_batch,
            progress=progress, desc="drift: answers", memo=reference.base_memo, names=names,
        )
        gold_items = [k for k, it in enumerate(reference.items) if it.gold_ids]
        gold_rows = [
            (reference.items[k].prompt_ids + reference.items[k].gold_ids, len(reference.items[k].prompt_ids))
            for k in gold_items
        ]
        gold = _per_row(
            finetuned, base, gold_rows, pad, batch_size=batch_size, max_tokens=max_tokens_per_batch,
            progress=progress, desc="drift: gold", memo=reference.base_memo, names=[names[k] for k in gold_items],
        )
    finally:
        for m, flag in zip([m for m in (finetuned, base) if m is not None], was_training, strict=True):
            m.train(flag)
    gold_by_index = dict(zip(gold_items, gold, strict=True))
    out: dict[str, dict[str, Any]] = {}
    for task in reference.tasks:
        idx = [k for k, it in enumerate(reference.items) if it.task == task]
        kl = np.array([resp[k][0] for k in idx])
        _, lo, hi = bootstrap_ci(kl, n_resamples=n_resamples, seed=seed)
        g = [gold_by_index[k] for k in idx if k in gold_by_index]
        nb, nf = float(np.mean([resp[k][1] for k in idx])), float(np.mean([resp[k][2] for k in idx]))
        # None (not NaN) when the task has no gold answers: undefined, and the result is cached
        gb = float(np.mean([x[1] for x in g])) if g else None
        gf = float(np.mean([x[2] for x in g])) if g else None
        out[task] = {
            "kl": float(kl.mean()), "kl_low": lo, "kl_high": hi, "nll_base": nb, "nll_finetuned": nf,
            "delta_nll": nf - nb, "gold_nll_base": gb, "gold_nll_finetuned": gf,
            "delta_gold_nll": gf - gb if g else None,
            "n_prompts": len(idx), "n_tokens": int(sum(len(reference.items[k].response_ids) for k in idx)),
            "per_prompt_kl": {reference.items[k].id: float(resp[k][0]) for k in idx},
        }  # fmt: skip
    keys = (
        "kl",
        "nll_base",
        "nll_finetuned",
        "delta_nll",
        "gold_nll_base",
        "gold_nll_finetuned",
        "delta_gold_nll",
    )
    defined = {k: [out[t][k] for t in reference.tasks if out[t][k] is not None] for k in keys}
    out["all"] = {k: float(np.mean(v)) if v else None for k, v in defined.items()}
    out["all"]["n_prompts"] = len(reference.items)
    out["all"]["n_tokens"] = int(sum(out[t]["n_tokens"] for t in reference.tasks))
    return out


def per_prompt_kl(result: dict[str, dict[str, Any]]) -> dict[str, float]:
    """One model's KL per reference prompt from a measure_drift result, keyed "task:prompt id"."""
    return {f"{t}:{k}": float(v) for t, e in result.items() if t != "all"
            for k, v in (e.get("per_prompt_kl") or {}).items()}


def drift_table(drifts: dict[str, dict[str, dict[str, Any]]], metric: str = "kl") -> Any:
    """One row per fine-tuned model, one column per task (and "all"): the chosen drift metric."""
    import pandas as pd

    return pd.DataFrame({label: {t: d[metric] for t, d in res.items()} for label, res in drifts.items()}).T
