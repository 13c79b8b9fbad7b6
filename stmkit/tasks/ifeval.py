"""IFEval (instruction following): the real prompts from a JSONL file you provide, and an offline stand-in that is
NOT IFEval.

IFEval (Zhou et al. 2023; the paper's Table 9 is IFEval after MBPP training) asks for verifiable instructions
("answer in fewer than 100 words", "no commas", "end with this phrase") and checks them with string rules. The
checkers ship on PyPI in ``if-verifiable==0.1.2`` (Google's ``instruction_following_eval`` code, repackaged), but
its prompts do not: ``if_verifiable.get_eval_data`` downloads ``google/IFEval`` from the Hugging Face hub.

- **The real set**: ``load_ifeval_jsonl`` reads IFEval's ``input_data.jsonl`` (one JSON object a line: ``key``,
  ``prompt``, ``instruction_id_list``, ``kwargs``), the file of google-research's ``instruction_following_eval`` and
  the rows of ``google/IFEval``. Give its path as ``eval.ifeval_path`` or ``$STMKIT_IFEVAL_PATH``; with
  ``data.source: hf`` and no path, ``google/IFEval`` is loaded from the hub (or a local HF cache).
- **The stand-in** (``build_standin``): prompts generated from the checkers' own instruction registry, with a fixed
  seed: a handful of plain writing requests, each followed by one to three instructions whose text is the checker's
  own description (``build_description``), with arguments drawn so that the instructions are satisfiable within the
  evaluation's 256 new tokens and never contradict each other (the registry's conflict table). It exercises the
  IFEval path offline and measures instruction following in the same way, but its prompts are machine-worded and
  its numbers are **not** IFEval's. Items carry ``meta["standin"] = True`` and ids ``standin-NNNN``.

Offline, two of the registry's 25 instruction types cannot be checked: their checkers need nltk's ``punkt_tab``
tokenizer data, which is a download (nltk's data server), not a PyPI package (``EXCLUDED`` says which and why). The
stand-in leaves them out, always (so its prompts do not depend on what is installed); a real IFEval file that uses
them is refused unless that data is found (``punkt_available``), with how to get it.

Scoring is IFEval's: an instruction is followed (strict) if its checker accepts the response as written, (loose) if
it accepts one of eight variants (first/last line dropped, ``*`` removed); prompt-level strict accuracy (all
instructions of a prompt followed, the paper's Table 9 metric) is the item's ``correct``; instruction-level accuracy
pools the instructions of all prompts (``accuracies``). The checkers are string and JSON checks, run in-process:
they never execute model-written code.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .base import Example, ScoreOptions, spread
from .registry import Task, register

TASK_NAMES = ("ifeval",)  # what this module registers (read without importing it: registry.task_names)

PIN = "if-verifiable==0.1.2"
IFEVAL_URL = "https://github.com/google-research/google-research/tree/master/instruction_following_eval"
HUB_ID = "google/IFEval"
IFEVAL_PATH_ENV = "STMKIT_IFEVAL_PATH"
FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")

# Instruction types whose checkers need data no package registry ships (checked: they raise LookupError without it).
EXCLUDED: dict[str, str] = {
    "length_constraints:number_sentences": "counts sentences with nltk's Punkt sentence tokenizer, which loads the "
                                           "punkt_tab data (an nltk download, not on PyPI)",
    "change_case:capital_word_frequency": "splits words with nltk.word_tokenize, which loads the punkt_tab data "
                                          "(an nltk download, not on PyPI)",
}

STANDIN_ITEMS = 230  # ten prompts per offline-checkable instruction type as the first instruction


class IFEvalFormatError(ValueError):
    """A line of an IFEval JSONL file is malformed; the message names the file, the line and the field."""


# --------------------------------------------------------------------------------------------------------------
# The checkers (if-verifiable, imported on first use)


@cache
def registry() -> dict[str, Any]:
    """IFEval's instruction registry: instruction id -> checker class (if-verifiable's INSTRUCTION_DICT)."""
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as exc:
        raise ImportError(
            f"the IFEval checkers need the PyPI package {PIN} and its dependencies nltk, langdetect and "
            f"immutabledict ({exc}); run `make setup` (it installs {PIN} with --no-deps)"
        ) from exc
    return dict(INSTRUCTION_DICT)


def standin_types() -> list[str]:
    """The instruction types the stand-in uses: every registered type except EXCLUDED, in registry order."""
    return [t for t in registry() if t not in EXCLUDED]


# Pairs the stand-in never combines beyond the registry's conflict table: SECTION markers are case-sensitive, so
# they contradict all-lowercase (and "Section" all-capital) answers; repeating the request stands alone, so that the
# text to repeat is the request itself and holds no other instruction (one with commas would contradict no_comma).
_STANDIN_CONFLICTS = (("change_case:english_lowercase", "detectable_format:multiple_sections"),
                      ("change_case:english_capital", "detectable_format:multiple_sections"))
_STANDS_ALONE = ("combination:repeat_prompt",)


@cache
def _conflicts() -> dict[str, frozenset[str]]:
    """The registry's conflict table plus the stand-in's own pairs, made symmetric (each type conflicts with
    itself)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = {k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()}
    for a, b in _STANDIN_CONFLICTS:
        table[a].add(b)
    for alone in _STANDS_ALONE:
        table[alone] = set(table)
    for key in list(table):
        for other in list(table[key]):
            table.setdefault(other, set()).add(key)
        table[key].add(key)
    return {k: frozenset(v) for k, v in table.items()}


def punkt_available() -> bool:
    """Whether nltk finds its punkt_tab data here (then the EXCLUDED types can be checked too)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


@contextmanager
def _deterministic():
    """Checkers draw missing arguments from the global `random`, and langdetect samples: fix both, restore after."""
    import langdetect

    state = random.getstate()
    seed = langdetect.DetectorFactory.seed
    random.seed(0)
    langdetect.DetectorFactory.seed = 0
    try:
        yield
    finally:
        random.setstate(state)
        langdetect.DetectorFactory.seed = seed


def description(instruction_id: str, kwargs: dict[str, Any]) -> str:
    """The checker's own wording of an instruction with these arguments (what the stand-in's prompts say)."""
    checker = registry()[instruction_id](instruction_id)
    with _deterministic():
        return checker.build_description(**kwargs)


def check(
    response: str, instruction_ids: Sequence[str], kwargs: Sequence[dict[str, Any]], prompt: str
) -> tuple[list[bool], list[bool]]:
    """Whether each instruction is followed, strict and loose (IFEval's rules, via if-verifiable's checkers)."""
    from if_verifiable.common import evaluate_instructions

    with _deterministic():
        results, _ = evaluate_instructions(response, list(instruction_ids), [dict(k) for k in kwargs], prompt,
                                           registry())
    if not results:  # an empty response (if-verifiable returns no results): every instruction missed, as IFEval
        return [False] * len(instruction_ids), [False] * len(instruction_ids)
    if [r.instruction_id for r in results] != list(instruction_ids):  # if-verifiable skips unknown ids silently
        raise ValueError(f"instructions {list(instruction_ids)} were not all checked; unknown ids are refused on "
                         "loading, so this is a bug")
    return [bool(r.strict_pass) for r in results], [bool(r.loose_pass) for r in results]


# --------------------------------------------------------------------------------------------------------------
# Items


@cache
def checker_version() -> str:
    """The installed checkers, as a pin (``if-verifiable==0.1.2``): part of every item's answer, so of cache keys."""
    from importlib.metadata import version

    return f"if-verifiable=={version('if-verifiable')}"


def _answer(source: str, instruction_ids: Sequence[str], kwargs: Sequence[dict[str, Any]]) -> str:
    """What the checker compares against, as JSON: it enters the evaluation's cache key with the checker version."""
    return json.dumps({"source": source, "checker": checker_version(), "instruction_id_list": list(instruction_ids),
                       "kwargs": list(kwargs)}, sort_keys=True)


def _example(item_id: str, prompt: str, instruction_ids: list[str], kwargs: list[dict[str, Any]], standin: bool,
             key: Any, source: str) -> Example:
    meta = {"key": key, "instruction_id_list": instruction_ids, "kwargs": kwargs, "standin": standin,
            "source": source}
    return Example(id=item_id, task="ifeval", prompt=prompt, answer=_answer(source, instruction_ids, kwargs),
                   meta=meta)


def from_row(row: dict[str, Any], where: str = "row") -> Example:
    """A row in IFEval's schema (key, prompt, instruction_id_list, kwargs) -> Example; malformed rows name the field.

    Arguments that are null are dropped (``google/IFEval`` stores every argument name for every instruction).
    """
    if not isinstance(row, dict):
        raise IFEvalFormatError(f"{where} is a JSON {type(row).__name__}, not an object with fields {FIELDS}")
    for name in FIELDS:
        if name not in row:
            raise IFEvalFormatError(f"{where} has no '{name}' field (IFEval rows have {', '.join(FIELDS)})")
    prompt, ids, kwargs = row["prompt"], row["instruction_id_list"], row["kwargs"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise IFEvalFormatError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IFEvalFormatError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise IFEvalFormatError(f"{where}: 'kwargs' must be a list of {len(ids)} objects, one per instruction in "
                                f"'instruction_id_list'")
    known = registry()
    for i in ids:
        if i not in known:
            raise IFEvalFormatError(f"{where}: instruction '{i}' is not one of IFEval's {len(known)} instruction "
                                    f"types (if-verifiable's registry); is this an IFEval file?")
    clean = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    return _example(str(row["key"]), prompt, list(ids), clean, False, row["key"], "IFEval")


def load_ifeval_jsonl(path: str | Path) -> list[Example]:
    """IFEval's input_data.jsonl (or any file of rows in its schema) -> Examples, in file order.

    Refused, naming the file and line: a line that is not JSON, a missing field, an unknown instruction id, a
    repeated key, and (without nltk's punkt_tab data) any use of the EXCLUDED instruction types.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"IFEval file {path} not found. Give the path of IFEval's input_data.jsonl (from {IFEVAL_URL}, "
            f"data/input_data.jsonl, or the rows of the Hugging Face dataset {HUB_ID} saved as JSON lines) as "
            f"eval.ifeval_path or ${IFEVAL_PATH_ENV}; offline without it, the kit uses its stand-in"
        )
    items, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"line {line_no} of {path}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IFEvalFormatError(f"{where} is not JSON ({exc}); IFEval files hold one JSON object a line") from exc
            ex = from_row(row, where)
            if ex.id in seen:
                raise IFEvalFormatError(f"{where} repeats key {row['key']!r} (first on line {seen[ex.id]})")
            seen[ex.id] = line_no
            items.append(ex)
    if not items:
        raise IFEvalFormatError(f"{path} has no rows; expected IFEval's input_data.jsonl")
    _require_checkable(items, str(path))
    return items


def _require_checkable(items: Sequence[Example], where: str) -> None:
    """Refuse items whose instructions cannot be checked here (EXCLUDED types without punkt_tab), saying why."""
    used = {t for ex in items for t in ex.meta["instruction_id_list"] if t in EXCLUDED}
    if not used or punkt_available():
        return
    n = sum(any(t in EXCLUDED for t in ex.meta["instruction_id_list"]) for ex in items)
    why = "; ".join(f"{t} {EXCLUDED[t]}" for t in sorted(used))
    raise RuntimeError(
        f"{n} of the {len(items)} prompts in {where} use instruction types that cannot be checked here: {why}. "
        "Where there is network, run `python -m nltk.downloader punkt_tab` (or copy nltk_data there and set "
        "NLTK_DATA); no prompt is dropped silently"
    )


def load_hub(fixture: bool = False) -> list[Example]:
    """google/IFEval from the Hugging Face hub (or a local HF cache); with fixture, the stand-in in its schema."""
    if fixture:
        rows = [{"key": ex.id, "prompt": ex.prompt, "instruction_id_list": ex.meta["instruction_id_list"],
                 "kwargs": ex.meta["kwargs"]} for ex in build_standin()]
        out = [from_row(r, f"hub-schema fixture row {i}") for i, r in enumerate(rows)]
        return [_example(ex.id, ex.prompt, ex.meta["instruction_id_list"], ex.meta["kwargs"], True, ex.id,
                         _STANDIN_SOURCE) for ex in out]
    import datasets

    try:
        ds = datasets.load_dataset(HUB_ID, split="train")
    except Exception as exc:  # offline or missing: say how to provide it
        raise RuntimeError(
            f"could not load {HUB_ID} ({type(exc).__name__}: {exc}). Offline? Give IFEval's input_data.jsonl as "
            f"eval.ifeval_path or ${IFEVAL_PATH_ENV}, or use data.source 'embedded' for the stand-in"
        ) from exc
    items = [from_row(dict(row), f"{HUB_ID} row {i}") for i, row in enumerate(ds)]
    _require_checkable(items, HUB_ID)
    return items


# --------------------------------------------------------------------------------------------------------------
# The offline stand-in (NOT IFEval)

_STANDIN_SOURCE = (f"stand-in: prompts generated from the IFEval instruction registry of {PIN}; NOT IFEval")


@dataclass(frozen=True)
class _Request:
    """A plain writing request: words an answer will likely use, and related words it may not."""

    text: str
    likely: tuple[str, ...]  # forbidden-word and keyword-frequency candidates
    related: tuple[str, ...]  # keywords to include, first words of a paragraph


_REQUESTS = (
    _Request("Write a short blog post about a weekend trip to the mountains.", ("mountains", "trip", "weekend"),
             ("hiking", "lake", "cabin", "sunrise")),
    _Request("Write a letter to a friend describing your new job.", ("job", "work", "friend"),
             ("office", "manager", "colleague", "lunch")),
    _Request("Describe how to make a good cup of tea.", ("tea", "water", "cup"), ("kettle", "sugar", "lemon", "steep")),
    _Request("Write a product description for a new pair of running shoes.", ("shoes", "running", "comfortable"),
             ("lightweight", "grip", "marathon", "cushion")),
    _Request("Explain why people should drink enough water every day.", ("water", "body", "health"),
             ("hydration", "energy", "thirst", "skin")),
    _Request("Write a short story about a cat who finds a lost key.", ("cat", "key", "lost"),
             ("garden", "door", "owner", "secret")),
    _Request("Give some advice to a student who is starting university.", ("student", "university", "study"),
             ("library", "friends", "schedule", "sleep")),
    _Request("Write a review of a small Italian restaurant.", ("restaurant", "food", "pasta"),
             ("waiter", "dessert", "price", "atmosphere")),
    _Request("Describe your favourite season and why you like it.", ("season", "weather", "like"),
             ("autumn", "leaves", "snow", "warm")),
    _Request("Write an email to your manager asking for a day off.", ("day", "manager", "work"),
             ("appointment", "family", "friday", "project")),
    _Request("Explain to a ten-year-old what a computer does.", ("computer", "information", "things"),
             ("screen", "keyboard", "memory", "program")),
    _Request("Write a short speech for the opening of a new public library.", ("library", "books", "community"),
             ("children", "reading", "future", "volunteers")),
    _Request("Summarise the benefits of riding a bicycle to work.", ("bicycle", "work", "ride"),
             ("traffic", "exercise", "money", "pollution")),
    _Request("Write a poem about the sea.", ("sea", "waves", "water"), ("salt", "moon", "sailor", "horizon")),
    _Request("Describe a busy market in a big city.", ("market", "city", "people"),
             ("fruit", "noise", "vendors", "spices")),
    _Request("Write a thank-you note to a teacher.", ("teacher", "thank", "class"),
             ("lesson", "patience", "grade", "advice")),
)
# constrained_response ("answer with one of: My answer is yes/no/maybe.") stands alone and asks a yes/no question.
_YES_NO = ("Is it a good idea to learn a second language as an adult?", "Should schools start later in the morning?",
           "Is tea healthier than coffee?", "Can a cat be trained like a dog?", "Is it worth keeping a diary?")
_ENDINGS = ("Any other questions?", "Is there anything else I can help with?", "Let me know if you have questions.")
_COMMON_LETTERS, _RARE_LETTERS = "etaoinsr", "zqxjkv"


def _kwargs(kind: str, request: _Request, rng: random.Random, used: set[str]) -> dict[str, Any]:
    """Arguments for one instruction: drawn with the item's rng, satisfiable within 256 new tokens."""

    def word(pool: Sequence[str]) -> str:
        free = [w for w in pool if w not in used] or list(pool)
        w = rng.choice(free)
        used.add(w)
        return w

    if kind == "keywords:existence":
        return {"keywords": [word(request.related) for _ in range(rng.choice((1, 2)))]}
    if kind == "keywords:frequency":
        return {"keyword": word(request.likely), "frequency": rng.choice((2, 3)),
                "relation": rng.choice(("at least", "less than"))}
    if kind == "keywords:forbidden_words":
        return {"forbidden_words": [word(request.likely) for _ in range(rng.choice((1, 2)))]}
    if kind == "keywords:letter_frequency":
        if rng.random() < 0.5:
            return {"letter": rng.choice(_COMMON_LETTERS), "let_frequency": rng.choice((10, 15, 20)),
                    "let_relation": "at least"}
        return {"letter": rng.choice(_RARE_LETTERS), "let_frequency": rng.choice((3, 4, 5)), "let_relation": "less than"}
    if kind == "language:response_language":
        from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

        return {"language": rng.choice(sorted(c for c in LANGUAGE_CODES if c != "en"))}
    if kind == "length_constraints:number_paragraphs":
        return {"num_paragraphs": rng.choice((2, 3, 4))}
    if kind == "length_constraints:number_words":
        if rng.random() < 0.5:
            return {"num_words": rng.choice((40, 60, 80, 100)), "relation": "at least"}
        return {"num_words": rng.choice((50, 80, 100, 150)), "relation": "less than"}
    if kind == "length_constraints:nth_paragraph_first_word":
        n = rng.choice((2, 3, 4))
        return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": word(request.related)}
    if kind == "detectable_content:number_placeholders":
        return {"num_placeholders": rng.choice((1, 2, 3))}
    if kind == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}
    if kind == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.choice((2, 3, 4, 5))}
    if kind == "detectable_format:number_highlighted_sections":
        return {"num_highlights": rng.choice((1, 2, 3))}
    if kind == "detectable_format:multiple_sections":
        return {"section_spliter": rng.choice(("Section", "SECTION")), "num_sections": rng.choice((2, 3, 4))}
    if kind == "startend:end_checker":
        return {"end_phrase": rng.choice(_ENDINGS)}
    if kind == "combination:repeat_prompt":
        return {"prompt_to_repeat": request.text}
    return {}  # no arguments (constrained_response, json_format, title, two_responses, quotation, ...)


def _draw(index: int, seed: int, order: Sequence[str]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """Item `index`: its prompt, instruction ids and arguments (its own rng: the first n items of any size agree)."""
    rng = random.Random(f"stmkit-ifeval-standin:{seed}:{index}")
    request = rng.choice(_REQUESTS)
    kinds = [order[index % len(order)]]
    conflicts = _conflicts()
    for _ in range(rng.choices((0, 1, 2), weights=(6, 3, 1))[0]):  # 1-3 instructions, about as in IFEval
        free = [t for t in order if not any(t in conflicts[k] for k in kinds)]
        if free:
            kinds.append(rng.choice(free))
    if kinds == ["detectable_format:constrained_response"]:
        request = _Request(rng.choice(_YES_NO), (), ())
    used: set[str] = set()
    ids, args, parts = [], [], [request.text]
    for kind in kinds:
        kw = _kwargs(kind, request, rng, used)
        ids.append(kind)
        args.append(kw)
        parts.append(description(kind, kw))
    return " ".join(parts), ids, args


def build_standin(n_items: int = STANDIN_ITEMS, seed: int = 0) -> list[Example]:
    """The offline stand-in (NOT IFEval): n_items prompts, the same for the same seed on every machine."""
    if n_items < 1:
        raise ValueError(f"n_items={n_items!r} must be >= 1")
    order = standin_types()
    random.Random(f"stmkit-ifeval-standin:{seed}:order").shuffle(order)
    items = []
    for i in range(n_items):
        prompt, ids, args = _draw(i, seed, order)
        items.append(_example(f"standin-{i:04d}", prompt, ids, args, True, f"standin-{i:04d}", _STANDIN_SOURCE))
    return items


# --------------------------------------------------------------------------------------------------------------
# Scoring


def score(example: Example, generated: str) -> dict[str, Any]:
    """IFEval's verdict on one response: correct iff every instruction is followed (prompt-level strict)."""
    ids, kwargs = example.meta.get("instruction_id_list"), example.meta.get("kwargs")
    if ids is None or kwargs is None:
        raise ValueError(f"item {example.id!r} has no meta['instruction_id_list'] / meta['kwargs']; load it with "
                         "stmkit.tasks.ifeval (load_items, load_ifeval_jsonl or build_standin)")
    strict, loose = check(generated, ids, kwargs, example.prompt)
    missed = [i for i, ok in zip(ids, strict, strict=True) if not ok]
    error = ("empty response" if not generated.strip() else
             f"not followed: {', '.join(missed)}" if missed else "")
    return {"extracted": f"{sum(strict)}/{len(ids)} followed", "correct": not missed, "error": error,
            "instruction_id_list": list(ids), "followed_strict": strict, "followed_loose": loose}


def score_many(examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions) -> list[dict[str, Any]]:
    """`score` for many items (in-process: the checkers are string checks, nothing model-written runs)."""
    if len(examples) != len(generated):
        raise ValueError(f"ifeval: {len(examples)} examples but {len(generated)} generated answers")
    return [score(ex, text) for ex, text in zip(examples, generated, strict=True)]


def accuracies(records: Iterable[dict[str, Any]]) -> dict[str, float | int]:
    """IFEval's four accuracies from scored records (score's verdicts, or evaluation's per-item records).

    prompt_strict (the paper's Table 9 metric) and prompt_loose: share of prompts with every instruction followed;
    instruction_strict and instruction_loose: share of all instructions followed, pooled over prompts.
    """
    rows = list(records)
    if not rows:
        raise ValueError("no IFEval records to summarise")
    for r in rows:
        if "followed_strict" not in r or "followed_loose" not in r:
            raise KeyError(f"record {r.get('id', '?')!r} has no followed_strict/followed_loose lists; it was not "
                           "scored by stmkit.tasks.ifeval")
    n_instr = sum(len(r["followed_strict"]) for r in rows)
    return {
        "prompt_strict": sum(all(r["followed_strict"]) for r in rows) / len(rows),
        "prompt_loose": sum(all(r["followed_loose"]) for r in rows) / len(rows),
        "instruction_strict": sum(sum(r["followed_strict"]) for r in rows) / n_instr,
        "instruction_loose": sum(sum(r["followed_loose"]) for r in rows) / n_instr,
        "n_prompts": len(rows),
        "n_instructions": n_instr,
    }


def instruction_ci(records: Sequence[dict[str, Any]], n_resamples: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """Instruction-level strict accuracy with a percentile-bootstrap interval that resamples prompts (instructions
    of one prompt are not independent)."""
    import numpy as np

    followed = np.array([sum(r["followed_strict"]) for r in records], dtype=float)
    total = np.array([len(r["followed_strict"]) for r in records], dtype=float)
    if followed.size == 0 or total.sum() == 0:
        raise ValueError("no IFEval instructions to summarise")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, followed.size, (n_resamples, followed.size))
    stats = followed[idx].sum(axis=1) / total[idx].sum(axis=1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(followed.sum() / total.sum()), float(low), float(high)


def fixed_response_scores(items: Sequence[Example], response: str) -> dict[str, float | int]:
    """The accuracies of one fixed response given to every item: the floor a model must beat (e.g. "" scores 0)."""
    return accuracies(score(ex, response) for ex in items)


# --------------------------------------------------------------------------------------------------------------
# The registered task: IFEval from a file (or the hub) when given, else the stand-in


def load_items(split: str = "test", n: int = 0, path: str | Path | None = None, *,
               source: str = "embedded") -> list[Example]:
    """IFEval items: the file at path (or $STMKIT_IFEVAL_PATH) if given, else by data source: the stand-in
    ('embedded'), google/IFEval from the hub ('hf'), or the stand-in read through the hub-schema reader
    ('hub-fixture').

    Only a "test" split exists (IFEval is one evaluation set). With n > 0 on the real set, the n prompts are a
    deterministic spread over the file (ordered by split_rank), in file order; on the stand-in, its first n.
    """
    if split != "test":
        raise ValueError(f"task ifeval has only a 'test' split (IFEval or the stand-in), not {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    given = path or os.environ.get(IFEVAL_PATH_ENV) or None
    if given is not None:
        items, what = load_ifeval_jsonl(given), f"IFEval in {given}"
    elif source == "hf":
        items, what = load_hub(), HUB_ID
    elif source == "hub-fixture":
        items, what = load_hub(fixture=True), "the IFEval hub-schema fixture"
    elif source == "embedded":
        items, what = build_standin(), "the IFEval stand-in"
        if n > len(items):
            raise ValueError(f"asked for {n} items of {what}, which has only {len(items)}")
        return items[:n] if n else items
    else:
        raise ValueError(f"unknown data source '{source}' (use 'embedded', 'hf' or 'hub-fixture')")
    return spread("ifeval", items, n, what)


def _load(split: str, n: int, source: str, data_dir: str | None) -> list[Example]:
    return load_items(split, n, data_dir or None, source=source)


TASK = register(
    Task(
        name="ifeval",
        kind="generate",
        title="IFEval",
        embedded=None,
        note=f"IFEval from ${IFEVAL_PATH_ENV} / eval.ifeval_path; else the offline stand-in (NOT IFEval, see ifeval.py)",
        scorer=score_many,
        loader=_load,
    )
)
