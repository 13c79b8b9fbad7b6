"""Evaluating a LoRA adapter: merged into a copy of the base (05_evaluate's default on CPU) vs left unmerged.

An unmerged LoRA adds two small matmuls per adapted linear layer to every forward pass; on CPU, where a decode step
is bound by many small kernels, that costs about 40% (measured while building 05_evaluate). Both arms generate the
same greedy answers (checked). Goal: merged >= 1.2x items/s on the embedded SmolLM2 (fp32, CPU), CPU time.
"""

from __future__ import annotations

import tempfile
import time

from benchmarks import sandwich, timed
from stmkit.adapters import trained_model
from stmkit.cache import Cache
from stmkit.evaluation import evaluate_task
from stmkit.models import load_model
from stmkit.tasks import load

N_ITEMS = 16
MAX_NEW_TOKENS = 64


def _random_adapter(model, folder: str) -> str:
    """A LoRA on every linear layer with non-zero B (speed does not depend on the values; answers must agree)."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                                 init_lora_weights="gaussian"))
    peft_model.save_pretrained(folder)
    return folder


def run() -> dict:
    model, tok = load_model("smollm2-135m-instruct")
    items = load("gsm8k", "test", N_ITEMS)
    adapter = _random_adapter(model, tempfile.mkdtemp(prefix="stmkit-bench-adapter-"))
    cache = Cache(tempfile.mkdtemp(prefix="stmkit-bench-"))

    def measure(arm: str):
        with trained_model(model, {"adapter_dir": adapter}, "bench-base", merge=arm == "merged") as (m, _, _):
            return timed(lambda: [r["generated"] for r in evaluate_task(
                m, tok, "gsm8k", items, "generate", fingerprint=f"bench-{arm}-{time.time_ns()}",
                max_new_tokens=MAX_NEW_TOKENS, batch_size=N_ITEMS, cache=cache, progress=False).records])

    timing, answers = sandwich(measure, "unmerged", "merged")
    same = sum(a.strip() == b.strip() for a, b in zip(answers["merged"], answers["unmerged"], strict=True))
    res = {"items": N_ITEMS, "max_new_tokens": MAX_NEW_TOKENS, **timing, "same_answers": f"{same}/{N_ITEMS}"}
    res["goals"] = {">=1.2x merged vs unmerged (CPU time)": res["ratio_cpu_time"] >= 1.2}
    print(f"   merged vs unmerged: {res['ratio_wall']:.2f}x wall, {res['ratio_cpu_time']:.2f}x CPU time "
          f"(goal >= 1.2); same answers {res['same_answers']}")
    return res
