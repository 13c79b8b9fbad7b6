"""Content-addressed artifact cache with atomic writes and integrity manifests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import platformdirs

MANIFEST = "_manifest.json"


class CacheCorruptError(RuntimeError):
    """A cache entry exists but its files do not match its manifest."""


def cache_root() -> Path:
    """Root of the artifact cache: $STMKIT_CACHE, else the user's cache dir."""
    env = os.environ.get("STMKIT_CACHE")
    root = Path(env) if env else Path(platformdirs.user_cache_dir("stmkit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj == float("inf"):
        return "inf"
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same inputs always give the same text."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)


def content_key(stage: str, version: int, **parts: Any) -> str:
    """Hash of exactly what determines an artifact: stage, stage version and its inputs."""
    text = canonical_json({"stage": stage, "version": version, "parts": parts})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write obj as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, default=str) + "\n")


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return files


@contextlib.contextmanager
def atomic_dir(final: Path, meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder; on success write a manifest and rename it to `final` in one step.

    Without overwrite, an entry another process finished first is kept (entries are content-addressed).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        atomic_write_json(tmp / MANIFEST, {"meta": dict(meta or {}), "files": _manifest(tmp)})
        if final.exists() and overwrite:
            trash = final.with_name(f".{final.name}.{os.getpid()}.old")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        elif final.exists():
            shutil.rmtree(tmp)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                shutil.rmtree(tmp)  # another process won the race with identical content
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_dir(folder: Path, deep: bool = True) -> None:
    """Raise CacheCorruptError unless every file listed in the folder's manifest is intact."""
    man_path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(man_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheCorruptError(
            f"cache entry {folder} has no readable {MANIFEST} ({exc}); delete the folder and rerun"
        ) from exc
    for rel, info in manifest["files"].items():
        p = Path(folder) / rel
        if not p.is_file() or p.stat().st_size != info["size"] or (deep and sha256_file(p) != info["sha256"]):
            raise CacheCorruptError(
                f"cache entry {folder} is corrupted: {rel} does not match its manifest; "
                f"delete {folder} and rerun to recompute it"
            )


class Cache:
    """Artifacts stored as folders under <root>/<stage>/<key>, written atomically, verified on read."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root() / "artifacts"

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str, deep: bool = True) -> Path | None:
        """The entry's folder if it is complete and intact, None if absent; raises if corrupted."""
        folder = self.path(stage, key)
        if not folder.is_dir():
            return None
        verify_dir(folder, deep=deep)
        return folder

    @contextlib.contextmanager
    def put(self, stage: str, key: str, meta: Mapping[str, Any] | None = None) -> Iterator[Path]:
        """Context manager yielding a temp folder that becomes the entry atomically on success."""
        with atomic_dir(self.path(stage, key), meta={"stage": stage, "key": key, **dict(meta or {})}) as tmp:
            yield tmp

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / MANIFEST).read_text())["meta"]
