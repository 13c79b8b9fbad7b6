"""Gold-answer NLL: the powered measure of lost ability (and of target gain) beside accuracy and KL drift.

For each item: the mean negative log-likelihood per token of the task's *reference* answer (GSM8K and MATH
solutions, the MBPP solution; for ARC/SciQ/PIQA the gold letter alone, after "The answer is", since the rest of
"The answer is B. <choice>" is format and text copied from the prompt), teacher-forced after the item's prompt in
the chat template, the end-of-turn token excluded (a masked end-of-turn would otherwise dominate the
comparison of STM arms; see the verdict issue). Per item, not per task: the verdict's intervals resample items.

Why a third measure: at 135M, multiple-choice accuracy sits near chance and barely moves, and KL drift measures
*distance* from the base, not loss of ability -- training only on low-perplexity tokens sharpens the model, which
moves its distribution a lot while it may still predict the gold answers as well as before. A rise of the gold
answers' NLL over the base is the loss of ability itself, measured on every token of 200 items instead of one
bit per item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cache import Cache, atomic_write_text, content_key, dumps_finite
from .evaluation import load_task_items, parse_task_spec
from .generation import chat_prompt_ids
from .lm import MIXED_PRECISIONS, autocast
from .scoring import Rendered, score_rendered

MC_LEAD = "The answer is"  # how the kit's multiple-choice reference answers begin ("The answer is D. ...")
GOLD_NLL_VERSION = 2  # 2: multiple choice scores the gold letter only, after "The answer is"


@dataclass(frozen=True)
class GoldItem:
    """One item's chat-formatted prompt and its reference answer, as token ids (no end-of-turn)."""

    task: str
    id: str
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def gold_items(tokenizer: Any, task_spec: str, n: int, split: str = "test", source: str = "embedded") -> list[GoldItem]:
    """The first n items of a task's split with a non-empty reference answer, tokenised for gold_nll."""
    name, _ = parse_task_spec(task_spec)
    examples = load_task_items(name, n, split, source)
    out = []
    for ex in examples:
        answer = list(tokenizer(ex.response, add_special_tokens=False)["input_ids"]) if ex.response.strip() else []
        prompt = chat_prompt_ids(tokenizer, ex.prompt)
        if ex.choices and ex.answer.strip() and ex.response.startswith(f"{MC_LEAD} {ex.answer.strip()}"):
            # Multiple choice: only the gold letter carries knowledge; the lead-in and the choice text copied from
            # the prompt would make the measure mostly one of answer format. "The answer is" joins the prompt side;
            # the two parts are tokenised apart (a joint tokenisation may merge across the boundary).
            prompt = prompt + list(tokenizer(MC_LEAD, add_special_tokens=False)["input_ids"])
            answer = list(tokenizer(" " + ex.answer.strip(), add_special_tokens=False)["input_ids"])
        if answer:
            out.append(GoldItem(name, str(ex.id), tuple(prompt), tuple(answer)))
    if not out:
        raise ValueError(f"task {name!r} ({split}) has no items with a reference answer for gold-answer NLL")
    return out


def gold_nll(
    model: Any,
    tokenizer: Any,
    items: Sequence[GoldItem],
    *,
    fingerprint: str,
    cache: Cache | None = None,
    batch_size: int = 16,
    max_tokens_per_batch: int = 8192,
    progress: bool = True,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """{item id: mean NLL per reference-answer token} for one model; cached by model fingerprint and the items.

    mixed_precision "bf16": the forward passes run under bf16 autocast (fp32 weights). On a CPU with AMX 2.6-3.7x
    faster; per-task means agree with fp32 to ~1e-3 nats/token (`make bench`, bench_precision)."""
    if not items:
        raise ValueError("no items to measure gold-answer NLL on")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r} must be one of {MIXED_PRECISIONS}")
    cache = cache or Cache()
    extra = {"mixed_precision": mixed_precision} if mixed_precision != "no" else {}  # earlier keys stay valid
    key = content_key("gold_nll", GOLD_NLL_VERSION, model=fingerprint,
                      items=[(it.task, it.id, it.prompt_ids, it.answer_ids) for it in items], **extra)
    hit = cache.get("gold_nll", key)
    if hit is not None:
        return json.loads((hit / "nll.json").read_text())
    rows = [Rendered(f"{it.task} item {it.id!r}", [*it.prompt_ids, *it.answer_ids], len(it.prompt_ids))
            for it in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with autocast(model, mixed_precision):
        scored = score_rendered(model, rows, pad, batch_size, max_tokens_per_batch, progress)  # refuses non-finite
    nll = {it.id: -float(np.mean(s.logprobs)) for it, s in zip(items, scored, strict=True)}
    with cache.put("gold_nll", key, meta={"n": len(items), "model": fingerprint}) as tmp:
        (tmp / "nll.json").write_text(dumps_finite(nll, "gold-answer NLL"))
    return nll


def nll_rise(tuned: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """Per item: tuned NLL minus base NLL (positive = the gold answer became less likely: ability lost)."""
    missing = sorted(set(base) ^ set(tuned))
    if missing:
        raise ValueError(f"gold-answer NLL of the two models covers different items (e.g. {missing[:3]}); "
                         "measure both on the same items")
    return {k: tuned[k] - base[k] for k in base}


def measure_model(
    model: Any,
    tokenizer: Any,
    eval_cfg: Any,
    target: str,
    *,
    fingerprint: str,
    source: str = "embedded",
    out_dir: Any = None,
    cache: Cache | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Gold-answer NLL of one model on the profile's gold tasks (eval.gold_tasks x eval.gold_items) and its target
    (eval.gold_target_items) -> {task: {mean, n, path}}; per-item values go to out_dir/gold_nll_<task>.json."""
    from pathlib import Path

    plan = [(t, eval_cfg.gold_items) for t in eval_cfg.gold_tasks if parse_task_spec(t)[0] != target]
    if eval_cfg.gold_target_items:
        plan.append((target, eval_cfg.gold_target_items))
    out: dict[str, dict[str, Any]] = {}
    for spec, n in plan:
        task = parse_task_spec(spec)[0]
        items = gold_items(tokenizer, task, n, source=source)
        nll = gold_nll(model, tokenizer, items, fingerprint=fingerprint, cache=cache, batch_size=eval_cfg.batch_size,
                       progress=progress, mixed_precision=eval_cfg.measures_mixed_precision)
        entry: dict[str, Any] = {"mean": float(np.mean(list(nll.values()))), "n": len(nll),
                                 "role": "target" if task == target else "non-target"}
        if out_dir is not None:
            path = Path(out_dir) / f"gold_nll_{task}.json"
            atomic_write_text(path, dumps_finite(nll, f"gold-answer NLL of {task}"))
            entry["path"] = str(path)
        out[task] = entry
    return out


def load_per_item(entry: dict[str, Any]) -> dict[str, float]:
    """The per-item values measure_model wrote for one task."""
    from pathlib import Path

    return json.loads(Path(entry["path"]).read_text())


def items_by_role(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One model's per-item values from its measure_model entries, keyed "task:item", split by role ("target",
    "non-target"); an entry whose per-item file is gone is left out (its measure then counts as missing)."""
    from pathlib import Path

    out: dict[str, dict[str, float]] = {}
    for task, entry in tasks.items():
        if entry.get("path") and Path(entry["path"]).is_file():
            out.setdefault(entry.get("role", "non-target"), {}).update(
                {f"{task}:{k}": v for k, v in load_per_item(entry).items()})
    return out


def summary_table(gold: dict[str, dict[str, dict[str, Any]]]) -> Any:
    """Mean gold-answer NLL, one row per model, one column per task (nats per token)."""
    import pandas as pd

    return pd.DataFrame({model: {task: e["mean"] for task, e in tasks.items()} for model, tasks in gold.items()}).T
