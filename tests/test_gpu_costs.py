"""The GPU cost table of `make reproduce PROFILE=paper DRY_RUN=1`: shapes counted right, costs that follow the work."""

from __future__ import annotations

import pytest

from stmkit import gpu_costs, pipeline, sweeps
from stmkit.config import load_profile, replace
from stmkit.experiment import REPO_ROOT
from stmkit.gpu_costs import ARCHS, Arch


def test_parameter_counts_match_the_released_models_as_instantiated():
    # counted by instantiating the real architectures on a GPU (benchmarks/gpu_paper_path.py); the formula leaves
    # out the norms' weights (under 0.01%)
    for name, instantiated in [("llama-3-8b-instruct", 8_030_261_248), ("gemma-2-2b-it", 2_614_341_888)]:
        assert 0 < instantiated - ARCHS[name].params < 1e-4 * instantiated


def test_shape_formulas_agree_with_transformers_and_peft_on_a_small_model():
    import transformers
    from peft import LoraConfig, get_peft_model

    arch = Arch(layers=2, hidden=64, intermediate=160, heads=4, kv_heads=2, head_dim=16, vocab=300, tied=False,
                measured_as="llama-3-8b-instruct")
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   tie_word_embeddings=False)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert arch.params == sum(p.numel() for p in model.parameters()) - norms
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    assert arch.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def _estimates(sweep: str | None = None):
    runs = sweeps.load_sweep("paper", sweeps.resolve_sweep(sweep))
    base = load_profile("paper")
    costs = gpu_costs.load_gpu_costs()
    return {r.name: gpu_costs.estimate_run(r, replace(base, r.overrides), costs) for r in runs}


def test_every_paper_run_is_costed_and_the_costs_follow_the_work():
    est = _estimates()
    assert len(est) == 121 and all(e.hours > 0 and e.hours_bound >= e.hours for e in est.values())
    # an 8B model costs more than a 2B one on the same run; a forward-only stage costs less than generating data
    assert est["llama8b-mbpp-generate"].hours > est["gemma2b-mbpp-generate"].hours > est["gemma2b-mbpp-score"].hours
    # full fine-tuning keeps fp32 weights, gradients and AdamW states; LoRA adapters are small, full checkpoints not
    assert est["gemma2b-mbpp-full-gt"].peak_gib > 16 * 2.6
    assert est["gemma2b-mbpp-full-gt"].disk_gb > 10 * est["gemma2b-mbpp-sft-gt"].disk_gb
    # the paper's batch of 8 x 1024 tokens does not fit an 80 GB card for Llama 3 8B without checkpointing
    assert "exceeds" in est["llama8b-mbpp-sft-gt"].note and "gradient_checkpointing" in est["llama8b-mbpp-sft-gt"].note


def test_the_one_gpu_sweep_fits_a_day_on_one_card():
    est = _estimates("paper-1gpu")
    assert sum(e.hours for e in est.values()) < 24
    assert all(e.peak_gib < 79 for e in est.values()), {n: e.peak_gib for n, e in est.items()}


def test_the_paper_dry_run_prints_the_gpu_table(capsys, tmp_path):
    assert pipeline.run_pipeline("paper", dry_run=True, results_dir=str(tmp_path / "r")) == 0
    out = capsys.readouterr().out
    assert "GPU estimate on one 80 GB NVIDIA H100 SXM" in out and "GPU-hours expected" in out
    assert "llama8b-mbpp-sft-gt" in out and "min for" not in out  # GPU-hours, not this CPU's minutes
    assert not (tmp_path / "r").exists()


def test_a_model_without_a_cost_model_is_named():
    with pytest.raises(ValueError, match="no GPU cost model for 'tiny-llama'"):
        gpu_costs.estimate_run(sweeps.load_sweep("smoke")[0], load_profile("smoke"))


def test_the_readme_quotes_the_dry_runs_totals():
    readme = (REPO_ROOT / "README.md").read_text()
    for sweep, label in [(None, "| `paper` (all of it) | 121 |"), ("paper-1gpu", "| 14 |")]:
        est = list(_estimates(sweep).values())
        hours, bound = sum(e.hours for e in est), sum(e.hours_bound for e in est)
        digits = 0 if hours > 100 else 1
        row = next(line for line in readme.splitlines() if label in line)
        assert f"{hours:.{digits}f} ({bound:.{digits}f})" in row, row
        assert f"{sum(e.disk_gb for e in est):.0f} GB" in row, row


@pytest.mark.slow
def test_the_recorded_task_lengths_are_what_measuring_them_gives():
    assert gpu_costs.measure_task_tokens() == gpu_costs.load_gpu_costs()["task_tokens"]
