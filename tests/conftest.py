"""Shared fixtures: offline hub, the tiny model (built once per cache), the embedded SmolLM2 (slow tests), a small
LoRA config and synthetic training rows."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny test model."""
    from stmkit.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct (fp32, CPU)."""
    from stmkit.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def lora_cfg():
    """A small LoRA training config for the tiny model: r 4, lr 1e-2, one epoch of batch 2, constant schedule."""
    from stmkit.config import TrainingConfig

    return TrainingConfig(finetune="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, epochs=1,
                          batch_size=2, warmup_ratio=0.0, scheduler="constant")


@pytest.fixture(scope="session")
def synthetic_rows():
    """rows(n_trained, seed): random tokens, a 6-token prompt, then responses with n_trained[i] trained tokens each."""
    import numpy as np

    def rows(n_trained: list[int], seed: int = 0) -> list[dict]:
        g = np.random.default_rng(seed)
        out = []
        for i, k in enumerate(n_trained):
            ids = g.integers(5, 1000, 6 + k + 3).tolist()
            labels = [-100] * 6 + ids[6 : 6 + k] + [-100] * 3
            out.append({"id": f"s{i}", "input_ids": ids, "labels": labels})
        return out

    return rows
