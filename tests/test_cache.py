"""Content-addressed cache: same inputs same key; atomic writes; corruption is detected and named."""

from __future__ import annotations

import math
import os
import time

import pytest

from stmkit.cache import Cache, CacheCorruptError, atomic_write_json, content_key


def test_key_depends_on_exactly_its_inputs():
    a = content_key("scores", 1, model="m", data="d", max_length=10)
    assert a == content_key("scores", 1, data="d", max_length=10, model="m")
    assert a != content_key("scores", 2, model="m", data="d", max_length=10)
    assert a != content_key("scores", 1, model="m", data="d", max_length=11)


def test_put_then_get(tmp_path):
    cache = Cache(tmp_path)
    assert cache.get("s", "k") is None
    with cache.put("s", "k", meta={"n": 1}) as d:
        (d / "a.txt").write_text("hello")
    got = cache.get("s", "k")
    assert (got / "a.txt").read_text() == "hello"
    assert cache.meta("s", "k")["n"] == 1


def test_interrupted_write_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(KeyboardInterrupt), cache.put("s", "k") as d:
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt
    assert cache.get("s", "k") is None
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "s").iterdir())


def test_corrupted_entry_is_named(tmp_path):
    cache = Cache(tmp_path)
    with cache.put("s", "k") as d:
        (d / "a.txt").write_text("hello")
    (cache.path("s", "k") / "a.txt").write_text("HELLO")
    with pytest.raises(CacheCorruptError, match=r"a\.txt.*delete"):
        cache.get("s", "k")


def test_atomic_write_json_replaces_whole_file(tmp_path):
    p = tmp_path / "x" / "run.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    assert [q.name for q in p.parent.iterdir()] == ["run.json"]


def _age(folder, seconds: int = 3600):
    """Backdate every file (as if the entry were written long ago, not in this second)."""
    then = time.time_ns() - seconds * 10**9
    for p in folder.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(then, then))


def _overwrite_middle(path, n: int = 64):
    """A same-size corruption: n bytes in the middle of the file replaced."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(255 - b for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_verified_stamp_hashes_once_until_a_file_changes(tmp_path, monkeypatch):
    from stmkit import cache as cache_mod

    cache = Cache(tmp_path)
    with cache.put("s", "k") as d:
        (d / "a.bin").write_bytes(bytes(range(256)) * 4)
        (d / "b.bin").write_bytes(b"y" * 1000)
    entry = cache.path("s", "k")
    _age(entry)
    hashed = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p, *a, **k: hashed.append(p.name) or real(p, *a, **k))
    cache_mod.verify_dir(entry)
    assert sorted(hashed) == ["a.bin", "b.bin"]
    hashed.clear()
    cache_mod.verify_dir(entry)  # the same process: remembered
    assert hashed == []
    cache_mod._VERIFIED.clear()
    assert cache.get("s", "k") == entry  # a new process: the verified stamp beside the manifest
    assert hashed == []
    _overwrite_middle(entry / "a.bin")  # same size, new mtime: hashed again and refused
    with pytest.raises(CacheCorruptError, match=rf"{entry}.*a\.bin.*delete"):
        cache_mod.verify_dir(entry)
    assert hashed == ["a.bin"]


@pytest.mark.parametrize("what", ["embedded", "tiny", "bird_standin"])
def test_cached_models_and_standin_are_verified_by_content(what, tmp_path, monkeypatch):
    """A same-size overwrite of a cached model's weights is refused, not loaded (it gave NaN scores)."""
    from stmkit import models, tiny
    from stmkit.cache import atomic_dir
    from stmkit.tasks import bird

    monkeypatch.setenv("STMKIT_CACHE", str(tmp_path))
    spec = models.REGISTRY["smollm2-135m-instruct"]
    entry, use, name = {
        "embedded": (tmp_path / "models" / f"{spec.name}-{spec.sha256[:12]}",
                     lambda: models.resolve(spec.name), "model.safetensors"),
        "tiny": (tmp_path / "models" / f"tiny-llama-v{tiny.TINY_VERSION}",
                 lambda: models.resolve("tiny-llama"), "model.safetensors"),
        "bird_standin": (tmp_path / "bird_standin" / f"v{bird.STANDIN_VERSION}-seed0-n{bird.STANDIN_ITEMS}",
                         lambda: bird.ensure_standin(), "standin.json"),
    }[what]
    with atomic_dir(entry) as d:
        (d / name).write_bytes(bytes(range(256)) * 256)
    monkeypatch.setattr(bird, "load_standin", lambda root, **kw: [])  # the entry is fake; only its check matters
    use()
    _overwrite_middle(entry / name)
    with pytest.raises(CacheCorruptError, match=rf"{entry}.*{name}.*delete"):
        use()


def test_json_writer_refuses_nan_and_minus_inf_but_keeps_config_inf(tmp_path):
    from stmkit.numerics import NonFiniteError

    p = tmp_path / "x.json"
    atomic_write_json(p, {"masking": {"tau": math.inf}})
    assert '"tau": "inf"' in p.read_text()
    with pytest.raises(NonFiniteError, match=r"x\.json.*scores\.b\[1\].*nan"):
        atomic_write_json(p, {"scores": {"a": [0.5], "b": [1.0, math.nan]}})
    with pytest.raises(NonFiniteError, match=r"loss.*-inf"):
        atomic_write_json(p, {"loss": -math.inf})
    assert '"tau": "inf"' in p.read_text()  # the refused writes left the earlier file as it was
