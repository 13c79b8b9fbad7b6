"""IFEval: the deterministic offline stand-in, the checkers' verdicts on hand-written answers, the JSONL reader and
its errors, and the task end to end on the tiny model."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from stmkit.cache import Cache
from stmkit.config import ConfigError, EvalConfig
from stmkit.evaluation import evaluate_task, load_task_items
from stmkit.tasks import ScoreOptions, get_task, ifeval, load, score


def _row(key, ids, kwargs, prompt="Write about tea."):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- the stand-in ---------------------------------------------------------------------------------------------


def test_standin_is_deterministic_and_prefix_stable():
    a, b = ifeval.build_standin(60), ifeval.build_standin(60)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.to_dict() for e in ifeval.build_standin()[:60]] == [e.to_dict() for e in a]
    assert [e.prompt for e in ifeval.build_standin(60, seed=1)] != [e.prompt for e in a]


def test_standin_items_are_labelled_and_use_only_offline_types():
    items = ifeval.build_standin()
    assert len(items) == ifeval.STANDIN_ITEMS
    assert [e.id for e in items[:2]] == ["standin-0000", "standin-0001"]
    assert all(e.meta["standin"] and "NOT IFEval" in e.meta["source"] and e.task == "ifeval" for e in items)
    types = ifeval.standin_types()
    assert len(types) == 23 and not set(types) & set(ifeval.EXCLUDED)
    assert set(ifeval.EXCLUDED) | set(types) == set(ifeval.registry())  # every registry type: used or excluded
    # Each type leads one of the first 23 prompts; 1-3 instructions per prompt, none twice, none in conflict.
    assert {e.meta["instruction_id_list"][0] for e in items[:23]} == set(types)
    conflicts = ifeval._conflicts()
    for e in items:
        ids = e.meta["instruction_id_list"]
        assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
        assert not any(b in conflicts[a] for a, b in combinations(ids, 2)), ids
        assert len(e.meta["kwargs"]) == len(ids)
    assert any(len(e.meta["instruction_id_list"]) > 1 for e in items)


def test_standin_prompts_are_the_request_and_the_checkers_own_wording():
    ex = next(e for e in ifeval.build_standin() if e.meta["instruction_id_list"] == ["punctuation:no_comma"])
    assert ex.prompt.endswith(" In your entire response, refrain from the use of any commas.")
    assert ex.response == ""  # no ground truth: IFEval has none
    repeat = next(e for e in ifeval.build_standin() if e.meta["instruction_id_list"][0] == "combination:repeat_prompt")
    assert repeat.meta["instruction_id_list"] == ["combination:repeat_prompt"]  # stands alone
    assert repeat.prompt.startswith(repeat.meta["kwargs"][0]["prompt_to_repeat"])


def test_every_standin_checker_runs_offline():
    """No stand-in instruction needs downloaded data: each checker gives a verdict on a plain answer."""
    for ex in ifeval.build_standin():
        verdict = ifeval.score(ex, "Tea is a drink made from leaves.\n\nIt is popular.")
        assert len(verdict["followed_strict"]) == len(ex.meta["instruction_id_list"])


def test_excluded_types_need_punkt_data():
    if ifeval.punkt_available():
        pytest.skip("nltk's punkt_tab data is installed here")
    for kind in ifeval.EXCLUDED:
        with pytest.raises(LookupError):
            ifeval.check("One. Two.", [kind], [{}], "prompt")


# --- checker verdicts on hand-written answers -----------------------------------------------------------------


CASES = [
    ("punctuation:no_comma", {}, "Tea is warm and kind.", "Tea is warm, and kind."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Tea is good. Any other questions?",
     "Any other questions? Tea is good."),
    ("detectable_format:title", {}, "<<Ode to tea>>\nTea is good.", "Ode to tea\nTea is good."),
    ("keywords:existence", {"keywords": ["kettle", "lemon"]}, "Boil the kettle, add lemon.", "Boil water."),
    ("keywords:forbidden_words", {"forbidden_words": ["tea"]}, "A warm drink.", "A warm tea."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Tea is good.",
     "Tea is good and warm and kind."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First. Second."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Tea.\n\nP.S. Enjoy.", "Tea. Enjoy."),
    ("change_case:english_lowercase", {}, "tea is a warm drink that many people enjoy in the morning.",
     "Tea is a warm drink that many people enjoy in the morning."),
    ("detectable_format:json_format", {}, '```json\n{"drink": "tea"}\n```', "drink: tea"),
]


@pytest.mark.parametrize("kind, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_checker_verdicts_on_hand_written_answers(tmp_path, kind, kwargs, good, bad):
    (ex,) = ifeval.load_ifeval_jsonl(_write(tmp_path / "input_data.jsonl", [_row(1, [kind], [kwargs])]))
    yes, no = ifeval.score(ex, good), ifeval.score(ex, bad)
    assert yes["correct"] and yes["followed_strict"] == [True] and yes["error"] == ""
    assert not no["correct"] and no["followed_strict"] == [False] and no["error"] == f"not followed: {kind}"


def test_prompt_level_needs_every_instruction_and_loose_forgives_a_preamble(tmp_path):
    ids = ["punctuation:no_comma", "startend:quotation"]
    (ex,) = ifeval.load_ifeval_jsonl(_write(tmp_path / "f.jsonl", [_row(7, ids, [{}, {}])]))
    both = ifeval.score(ex, '"Tea is warm and kind."')
    one = ifeval.score(ex, '"Tea is warm, and kind."')
    preamble = ifeval.score(ex, 'Sure\n"Tea is warm and kind."')
    empty = ifeval.score(ex, "   ")
    assert both["correct"] and both["extracted"] == "2/2 followed"
    assert not one["correct"] and one["followed_strict"] == [False, True]
    assert preamble["followed_strict"] == [True, False] and preamble["followed_loose"] == [True, True]
    assert empty["followed_strict"] == [False, False] and empty["error"] == "empty response"
    acc = ifeval.accuracies([both, one, preamble, empty])
    assert acc["prompt_strict"] == 0.25 and acc["prompt_loose"] == 0.5
    assert acc["instruction_strict"] == 4 / 8 and acc["instruction_loose"] == 5 / 8
    assert (acc["n_prompts"], acc["n_instructions"]) == (4, 8)
    point, low, high = ifeval.instruction_ci([both, one, preamble, empty], n_resamples=200)
    assert point == 0.5 and low <= point <= high


def test_an_empty_or_fixed_answer_is_the_floor():
    items = ifeval.build_standin(40)
    assert ifeval.fixed_response_scores(items, "")["prompt_strict"] == 0.0
    assert ifeval.fixed_response_scores(items, "")["instruction_strict"] == 0.0
    trivial = ifeval.fixed_response_scores(items, "I cannot help with that.")
    assert 0 < trivial["instruction_strict"] < 1  # a short non-answer follows some instructions (no commas, ...)


# --- the real IFEval file -------------------------------------------------------------------------------------


def test_reads_ifeval_jsonl_and_drops_null_arguments(tmp_path):
    path = _write(tmp_path / "input_data.jsonl", [
        _row(1000, ["punctuation:no_comma", "length_constraints:number_words"],
             [{}, {"num_words": 300, "relation": "at least", "keywords": None}]),
        "",
        _row(1001, ["detectable_format:title"], [{"num_highlights": None}], prompt="Write a poem."),
    ])
    items = ifeval.load_ifeval_jsonl(path)
    assert [e.id for e in items] == ["1000", "1001"]
    assert items[0].meta["kwargs"] == [{}, {"num_words": 300, "relation": "at least"}]
    assert items[1].meta["kwargs"] == [{}] and not items[1].meta["standin"]
    assert items[1].prompt == "Write a poem." and json.loads(items[1].answer)["checker"] == ifeval.PIN


@pytest.mark.parametrize("line, message", [
    ("{not json", r"line 2 of .*input_data.jsonl is not JSON"),
    (json.dumps({"key": 2, "prompt": "p", "kwargs": [{}]}), r"line 2 of .* has no 'instruction_id_list' field"),
    (json.dumps(_row(2, ["keywords:not_a_type"], [{}])), r"line 2 .* instruction 'keywords:not_a_type' is not one"),
    (json.dumps(_row(2, ["punctuation:no_comma"], [])), r"line 2 .* 'kwargs' must be a list of 1 objects"),
    (json.dumps(_row(1, ["punctuation:no_comma"], [{}])), r"line 2 .* repeats key 1 \(first on line 1\)"),
    ("[1, 2]", r"line 2 of .* is a JSON list, not an object"),
])
def test_a_malformed_line_is_an_error_naming_the_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "input_data.jsonl", [_row(1, ["punctuation:no_comma"], [{}]), line])
    with pytest.raises(ifeval.IFEvalFormatError, match=message):
        ifeval.load_ifeval_jsonl(path)


def test_a_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.jsonl not found.*input_data.jsonl.*STMKIT_IFEVAL_PATH"):
        ifeval.load_ifeval_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="ifeval_path.*not a file"):
        EvalConfig(ifeval_path=str(tmp_path / "nope.jsonl")).validate("eval")


def test_types_that_need_punkt_are_refused_not_dropped(tmp_path):
    if ifeval.punkt_available():
        pytest.skip("nltk's punkt_tab data is installed here")
    path = _write(tmp_path / "input_data.jsonl", [
        _row(1, ["punctuation:no_comma"], [{}]),
        _row(2, ["length_constraints:number_sentences"], [{"num_sentences": 3, "relation": "less than"}]),
    ])
    with pytest.raises(RuntimeError, match=r"1 of the 2 prompts .*number_sentences.*nltk.downloader punkt_tab"):
        ifeval.load_ifeval_jsonl(path)


# --- the registered task --------------------------------------------------------------------------------------


def test_the_task_loads_the_standin_offline_and_a_file_when_given(tmp_path, monkeypatch):
    monkeypatch.delenv(ifeval.IFEVAL_PATH_ENV, raising=False)
    assert get_task("ifeval").title == "IFEval"
    standin = ifeval.build_standin(5)
    assert [e.id for e in load("ifeval", "test", 5)] == [e.id for e in standin]
    assert [e.prompt for e in load_task_items("ifeval", 5)] == [e.prompt for e in standin]
    fixture = load_task_items("ifeval", 5, source="hub-fixture")  # read through the hub-schema reader
    prompts = {e.id: e.prompt for e in ifeval.build_standin()}
    assert len(fixture) == 5 and all(prompts[e.id] == e.prompt and e.meta["standin"] for e in fixture)
    rows = [_row(k, ["punctuation:no_comma"], [{}]) for k in range(10)]
    path = _write(tmp_path / "input_data.jsonl", rows)
    picked = load_task_items("ifeval", 4, task_data={"ifeval": str(path)})
    assert len(picked) == 4 and not picked[0].meta["standin"]
    assert [int(e.id) for e in picked] == sorted(int(e.id) for e in picked)  # a spread, in file order
    assert [e.id for e in load("ifeval", "test", 4, data_dir=str(path))] == [e.id for e in picked]
    assert load_task_items("ifeval", 4, task_data={"bird": str(path)})[0].meta["standin"]  # another task's folder: ignored
    monkeypatch.setenv(ifeval.IFEVAL_PATH_ENV, str(path))
    assert len(load("ifeval", "test")) == 10
    with pytest.raises(ValueError, match="only a 'test' split"):
        load("ifeval", "train")
    with pytest.raises(ValueError, match="has only 10"):
        load("ifeval", "test", 11)


def test_the_task_scorer_returns_per_instruction_verdicts():
    items = ifeval.build_standin(3)
    verdicts = score("ifeval", items, ["", "Tea.", "Tea is good."], ScoreOptions())
    assert [v["correct"] for v in verdicts][0] is False
    assert all(set(v) >= {"extracted", "correct", "error", "followed_strict", "followed_loose"} for v in verdicts)


def test_evaluate_task_keeps_the_instruction_verdicts(tiny, tmp_path):
    model, tok = tiny
    items = load("ifeval", "test", 3)
    res = evaluate_task(model, tok, "ifeval", items, max_new_tokens=8, cache=Cache(tmp_path), progress=False)
    acc = ifeval.accuracies(res.records)
    assert res.n == 3 and acc["n_prompts"] == 3 and res.accuracy == acc["prompt_strict"]
    assert all(len(r["followed_strict"]) == len(e.meta["instruction_id_list"]) for r, e in zip(res.records, items, strict=True))
