"""Cheap checks before expensive work: writable folders, usual file modes, and a fast no-network answer."""

from __future__ import annotations

import os
import time

import pytest

from stmkit import preflight
from stmkit.cache import Cache, atomic_dir
from stmkit.models import ModelUnavailableError, load_model, load_tokenizer


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_folders_and_cache_entries_get_the_usual_mode(tmp_path, umask_022):
    with atomic_dir(tmp_path / "out") as d:
        (d / "a.txt").write_text("x")
    with Cache(tmp_path / "cache").put("s", "k") as d:
        (d / "a.txt").write_text("x")
    for folder in (tmp_path / "out", tmp_path / "cache" / "s" / "k"):
        assert folder.stat().st_mode & 0o777 == 0o755, oct(folder.stat().st_mode)


def test_writable_dir_names_the_setting(tmp_path):
    assert preflight.writable_dir(tmp_path / "new", "--out new") == tmp_path / "new"
    (tmp_path / "f").write_text("")
    with pytest.raises(preflight.SetupError, match=r"^--out f is an existing file, not a folder; choose"):
        preflight.writable_dir(tmp_path / "f", "--out f")


@pytest.fixture
def online_mode(monkeypatch):
    """HF_HUB_OFFLINE unset (the tests set it), with the network probe mocked."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    import transformers

    def refuse(*a, **k):
        raise AssertionError("transformers was asked to download while there is no network")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    preflight.hub_reachable.cache_clear()
    yield
    preflight.hub_reachable.cache_clear()


def test_a_hub_id_with_no_network_fails_fast_saying_what_to_set(monkeypatch, online_mode):
    probes = []
    monkeypatch.setattr(preflight, "_connects", lambda host, port, timeout: probes.append(host) or False)
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"'google/gemma-2-2b-it'.*no network.*HF_HUB_OFFLINE=1"):
        load_model("gemma-2-2b-it")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1"):
        load_tokenizer("someone/some-model")
    assert time.perf_counter() - t0 < 5 and probes == ["huggingface.co"]  # probed once


def test_no_probe_when_offline_mode_is_set(monkeypatch):
    monkeypatch.setattr(preflight, "_connects", lambda *a: pytest.fail("probed the network in offline mode"))
    preflight.require_hub("someone/some-model")  # conftest sets HF_HUB_OFFLINE=1
