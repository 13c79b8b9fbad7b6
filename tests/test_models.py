"""Model registry: embedded SmolLM2 (converted once, verified), tiny model, hub ids with clear offline errors."""

from __future__ import annotations

import pytest

from stmkit import models
from stmkit.models import ModelSpec, ModelUnavailableError, load_model, resolve


def test_registry_has_default_tiny_and_paper_models():
    assert models.DEFAULT_MODEL in models.REGISTRY
    for name in ["tiny-llama", "gemma-2-2b-it", "gemma-2-9b-it", "llama-3-8b-instruct", "mistral-7b-instruct",
                 "olmo-2-7b-instruct"]:
        assert name in models.REGISTRY


def test_tiny_model_has_chat_template_and_generates(tiny):
    model, tok = tiny
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 or tok.eos_token_id in out[0].tolist()
    assert model.num_parameters() < 500_000


def test_tiny_model_is_deterministic(tmp_path):
    from stmkit.cache import sha256_file
    from stmkit.tiny import build_tiny_model

    a = build_tiny_model(tmp_path / "a")
    b = build_tiny_model(tmp_path / "b")
    assert sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")


def test_local_folder_loads_by_path(tiny, tmp_path):
    folder = resolve("tiny-llama")
    model, tok = load_model(str(folder))
    assert model.config.vocab_size == tiny[0].config.vocab_size


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        resolve(str(tmp_path))


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ModelUnavailableError, match="not a registry name"):
        resolve("no-such-model")


def test_hub_model_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="HF_HOME.*local folder"):
        load_model("llama-3-8b-instruct")


def test_embedded_gguf_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("STMKIT_CACHE", str(tmp_path))
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    bad = ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(models.REGISTRY, spec.name, bad)
    with pytest.raises(ModelUnavailableError, match="sha256.*reinstall"):
        resolve(spec.name)
    assert not any(tmp_path.joinpath("models").glob("smollm2*"))


def test_missing_embedded_package_says_make_setup(monkeypatch):
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="make setup"):
        models._embedded_gguf(spec)


@pytest.mark.slow
def test_embedded_smollm2_loads_from_converted_folder(smol):
    model, tok = smol
    assert model.config.model_type == "llama"
    assert str(model.dtype) == "torch.float32"
    assert "<|im_start|>" in tok.chat_template
    assert not hasattr(model.config, "quantization_config")
    folder = resolve(models.DEFAULT_MODEL)
    assert (folder / "model.safetensors").is_file() and (folder / "_manifest.json").is_file()
