"""Content-addressed artifact cache with atomic writes and integrity manifests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .numerics import NonFiniteError, first_non_finite

MANIFEST = "_manifest.json"
STAMP = ".verified.json"  # beside the manifest: which file versions (inode, size, mtime) were last hashed intact
# A file modified within this long before it was hashed may share its mtime with the version hashed (coarse file
# timestamps), so its stamp is not trusted: it is hashed again until it is older (git's "racily clean" rule).
RACY_NS = 2_000_000_000
_VERIFIED: dict[str, dict[str, Any]] = {}  # folder -> its stamp, for this process: one hash per entry at most


class CacheCorruptError(RuntimeError):
    """A cache entry exists but its files do not match its manifest."""


def cache_root() -> Path:
    """Root of the artifact cache: $STMKIT_CACHE, else the user's cache dir."""
    env = os.environ.get("STMKIT_CACHE")
    root = Path(env) if env else Path(platformdirs.user_cache_dir("stmkit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; +inf becomes "inf" (configs say tau = inf for "mask nothing"), NaN and -inf stay floats."""
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


def atomic_write_json(path: Path, obj: Any, allow_nan: bool = False) -> None:
    """Write obj as indented JSON, atomically; refuses NaN and -inf (naming the field) unless allow_nan.

    +inf is written as "inf" (a config value). allow_nan is for run records, where NaN states "undefined" (a
    variance of one item); cached artifacts never hold a non-finite number.
    """
    data = _jsonable(obj)
    if not allow_nan:
        bad = first_non_finite(data)
        if bad is not None:
            raise NonFiniteError(f"refusing to write {path}: {bad[0]} is {bad[1]}; non-finite numbers are never "
                                 "stored (find where it came from: a NaN loss, score or metric)")
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def dumps_finite(obj: Any, what: str, **kwargs: Any) -> str:
    """json.dumps for cached records: any NaN or infinity is refused with its field (what names the record)."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        bad = first_non_finite(obj)
        if bad is None:
            raise
        raise NonFiniteError(f"{what}: {bad[0]} is {bad[1]}; non-finite numbers are never cached") from None


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, STAMP):
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; give the folder the usual permissions
    try:
        yield tmp
        hashed_at = time.time_ns()
        files = _manifest(tmp)
        atomic_write_json(tmp / MANIFEST, {"meta": dict(meta or {}), "files": files})
        _write_stamp(tmp, _stamp(tmp, files, hashed_at))  # just hashed: a later process need not hash again
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


def _corrupt(folder: Path, rel: str, why: str) -> CacheCorruptError:
    return CacheCorruptError(
        f"cache entry {folder} is corrupted: {rel} {why}; delete {folder} and rerun to recompute it"
    )


def _stamp(folder: Path, files: Mapping[str, Any], hashed_at: int) -> dict[str, Any]:
    """The manifest's and each file's (inode, size, mtime_ns) now, and when their hashing began."""
    sig = {}
    for rel in [MANIFEST, *files]:
        st = (folder / rel).stat()
        sig[rel] = [st.st_ino, st.st_size, st.st_mtime_ns]
    return {"hashed_at": hashed_at, "files": sig}


def _write_stamp(folder: Path, stamp: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a read-only cache is verified by hashing, every process
        atomic_write_json(folder / STAMP, stamp)


def _trusted(stamp: Mapping[str, Any] | None, sig: list[int], rel: str) -> bool:
    """Whether the stamp vouches for this version of the file: same inode, size and mtime, not racily fresh."""
    if not isinstance(stamp, Mapping) or not isinstance(stamp.get("files"), Mapping):
        return False  # no stamp, or not one this code wrote: hash
    return stamp["files"].get(rel) == sig and sig[2] < stamp.get("hashed_at", 0) - RACY_NS


def verify_dir(folder: Path, deep: bool = True) -> None:
    """Raise CacheCorruptError unless every file listed in the folder's manifest is intact.

    deep: check content (sha256) as well as size, hashing each file once: a file whose inode, size and mtime
    match the verified stamp (this process's memo, else STAMP on disk) was hashed intact already. A same-size
    overwrite changes the mtime, so the file is hashed again.
    """
    folder = Path(folder)
    man_path = folder / MANIFEST
    try:
        manifest = json.loads(man_path.read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CacheCorruptError(
            f"cache entry {folder} has no readable {MANIFEST} ({exc}); delete the folder and rerun"
        ) from exc
    for rel, info in files.items():
        p = folder / rel
        if not p.is_file():
            raise _corrupt(folder, rel, "is missing")
        if p.stat().st_size != info["size"]:
            raise _corrupt(folder, rel, f"has {p.stat().st_size} bytes, its manifest says {info['size']}")
    if not deep:
        return
    memo_key = str(folder.resolve())
    hashed_at = time.time_ns()
    now = _stamp(folder, files, hashed_at)
    old = _VERIFIED.get(memo_key)
    if old is None:
        try:
            old = json.loads((folder / STAMP).read_text())
        except (OSError, json.JSONDecodeError):
            old = None
    if old is not None and not _trusted(old, now["files"][MANIFEST], MANIFEST):
        old = None  # a rewritten manifest: nothing hashed against the old one counts
    hashed = False
    for rel, info in files.items():
        if _trusted(old, now["files"][rel], rel):
            continue
        hashed = True
        if sha256_file(folder / rel) != info["sha256"]:
            raise _corrupt(folder, rel, "does not match its manifest (sha256)")
    if hashed or old is None:
        _VERIFIED[memo_key] = now
        _write_stamp(folder, now)
    else:
        _VERIFIED[memo_key] = old


def verify_entry_of(path: str | os.PathLike, levels: int = 3) -> None:
    """Verify the cache entry holding path (an adapter/, checkpoints/step-N/ folder), if path is in one.

    The entry is the nearest folder with a manifest, path itself or up to `levels` folders above it; a folder
    outside the cache (a user's own adapter) has none and is left alone.
    """
    p = Path(path).resolve()
    for folder in [p, *p.parents][: levels + 1]:
        if (folder / MANIFEST).is_file():
            verify_dir(folder)
            return


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
