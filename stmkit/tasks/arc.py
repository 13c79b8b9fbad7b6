"""ARC-Challenge and ARC-Easy: science multiple choice; generated answer letter (paper) or log-likelihood."""

from __future__ import annotations

from typing import Any

from . import prompts
from .base import Example
from .embedded import read_docs
from .registry import Task, register

LETTERS = "ABCDE"


def make(task: str, item_id: str, question: str, choices: list[str], gold: int) -> Example:
    """A multiple-choice science question -> Example (answer = gold letter)."""
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


def _from_olmo(task: str, doc: dict[str, Any]) -> Example:
    question = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
    return make(task, doc["id"], question, list(doc["choices"]), int(doc["gold"]))


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


for _name, _folder, _title, _sizes, _config in [
    ("arc_challenge", "arc_challenge", "ARC-Challenge", {"train": 472, "test": 700}, "ARC-Challenge"),
    ("arc_easy", "arc_easy", "ARC-Easy", {"train": 1176, "test": 1200}, "ARC-Easy"),
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
        )
    )
