"""Content-addressed cache: same inputs same key; atomic writes; corruption is detected and named."""

from __future__ import annotations

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
