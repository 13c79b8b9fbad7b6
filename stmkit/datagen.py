"""The paper's generated-data baselines: Self-Output and Rephrase training sets, and the correctness ablation.

- Self-Output: sample N answers per training prompt (paper: N=32, T=0.7, top_p=0.95), check each with the task's
  checker (MBPP: the task's asserts in the sandbox; MATH: the local equivalence check), keep the correct answer with
  the lowest sequence PPL under the base model, drop problems with no correct answer.
- Rephrase: the model rewrites the ground truth given the instruction and the reference answer (SDFT-style prompt),
  one sample at T=0.7; rewrites the checker rejects are dropped.
- Correctness ablation (Tables 20-21): Self-Output sets whose answers are correct for a stated share of problems.
Any registry model (or local folder) can generate while the base model scores (Figure 2's other label sources).
Sampling is seeded and done in chunks cached by content, so an interrupted generation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .cache import Cache, atomic_write_text, content_key
from .generation import Completion, Decoding, generate, sampling
from .progress import bar as progress_bar
from .tasks import Example, ScoreOptions, get_task
from .tasks.prompts import PROMPT_VERSION, REPHRASE_PROMPT

DEFAULT_SELF_OUTPUT = sampling(8, 0.7, 0.95, 256, 0)  # the paper samples 32 at T=0.7, top_p=0.95
DEFAULT_REPHRASE = sampling(1, 0.7, 0.95, 256, 0)

DATAGEN_VERSION = 1
# Sequences (prompts x samples) per generate() batch and per cached chunk, the unit of resumption. One batch of 32
# instead of two of 16 decodes the same tokens in 0.65x the time on CPU (each step reads the weights once for the
# whole batch; measured on 8 MBPP prompts x 4 samples, 61.6 s vs 94.3 s).
SAMPLE_BATCH = 32


@dataclass
class Candidate:
    """One generated answer to one problem, with its verdict."""

    item_id: str
    sample: int
    text: str
    tokens: int
    correct: bool
    seq_ppl: float | None = None  # under the base model, once scored (score_candidates)


@dataclass
class GeneratedSet:
    """A training set made by a model, with what it cost and how many problems survived the checker."""

    label: str  # "Self-Output" | "Rephrase" | ...
    examples: list[Example]
    candidates: list[Candidate]
    problems: int
    wall_s: float
    generated_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, Any]:
        n_correct = sum(c.correct for c in self.candidates)
        return {
            "label": self.label,
            "problems": self.problems,
            "kept": len(self.examples),
            "kept_share": len(self.examples) / self.problems if self.problems else 0.0,
            "samples": len(self.candidates),
            "samples_correct": n_correct,
            "samples_correct_share": n_correct / len(self.candidates) if self.candidates else 0.0,
            "wall_s": round(self.wall_s, 1),
            "generated_tokens": self.generated_tokens,
            **self.info,
        }


def check_answers(task: str, examples: Sequence[Example], answers: Sequence[str], timeout_s: float = 10.0) -> list[bool]:
    """The task's own scorer on (example, answer) pairs, as the evaluation checks answers (model-written code runs only
    in the sandbox): whether each is correct."""
    spec = get_task(task)
    if spec.scorer is None or spec.eval_mode != "generate":
        raise ValueError(f"no answer checker for task '{task}': Self-Output/Rephrase keep answers a task checks in "
                         "free text (mbpp, math, gsm8k, ...); a multiple-choice task has none")
    return [bool(v["correct"]) for v in spec.scorer(examples, answers, ScoreOptions(timeout_s=timeout_s))]


def sample_cached(
    model: Any, tokenizer: Any, prompts: Sequence[str], decoding: Decoding, model_fp: str, cache: Cache,
    batch_size: int = SAMPLE_BATCH, desc: str = "sampling",
) -> tuple[list[list[Completion]], float]:
    """Sampled answers to each prompt, generated in chunks of one batch each (batch_size sequences: prompts x
    decoding.num_samples); each chunk is a cache entry, so reruns and resumed runs skip it. Also the generation
    time. Samples depend on the batching, so batch_size is part of each chunk's key."""
    out: list[list[Completion]] = []
    wall = 0.0
    per_chunk = max(1, batch_size // decoding.num_samples)
    for start in progress_bar(range(0, len(prompts), per_chunk), desc=desc, unit="chunk"):
        chunk = list(prompts[start : start + per_chunk])
        # the chunk's seed depends on its position so chunks do not repeat each other's samples
        dec = replace(decoding, seed=decoding.seed + start)
        key = content_key("samples", DATAGEN_VERSION, model=model_fp, prompts=chunk, decoding=dec.key(),
                          batch_size=batch_size)
        hit = cache.get("samples", key)
        if hit is None:
            t0 = time.perf_counter()
            res = generate(model, tokenizer, chunk, dec, batch_size=batch_size, progress=False)
            # the time it took is part of the artifact: a cached rerun still reports the real cost (Table 17)
            with cache.put("samples", key, meta={"n": len(chunk), "wall_s": time.perf_counter() - t0}) as tmp:
                (tmp / "samples.json").write_text(json.dumps([[c.__dict__ for c in cs] for cs in res]))
            hit = cache.path("samples", key)
        wall += cache.meta("samples", key).get("wall_s", 0.0)
        out.extend([[Completion(**c) for c in cs] for cs in json.loads((hit / "samples.json").read_text())])
    return out, wall


def _lowest_ppl(candidates: list[tuple[Example, str]], scorer: Any) -> list[float]:
    scored = scorer([replace(ex, id=f"{ex.id}#{i}", response=text) for i, (ex, text) in enumerate(candidates)])
    return [s.seq_ppl for s in scored]


def self_output(
    task: str,
    examples: Sequence[Example],
    generator: tuple[Any, Any, str],
    scorer: Any,
    decoding: Decoding = DEFAULT_SELF_OUTPUT,
    *,
    batch_size: int = SAMPLE_BATCH,
    cache: Cache | None = None,
    timeout_s: float = 10.0,
    keep_unverified: bool = False,
) -> GeneratedSet:
    """Sample, check, keep the lowest-PPL correct answer per problem; drop problems with none. keep_unverified
    (rehearsals with stand-ins, which never answer correctly): the lowest-PPL answer whether correct or not.

    `generator` is (model, tokenizer, fingerprint) of the model that writes the answers; `scorer` maps a list of
    Examples to scored examples under the base model (stmkit.scoring.score_examples bound to the base);
    `decoding` how the answers are sampled (generation.sampling: num_samples per problem, temperature, top_p,
    max_new_tokens, seed).
    """
    if not decoding.do_sample:
        raise ValueError("Self-Output samples its answers: pass generation.sampling(n, temperature, top_p, ...)")
    cache = cache or Cache()
    model, tok, fp = generator
    samples, wall = sample_cached(model, tok, [ex.prompt for ex in examples], decoding, fp, cache, batch_size,
                                   "Self-Output")
    flat_ex = [ex for ex, cs in zip(examples, samples, strict=True) for _ in cs]
    flat_text = [c.text for cs in samples for c in cs]
    verdicts = check_answers(task, flat_ex, flat_text, timeout_s)
    candidates, k = [], 0
    for ex, cs in zip(examples, samples, strict=True):
        for i, c in enumerate(cs):
            candidates.append(Candidate(ex.id, i, c.text, len(c.token_ids), verdicts[k]))
            k += 1
    chosen = pick_per_problem(examples, candidates, scorer, want_correct=None if keep_unverified else True)
    return GeneratedSet("Self-Output", chosen, candidates, len(examples), wall,
                        sum(c.tokens for c in candidates),
                        {"n_samples": decoding.num_samples, "temperature": decoding.temperature,
                         "top_p": decoding.top_p, **({"unverified": True} if keep_unverified else {})})


def score_candidates(
    examples: Sequence[Example], candidates: Sequence[Candidate], scorer: Any
) -> list[Candidate]:
    """The candidates with their sequence PPL under the base model, scored in one pass (empty answers stay
    unscored): the correctness sets then pick from them without scoring the same answers again."""
    by_id = {ex.id: ex for ex in examples}
    out = list(candidates)
    todo = [i for i, c in enumerate(out) if c.seq_ppl is None and c.text.strip()]
    ppl = _lowest_ppl([(by_id[out[i].item_id], out[i].text) for i in todo], scorer) if todo else []
    for i, p in zip(todo, ppl, strict=True):
        out[i] = replace(out[i], seq_ppl=p)
    return out


def mean_ppl_per_problem(candidates: Sequence[Candidate]) -> dict[str, float]:
    """{problem id: mean sequence PPL of its scored answers, correct or not}: how surprising the model finds its
    own text on every problem, not only on the few whose answers pass the checker (the verdict's claim 6)."""
    by_id: dict[str, list[float]] = {}
    for c in candidates:
        if c.seq_ppl is not None:
            by_id.setdefault(c.item_id, []).append(c.seq_ppl)
    return {item: sum(v) / len(v) for item, v in by_id.items()}


def pick_per_problem(
    examples: Sequence[Example], candidates: Sequence[Candidate], scorer: Any, want_correct: bool | None
) -> list[Example]:
    """Per problem, the candidate of the wanted correctness (None: any) with the lowest sequence PPL under the
    base model."""
    by_id: dict[str, list[Candidate]] = {}
    for c in candidates:
        if (want_correct is None or c.correct == want_correct) and c.text.strip():
            by_id.setdefault(c.item_id, []).append(c)
    pool = [(ex, c.text) for ex in examples for c in by_id.get(ex.id, [])]
    known = [c.seq_ppl for ex in examples for c in by_id.get(ex.id, [])]
    if all(p is not None for p in known):  # scored once already (score_candidates)
        ppl = known
    else:
        ppl = _lowest_ppl(pool, scorer) if pool else []
    best: dict[str, tuple[float, str]] = {}
    for (ex, text), p in zip(pool, ppl, strict=True):
        if ex.id not in best or p < best[ex.id][0]:
            best[ex.id] = (p, text)
    return [replace(ex, response=best[ex.id][1], meta={**ex.meta, "seq_ppl": best[ex.id][0]})
            for ex in examples if ex.id in best]


def rephrase(
    task: str,
    examples: Sequence[Example],
    generator: tuple[Any, Any, str],
    decoding: Decoding = DEFAULT_REPHRASE,
    *,
    batch_size: int = SAMPLE_BATCH,
    cache: Cache | None = None,
    timeout_s: float = 10.0,
    keep_unverified: bool = False,
) -> GeneratedSet:
    """The model rewrites each ground truth given the instruction and the reference; rejected rewrites are dropped
    (kept with keep_unverified: rehearsals with stand-ins). `decoding`: one sampled rewrite per problem."""
    if not decoding.do_sample or decoding.num_samples != 1:
        raise ValueError("Rephrase samples one rewrite per problem: pass generation.sampling(1, temperature, top_p, ...)")
    cache = cache or Cache()
    model, tok, fp = generator
    prompts = [REPHRASE_PROMPT.format(instruction=ex.prompt, reference_answer=ex.response) for ex in examples]
    samples, wall = sample_cached(model, tok, prompts, decoding, fp, cache, batch_size, "Rephrase")
    texts = [cs[0].text for cs in samples]
    verdicts = check_answers(task, examples, texts, timeout_s)
    candidates = [Candidate(ex.id, 0, c[0].text, len(c[0].token_ids), ok)
                  for ex, c, ok in zip(examples, samples, verdicts, strict=True)]
    kept = [replace(ex, response=t) for ex, t, ok in zip(examples, texts, verdicts, strict=True)
            if (ok or keep_unverified) and t.strip()]
    return GeneratedSet("Rephrase", kept, candidates, len(examples), wall, sum(c.tokens for c in candidates),
                        {"temperature": decoding.temperature, "top_p": decoding.top_p, "prompt_version": PROMPT_VERSION,
                         **({"unverified": True} if keep_unverified else {})})


def correctness_set(
    examples: Sequence[Example], candidates: Sequence[Candidate], scorer: Any, correct_share: float, seed: int = 0,
    keep_unverified: bool = False,
) -> GeneratedSet:
    """Tables 20-21: for a correct_share of the problems (chosen by seeded hash) the lowest-PPL correct answer, for
    the rest the lowest-PPL incorrect one; problems without an answer of the needed kind are dropped (counted).
    keep_unverified (rehearsals): a problem wanting a correct answer takes the lowest-PPL answer of any kind."""
    if not 0.0 <= correct_share <= 1.0:
        raise ValueError(f"correct_share must be in [0, 1], got {correct_share}")
    ranked = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.id}".encode()).hexdigest())
    n_correct = round(correct_share * len(ranked))
    want_correct = {e.id for e in ranked[:n_correct]}
    good = {e.id: e for e in pick_per_problem([e for e in examples if e.id in want_correct], candidates, scorer,
                                              None if keep_unverified else True)}
    bad = {e.id: e for e in pick_per_problem([e for e in examples if e.id not in want_correct], candidates, scorer,
                                             False)}
    chosen = [good.get(e.id) or bad.get(e.id) for e in examples if e.id in good or e.id in bad]
    label = f"Self-Output {round(100 * correct_share)}% correct"
    return GeneratedSet(label, chosen, list(candidates), len(examples), 0.0, 0,
                        {"correct_share_target": correct_share, "correct_kept": len(good), "incorrect_kept": len(bad),
                         **({"unverified": True} if keep_unverified else {})})


def save_examples(path: Any, examples: Sequence[Example]) -> None:
    """JSONL of Examples (what 01_score_tokens and 04_sft read back)."""
    atomic_write_text(path, "".join(json.dumps(e.to_dict()) + "\n" for e in examples))
