"""Self-BLEU: how alike a model's sampled answers to the same question are (paper Table 6).

The paper samples 4 answers to each of 100 MATH questions from models fine-tuned on MBPP and reports Self-BLEU
(mean ± a spread the caption does not define), accuracy and BWT. Self-BLEU is Zhu et al.'s (2018, Texygen):
each sample's BLEU-4 against the other k-1 samples as references, averaged; higher = less diverse.

BLEU here is the shipped `evaluate` metric stmkit/metrics/bleu (tensorflow/nmt's compute_bleu), loaded by path:
13a tokenisation (mteval-v13a, sacrebleu's default), orders 1-4 with equal weights, add-one smoothing of every
order's precision (Lin and Och, 2004; nmt's smooth=True), brevity penalty against the shortest reference. Texygen
used NLTK's word tokeniser and smoothing method1 with the closest reference length, so absolute values differ
a little from Texygen's; the ordering of models is what Table 6 is read for. One consequence of add-one smoothing:
an order a sample is too short to contain counts as precision 1, so answers of fewer than 4 tokens score high
(MATH and MBPP answers are far longer). Scores are in BLEU points (0-100), as the paper prints them.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import generation
from .cache import Cache, atomic_write_text, content_key, dumps_finite
from .datagen import sample_cached
from .evaluation import load_task_items, parse_task_spec, resolve_mode
from .scoring import data_fingerprint, tokenizer_fingerprint
from .tasks import ScoreOptions
from .tasks.prompts import PROMPT_VERSION
from .tasks.registry import get_task, score
from .transfer import load_metric

DIVERSITY_VERSION = 1
BLEU_SETTINGS = {"tokenizer": "13a", "max_order": 4, "smooth": True}


@functools.cache
def _bleu_metric() -> Any:
    return load_metric("bleu")


def sample_bleus(samples: Sequence[str]) -> list[float]:
    """Each sample's BLEU-4 (0-100) against the other samples of the same question as references."""
    if isinstance(samples, str):
        raise TypeError("samples must be a list of texts (the k answers to one question), not a single string")
    samples = list(samples)
    if len(samples) < 2:
        raise ValueError(f"Self-BLEU needs at least 2 samples per question, got {len(samples)}")
    refs = [samples[:i] + samples[i + 1 :] for i in range(len(samples))]
    out = _bleu_metric().compute(predictions=samples, references=refs, per_prediction=True, **BLEU_SETTINGS)
    return [100.0 * b for b in out["per_prediction_bleu"]]


def self_bleu(samples: Sequence[str]) -> float:
    """Self-BLEU (0-100) of one question's k sampled answers: mean over samples of BLEU-4 against the other k-1.

    Tokenisation 13a, add-one smoothing, shortest-reference brevity penalty (see the module docstring).
    Identical samples score 100.
    """
    return float(np.mean(sample_bleus(samples)))


def measure_self_bleu(
    model: Any,
    tokenizer: Any,
    task: str = "math",
    n_items: int = 20,
    decoding: Any = None,
    *,
    fingerprint: str,
    split: str = "test",
    source: str = "embedded",
    task_data: Mapping[str, str] | None = None,
    batch_size: int = 8,
    sandbox_timeout_s: float = 10.0,
    cache: Cache | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Sample decoding.num_samples answers (default: generation.sampling(4), the paper's 4 at T=0.7, top_p=0.95) to
    each of the first n_items questions of a task; Self-BLEU and accuracy.

    Returns {"task", "n_items", "n_samples", "self_bleu" (mean over questions, 0-100), "self_bleu_sd" (population
    standard deviation over questions), "accuracy" (share of correct samples, by the task's checker), "wall_s"
    (sampling + checking when it was computed), "temperature", "top_p", "max_new_tokens", "seed", "key", "cached",
    "items_path"}. Sampling is seeded and cached in chunks (stmkit.datagen), the whole result by the model
    fingerprint, tokenizer, items, decoding and BLEU settings, so a rerun is instant. With out_dir, the
    per-question records (samples, verdicts, Self-BLEU) are also copied to out_dir/self_bleu_<task>.jsonl.
    """
    name, mode = parse_task_spec(task)
    if mode == "loglik":
        raise ValueError(f"Self-BLEU samples free-form answers; use task {name!r} without ':loglik'")
    task_obj = get_task(name)
    resolve_mode(task_obj.name, "generate")  # a clear error for tasks without a checker for generated text
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1 for Self-BLEU, got {n_items}")
    decoding = decoding or generation.sampling(4)
    if not decoding.do_sample or decoding.num_samples < 2:
        raise ValueError("Self-BLEU needs a sampling Decoding with num_samples >= 2 (each sample is compared with the "
                         f"others), got {decoding}")
    items = load_task_items(task_obj.name, n_items, split, source, task_data)
    if not items:
        raise ValueError(f"task {task_obj.name} has no {split!r} items to sample from")
    cache = cache or Cache()
    answers = [(ex.id, ex.answer, list(ex.tests)) for ex in items]
    key = content_key(
        "self_bleu", DIVERSITY_VERSION, model=fingerprint, tokenizer=tokenizer_fingerprint(tokenizer),
        task=task_obj.name, split=split, data=data_fingerprint(items), answers=answers, decoding=decoding.key(),
        bleu=BLEU_SETTINGS, sandbox_timeout_s=sandbox_timeout_s, prompt_version=PROMPT_VERSION,
        generation_version=generation.GENERATION_VERSION,
    )  # fmt: skip
    settings = {"task": task_obj.name, "n_items": len(items), "n_samples": decoding.num_samples,
                "temperature": decoding.temperature, "top_p": decoding.top_p,
                "max_new_tokens": decoding.max_new_tokens, "seed": decoding.seed}
    hit = cache.get("self_bleu", key)
    if hit is None:
        t0 = time.perf_counter()
        samples, _ = sample_cached(model, tokenizer, [ex.prompt for ex in items], decoding, fingerprint, cache,
                                    batch_size, f"{task_obj.name}: sampling for Self-BLEU")
        flat_items = [ex for ex, cs in zip(items, samples, strict=True) for _ in cs]
        verdicts = score(task_obj.name, flat_items, [c.text for cs in samples for c in cs],
                         ScoreOptions(timeout_s=sandbox_timeout_s))
        records, k = [], 0
        for ex, cs in zip(items, samples, strict=True):
            texts = [c.text for c in cs]
            records.append({
                "id": ex.id, "samples": texts, "correct": [bool(v["correct"]) for v in verdicts[k : k + len(cs)]],
                "extracted": [v["extracted"] for v in verdicts[k : k + len(cs)]],
                "n_tokens": [len(c.token_ids) for c in cs], "sample_bleu": sample_bleus(texts),
            })  # fmt: skip
            records[-1]["self_bleu"] = float(np.mean(records[-1]["sample_bleu"]))
            k += len(cs)
        wall = time.perf_counter() - t0
        with cache.put("self_bleu", key, meta={**settings, "wall_s": round(wall, 3), "model": fingerprint}) as tmp:
            lines = "".join(dumps_finite(r, f"Self-BLEU record {r['id']!r}", default=str) + "\n" for r in records)
            atomic_write_text(tmp / "items.jsonl", lines)
        cached = False
    else:
        wall = float(cache.meta("self_bleu", key).get("wall_s", 0.0))
        cached = True
    path = cache.path("self_bleu", key) / "items.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if out_dir is not None:
        dest = Path(out_dir) / f"self_bleu_{task_obj.name}.jsonl"
        atomic_write_text(dest, path.read_text())
        path = dest
    per_question = np.array([r["self_bleu"] for r in records])
    correct = np.array([c for r in records for c in r["correct"]], dtype=float)
    return {
        **settings,
        "self_bleu": float(per_question.mean()),
        "self_bleu_sd": float(per_question.std()),
        "accuracy": float(correct.mean()),
        "wall_s": round(wall, 3),
        "key": key,
        "cached": cached,
        "items_path": str(path),
    }


def self_bleu_table(results: dict[str, dict[str, Any]], transfer: dict[str, dict[str, Any]] | None = None) -> Any:
    """Table 6 layout: per model, Self-BLEU mean ± SD (0-100), accuracy (%) of the samples, BWT (%) when given."""
    import pandas as pd

    rows = []
    for label, r in results.items():
        row = {"method": label, "Self-BLEU (mean ± SD)": f"{r['self_bleu']:.2f} ± {r['self_bleu_sd']:.2f}",
               "accuracy %": round(100 * r["accuracy"], 2)}
        if transfer is not None:
            bwt = (transfer.get(label) or {}).get("bwt")
            row["BWT %"] = None if bwt is None else round(bwt, 2)
        row.update(task=r["task"], questions=r["n_items"], samples=r["n_samples"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
