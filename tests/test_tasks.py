"""Embedded benchmarks: normalised records, committed deterministic splits, hub-schema loaders (offline fixtures)."""

from __future__ import annotations

import json

import pytest

from stmkit.tasks import SPLITS, compute_splits, convert_rows, get_task, load
from stmkit.tasks.registry import committed_splits

EMBEDDED = ["mbpp", "math", "gsm8k", "arc_challenge", "arc_easy", "sciq", "piqa"]
SHIPPED_COUNTS = {"mbpp": 500, "math": 5000, "gsm8k": 1319, "arc_challenge": 1471, "arc_easy": 2946, "sciq": 1000,
                  "piqa": 1838}


@pytest.mark.parametrize("name", EMBEDDED)
def test_committed_splits_match_the_rule_and_are_disjoint(name):
    task = get_task(name)
    computed = compute_splits(task)
    assert computed == committed_splits(name), "run `stmkit splits` and commit stmkit/data/splits"
    ids = [i for part in computed.values() for i in part]
    assert len(ids) == len(set(ids)) == SHIPPED_COUNTS[name]
    assert set(computed) <= set(SPLITS)


@pytest.mark.parametrize("name", EMBEDDED)
def test_records_are_normalised(name):
    items = load(name, "test", n=5)
    assert len(items) == 5
    for ex in items:
        assert ex.task == name and ex.id and ex.prompt
        if get_task(name).kind == "mc":
            assert ex.choices and 0 <= ex.gold_index < len(ex.choices)
        else:
            assert ex.response and ex.answer


def test_mbpp_records_have_tests_and_fenced_code():
    ex = load("mbpp", "train", n=1)[0]
    assert ex.tests and all(t.startswith("assert") for t in ex.tests)
    assert ex.response.startswith("```python\n") and "\r" not in ex.response


def test_asking_for_too_many_items_is_an_error():
    with pytest.raises(ValueError, match="has only"):
        load("mbpp", "validation", n=10_000)


def test_unknown_task_and_split_are_clear_errors():
    with pytest.raises(KeyError, match="unknown task 'mbpq'"):
        get_task("mbpq")
    with pytest.raises(ValueError, match="unknown split"):
        load("mbpp", "dev")


# Rows in the Hugging Face hub schemas of the paper's datasets, loaded offline through `datasets`.
HUB_ROWS = {
    "mbpp": {"task_id": 601, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
             "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []},
    "math": {"problem": "What is $1+1$?", "level": "Level 1", "type": "Prealgebra",
             "solution": "We have $1+1=\\boxed{2}$."},
    "gsm8k": {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    "arc_challenge": {"id": "Mercury_1", "question": "Which is a metal?",
                      "choices": {"text": ["wood", "iron", "glass", "paper"], "label": ["A", "B", "C", "D"]},
                      "answerKey": "B"},
}


@pytest.mark.parametrize("name", list(HUB_ROWS))
def test_hub_schema_loaders_on_fixture_files(name, tmp_path):
    import datasets

    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(HUB_ROWS[name]) + "\n")
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    (ex,) = convert_rows(get_task(name), ds, str(path))
    assert ex.task == name and ex.prompt
    expected = {"mbpp": "def add(a, b):\n    return a + b", "math": "2", "gsm8k": "7", "arc_challenge": "B"}[name]
    assert ex.answer == expected


def test_hub_row_missing_a_field_names_the_row_and_field():
    with pytest.raises(ValueError, match="row 0 has no field 'question'"):
        convert_rows(get_task("gsm8k"), [{"answer": "#### 1"}], "fixture")


def test_config_validation_knows_every_task_without_importing_one():
    import subprocess
    import sys

    from stmkit.tasks.registry import TASKS, get_task, task_names

    get_task("mbpp")  # imports every task module
    assert task_names() == set(TASKS)
    code = ("import sys; from stmkit.config import load_profile; load_profile('cpu-demo'); "
            "print(sorted(m for m in sys.modules if m.startswith(('stmkit.tasks.', 'stmkit.sandbox'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['stmkit.tasks.base', 'stmkit.tasks.registry']"
