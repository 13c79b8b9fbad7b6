"""Where forgetting appears: checkpoints trained at chosen steps, evaluated as "<run>@step<N>", read into curves."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stmkit import forgetting_curve, masking, training
from stmkit.cache import Cache
from stmkit.config import TrainingConfig
from stmkit.records import EvaluationResults, RunRecord
from stmkit.scoring import render_examples, score_rendered
from stmkit.tasks import load


def test_training_saves_checkpoints_at_the_chosen_steps(tiny, tmp_path):
    model, tok = tiny
    rendered = render_examples(tok, load("mbpp", "train", 8), max_length=1024)
    data = masking.mask_dataset(score_rendered(model, rendered, tok.pad_token_id, progress=False), "none")
    cfg = TrainingConfig(finetune="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, epochs=1,
                         batch_size=2, warmup_ratio=0.0, scheduler="constant", save_at_steps=(1, 3))
    res = training.train("tiny-llama", data, cfg, tokenizer=tok, cache=Cache(tmp_path), progress=False)
    assert [c["step"] for c in res.checkpoints] == [1, 3] and res.record["steps"] == 4
    assert all((res.dir / c["dir"] / "adapter_config.json").is_file() for c in res.checkpoints)
    with pytest.raises(ValueError, match="save_at_steps"):
        dataclasses.replace(cfg, save_at_steps=(0,)).validate("training")


def _record(tmp_path, label_rises: dict[str, float], kl: dict[str, float]) -> RunRecord:
    """An evaluate record as 05_evaluate writes it: per-item gold NLL files, per-prompt KL."""
    base = {f"q{i}": 1.0 + 0.01 * i for i in range(20)}
    gold, drift = {}, {}
    for label, rise in {"Original": 0.0, **label_rises}.items():
        values = {k: v + rise + (0.02 if i % 2 else -0.02) * (label != "Original") for i, (k, v) in enumerate(base.items())}
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(values))
        gold[label] = {"arc_easy": {"mean": 0.0, "n": 20, "path": str(path), "role": "non-target"}}
    for label, value in kl.items():
        drift[label] = {"all": {"kl": value},
                        "arc_easy": {"per_prompt_kl": {f"p{i}": value + 0.01 * (i % 3) for i in range(10)}}}
    return RunRecord(run="evaluate", stage="evaluate", results=EvaluationResults(gold_nll=gold, drift=drift))


def test_curve_rows_and_where_forgetting_first_shows(tmp_path):
    rec = _record(tmp_path, {"sft-gt@step5": 0.0, "sft-gt@step10": 0.1, "sft-gt": 0.4},
                  {"sft-gt@step5": 0.01, "sft-gt@step10": 0.05, "sft-gt": 0.2})
    rows = forgetting_curve.curve_rows([rec], {"sft-gt": 20})
    gold = [r for r in rows if r["measure"] == "gold_nll"]
    assert [r["step"] for r in gold] == [5, 10, 20]
    assert [round(r["estimate"], 6) for r in gold] == [0.0, 0.1, 0.4]
    assert gold[0]["ci_low"] < 0 < gold[0]["ci_high"] and gold[1]["ci_low"] > 0
    assert len([r for r in rows if r["measure"] == "kl"]) == 3
    assert forgetting_curve.has_checkpoints([rec])
    final_only = _record(tmp_path, {"sft-gt": 0.4}, {"sft-gt": 0.2})
    assert not forgetting_curve.has_checkpoints([final_only])
    (line,) = forgetting_curve.describe(rows)
    assert line.startswith("sft-gt: first above zero at step 10; at step 20 +0.400")
    assert forgetting_curve.split_label("sft-stm@step40", {}) == ("sft-stm", 40)
    assert forgetting_curve.split_label("Original", {"sft-gt": 20}) is None
    (row,) = forgetting_curve.summary(rows, {"sft-gt": ("ground truth", 1e-3)})
    assert row == {"run": "sft-gt", "method": "ground truth", "lr": "0.001", "step 5": "+0.000", "step 10": "+0.100",
                   "step 20 [95% CI]": row["step 20 [95% CI]"], "KL drift, first → last step": "0.019 → 0.209"}  # mean of per-prompt KL
    assert row["step 20 [95% CI]"].startswith("+0.400 [")
