"""Self-BLEU (paper Table 6): the shipped BLEU metric, Self-BLEU of one question's samples, sampling on the tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stmkit import diversity, generation
from stmkit.cache import Cache
from stmkit.transfer import load_metric


@pytest.fixture(scope="module")
def bleu():
    return load_metric("bleu")


def test_bleu_metric_identity_and_hand_computed(bleu):
    same = bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])
    assert same["bleu"] == 1.0 and same["brevity_penalty"] == 1.0 and same["translation_length"] == 6
    # "a b c d" vs "a b c e": clipped matches 3/4, 2/3, 1/2, 0/1; unsmoothed BLEU-4 is 0, add-one smoothing gives
    # (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25.
    plain = bleu.compute(predictions=["a b c d"], references=[["a b c e"]])
    assert plain["bleu"] == 0.0 and plain["precisions"] == pytest.approx([3 / 4, 2 / 3, 1 / 2, 0.0])
    smooth = bleu.compute(predictions=["a b c d"], references=[["a b c e"]], smooth=True)
    assert smooth["bleu"] == pytest.approx(0.2**0.25)


def test_bleu_metric_brevity_penalty_uses_the_shortest_reference(bleu):
    # tensorflow/nmt's convention: reference length = the shortest reference (3 here), translation 2 -> exp(1 - 3/2).
    out = bleu.compute(predictions=["a b"], references=[["a b c", "a b c d e"]], max_order=2)
    assert out["reference_length"] == 3 and out["brevity_penalty"] == pytest.approx(math.exp(1 - 3 / 2))
    assert out["bleu"] == pytest.approx(math.exp(1 - 3 / 2))  # both precisions are 1


def test_bleu_metric_13a_tokenisation_and_per_prediction(bleu):
    # 13a splits symbols off, so spacing around punctuation does not matter; "none" splits on whitespace only.
    assert bleu.compute(predictions=["f(x) = x**2, 1.5"], references=[["f ( x ) = x * * 2 , 1.5"]])["bleu"] == 1.0
    assert bleu.compute(predictions=["f(x)"], references=[["f ( x )"]], tokenizer="none")["bleu"] == 0.0
    out = bleu.compute(predictions=["a b c d", "w x y z"], references=[["a b c d"], ["a b c d"]],
                       smooth=True, per_prediction=True)
    assert out["per_prediction_bleu"][0] == 1.0 and out["per_prediction_bleu"][1] < 0.5
    with pytest.raises(ValueError, match="unknown tokenizer"):
        bleu.compute(predictions=["a"], references=[["a"]], tokenizer="moses")


OFFLINE_SCRIPT = """
import socket

def refuse(*args, **kwargs):
    raise OSError("network access attempted while offline")

socket.socket.connect = refuse
socket.create_connection = refuse

from stmkit.diversity import self_bleu

print(self_bleu(["a b c d", "a b c e"]))
"""


def test_bleu_loads_by_path_offline_in_a_fresh_cache(tmp_path):
    # bleu.py imports its sibling files (nmt_bleu, tokenizer_13a); evaluate must copy them without the network.
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(100 * 0.2**0.25)


def test_self_bleu_hand_computed():
    assert diversity.self_bleu(["a b c d", "a b c e"]) == pytest.approx(100 * 0.2**0.25)
    assert diversity.self_bleu(["x = 1", "x = 1", "x = 1"]) == pytest.approx(100.0)
    # Each sample against the *other* samples: one outlier among identical samples lowers only its own score.
    scores = diversity.sample_bleus(["a b c d e", "a b c d e", "v w x y z"])
    assert scores[0] == scores[1] == pytest.approx(100.0) and scores[2] < 30
    assert diversity.self_bleu(["a b c d e", "a b c d e", "v w x y z"]) == pytest.approx(sum(scores) / 3)


def test_self_bleu_needs_several_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        diversity.self_bleu(["only one"])
    with pytest.raises(TypeError, match="list of texts"):
        diversity.self_bleu("a b c")


def test_measure_self_bleu_on_the_tiny_model(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    kw = {"fingerprint": "tiny-fp", "cache": Cache(tmp_path / "cache")}
    two = generation.sampling(2, max_new_tokens=8)
    first = diversity.measure_self_bleu(model, tok, "math", 3, two, out_dir=tmp_path / "out", **kw)
    assert {"task", "n_items", "n_samples", "self_bleu", "self_bleu_sd", "accuracy", "wall_s"} <= set(first)
    assert (first["task"], first["n_items"], first["n_samples"], first["cached"]) == ("math", 3, 2, False)
    assert 0 <= first["self_bleu"] <= 100 and first["self_bleu_sd"] >= 0 and 0 <= first["accuracy"] <= 1
    records = [json.loads(line) for line in open(first["items_path"])]
    assert first["items_path"] == str(tmp_path / "out" / "self_bleu_math.jsonl")
    assert len(records) == 3 and all(len(r["samples"]) == len(r["correct"]) == 2 for r in records)
    assert first["self_bleu"] == pytest.approx(sum(r["self_bleu"] for r in records) / 3)
    assert records[0]["self_bleu"] == pytest.approx(diversity.self_bleu(records[0]["samples"]))

    # Seeded: the same settings in a fresh cache give the same samples.
    fresh = diversity.measure_self_bleu(model, tok, "math", 3, two, **{**kw, "cache": Cache(tmp_path / "other")})
    assert fresh["self_bleu"] == first["self_bleu"] and fresh["key"] == first["key"]

    def boom(*a, **k):
        raise AssertionError("a cached Self-BLEU must not sample again")

    monkeypatch.setattr(generation, "generate", boom)
    monkeypatch.setattr("stmkit.datagen.generate", boom)
    again = diversity.measure_self_bleu(model, tok, "math", 3, two, **kw)
    assert again["cached"] and again["key"] == first["key"] and again["self_bleu"] == first["self_bleu"]
    assert again["wall_s"] == first["wall_s"]  # the cost when it was computed, not the cache hit's
    with pytest.raises(AssertionError, match="must not sample"):  # another seed: a new entry
        diversity.measure_self_bleu(model, tok, "math", 3, generation.sampling(2, max_new_tokens=8, seed=1), **kw)
    with pytest.raises(AssertionError, match="must not sample"):  # another model: a new entry
        diversity.measure_self_bleu(model, tok, "math", 3, two, **{**kw, "fingerprint": "other-fp"})


def test_measure_self_bleu_accuracy_is_the_share_of_correct_samples(tiny, tmp_path, monkeypatch):
    model, tok = tiny

    def first_sample_correct(task_name, examples, generated, options=None):
        # items arrive flattened, k samples of each in a row; call the first of each item correct
        seen, out = set(), []
        for ex in examples:
            out.append({"extracted": "x", "correct": ex.id not in seen, "error": ""})
            seen.add(ex.id)
        return out

    monkeypatch.setattr("stmkit.diversity.score", first_sample_correct)
    res = diversity.measure_self_bleu(model, tok, "gsm8k", 2, generation.sampling(3, max_new_tokens=4), fingerprint="tiny-fp",
                                      cache=Cache(tmp_path))
    assert res["accuracy"] == pytest.approx(1 / 3)


def test_measure_self_bleu_refuses_bad_settings(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="num_samples >= 2"):
        diversity.measure_self_bleu(model, tok, "math", 2, generation.sampling(1), fingerprint="x", cache=Cache(tmp_path))
    with pytest.raises(ValueError, match="without ':loglik'"):
        diversity.measure_self_bleu(model, tok, "arc_easy:loglik", 2, generation.sampling(2), fingerprint="x", cache=Cache(tmp_path))
    with pytest.raises(KeyError, match="unknown task"):
        diversity.measure_self_bleu(model, tok, "maths", 2, generation.sampling(2), fingerprint="x", cache=Cache(tmp_path))


def test_self_bleu_table_layout():
    res = {"Original": {"task": "math", "n_items": 2, "n_samples": 4, "self_bleu": 20.47, "self_bleu_sd": 13.0,
                        "accuracy": 0.4475}}
    res["STM"] = {**res["Original"], "self_bleu": 40.77}
    table = diversity.self_bleu_table(res, {"STM": {"bwt": 1.39}})
    assert list(table.index) == ["Original", "STM"]
    assert table.loc["Original", "Self-BLEU (mean ± SD)"] == "20.47 ± 13.00"
    assert table.loc["STM", "BWT %"] == 1.39 and math.isnan(table.loc["Original", "BWT %"])
    assert table.loc["Original", "accuracy %"] == 44.75
