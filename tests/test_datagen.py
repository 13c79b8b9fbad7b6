"""Self-Output / Rephrase builders: checked answers, lowest-PPL correct choice, drops counted, chunks resumable."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stmkit import datagen
from stmkit.cache import Cache
from stmkit.generation import Completion, sampling
from stmkit.scoring import Scored
from stmkit.tasks import load


@pytest.fixture(scope="module")
def problems():
    return load("mbpp", "train", n=3)


def _code(ex):
    return ex.response  # the fenced ground-truth code


def test_mbpp_checker_runs_tests_in_the_sandbox(problems):
    answers = [_code(p) for p in problems] + ["```python\ndef nope():\n    pass\n```"]
    verdicts = datagen.check_answers("mbpp", list(problems) + [problems[0]], answers, timeout_s=10)
    assert verdicts == [True, True, True, False]


def test_math_and_gsm8k_checkers():
    m = load("math", "train", n=1)[0]
    assert datagen.check_answers("math", [m, m], [f"Answer: {m.answer}", "Answer: 12345678"]) == [True, False]
    g = load("gsm8k", "train", n=1)[0]
    assert datagen.check_answers("gsm8k", [g, g], [f"so #### {g.answer}", "#### -1"]) == [True, False]
    with pytest.raises(ValueError, match="no answer checker for task 'piqa'"):
        datagen.check_answers("piqa", [], [])


def _fake_scorer(examples):
    """PPL grows with response length: shorter correct answers win."""
    return [Scored(e.id, [1, 2, 3], 2, [-0.01 * len(e.response)]) for e in examples]


def _fake_generate(calls):
    def gen(model, tok, prompts, decoding, **kw):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            ex = next(e for e in PROBLEMS if e.prompt == p)
            good = ex.response
            samples = [Completion("garbage", [1]), Completion(good + "\n# a longer correct answer", [1] * 5),
                       Completion(good, [1] * 3)]
            out.append(samples[: decoding.num_samples] if ex.id != PROBLEMS[-1].id else [Completion("x", [1])] * 3)
        return out
    return gen


PROBLEMS = load("mbpp", "train", n=3)


def test_self_output_keeps_lowest_ppl_correct_and_drops_unsolved(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(datagen, "generate", _fake_generate(calls))
    cache = Cache(tmp_path)
    s = datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), cache=cache)
    assert s.problems == 3 and [e.id for e in s.examples] == [p.id for p in PROBLEMS[:2]]
    for e, p in zip(s.examples, PROBLEMS, strict=False):
        assert e.response == p.response and e.prompt == p.prompt  # the shorter (lower-PPL) correct answer
    assert s.stats["samples"] == 9 and s.stats["samples_correct"] == 4 and s.stats["kept_share"] == pytest.approx(2 / 3)
    again = datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), cache=cache)
    assert len(calls) == 1 and [e.response for e in again.examples] == [e.response for e in s.examples]


def test_sampling_chunks_hold_one_batch_of_sequences(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(datagen, "generate", _fake_generate(calls))
    datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), batch_size=6,
                        cache=Cache(tmp_path))
    assert calls == [2, 1]  # 6 sequences per batch: 2 prompts x 3 samples, then the last prompt
    datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), batch_size=3,
                        cache=Cache(tmp_path))
    assert calls == [2, 1, 1, 1, 1]  # another batching samples differently: its own cache entries


def test_correctness_ablation_shares(monkeypatch, tmp_path):
    monkeypatch.setattr(datagen, "generate", _fake_generate([]))
    s = datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), cache=Cache(tmp_path))
    all_bad = datagen.correctness_set(PROBLEMS, s.candidates, _fake_scorer, 0.0)
    assert all_bad.info["correct_kept"] == 0 and all(e.response in ("garbage", "x") for e in all_bad.examples)
    all_good = datagen.correctness_set(PROBLEMS, s.candidates, _fake_scorer, 1.0)
    assert all_good.info["incorrect_kept"] == 0 and len(all_good.examples) == 2  # the unsolved problem is dropped
    with pytest.raises(ValueError):
        datagen.correctness_set(PROBLEMS, s.candidates, _fake_scorer, 1.5)


def test_candidates_scored_once_give_the_same_correctness_sets(monkeypatch, tmp_path):
    monkeypatch.setattr(datagen, "generate", _fake_generate([]))
    s = datagen.self_output("mbpp", PROBLEMS, (None, None, "fp"), _fake_scorer, sampling(3), cache=Cache(tmp_path))
    calls = []

    def counting(examples):
        calls.append(len(examples))
        return _fake_scorer(examples)

    scored = datagen.score_candidates(PROBLEMS, s.candidates, counting)
    assert calls == [len(s.candidates)] and all(c.seq_ppl is not None for c in scored)
    for share in (1.0, 0.5, 0.0):
        fresh = datagen.correctness_set(PROBLEMS, s.candidates, _fake_scorer, share)
        reused = datagen.correctness_set(PROBLEMS, scored, counting, share)
        assert [(e.id, e.response) for e in reused.examples] == [(e.id, e.response) for e in fresh.examples]
    assert len(calls) == 1  # the sets read the scores instead of scoring again
    means = datagen.mean_ppl_per_problem(scored)
    assert set(means) == {p.id for p in PROBLEMS}  # every problem, solved or not
    mine = [c.seq_ppl for c in scored if c.item_id == PROBLEMS[0].id]
    assert means[PROBLEMS[0].id] == pytest.approx(sum(mine) / len(mine))


def test_rephrase_keeps_accepted_rewrites(monkeypatch, tmp_path):
    def gen(model, tok, prompts, decoding, **kw):
        return [[Completion(p.response if i == 0 else "no code", [1, 1])] for i, p in enumerate(PROBLEMS)]

    monkeypatch.setattr(datagen, "generate", gen)
    r = datagen.rephrase("mbpp", PROBLEMS, (None, None, "fp"), cache=Cache(tmp_path))
    assert [e.id for e in r.examples] == [PROBLEMS[0].id] and r.stats["generated_tokens"] == 6
    assert r.examples[0].prompt == PROBLEMS[0].prompt  # trained on the original instruction


def test_generated_sets_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "so.jsonl"
    datagen.save_examples(path, [replace(PROBLEMS[0], response="x")])
    import json

    from stmkit.tasks import Example

    back = [Example.from_dict(json.loads(line)) for line in path.read_text().splitlines()]
    assert back[0].response == "x" and back[0].tests == PROBLEMS[0].tests
