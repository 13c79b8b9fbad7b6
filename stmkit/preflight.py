"""Cheap checks made before expensive work: writable output and cache folders, and whether the Hub is reachable."""

from __future__ import annotations

import functools
import os
import socket
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit


class SetupError(RuntimeError):
    """A setting (an output folder, STMKIT_CACHE) cannot work here; the message names the setting."""


def writable_dir(path: str | Path, setting: str, advice: str = "choose a folder you can write to") -> Path:
    """Create a folder if needed and check a file can be written in it; `setting` names it, e.g. "--out x"."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SetupError(f"{setting} is an existing file, not a folder; {advice}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SetupError(f"{setting} is not a writable folder ({exc.strerror or exc}); {advice}") from None
    return path


def cache_dir() -> Path:
    """The artifact cache folder, checked writable; the error names STMKIT_CACHE."""
    import platformdirs

    env = os.environ.get("STMKIT_CACHE")
    path = env or platformdirs.user_cache_dir("stmkit")
    setting = f"STMKIT_CACHE={env}" if env else f"the stmkit cache folder {path}"
    return writable_dir(path, setting, "set STMKIT_CACHE to a folder you can write to")


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint, at most `timeout` seconds (name lookup included); asked once."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(_connects(host, port, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)  # a stalled name lookup is not bounded by the socket timeout
    return bool(answer and answer[0])


def require_hub(ref: str | Path) -> None:
    """Refuse a Hub id (a local folder passes) at once when there is no network and offline mode is not set.

    Without this, transformers retries for about a minute before failing. Behind a proxy a direct connection
    says nothing, so the check is skipped there.
    """
    if isinstance(ref, Path):
        return
    from huggingface_hub import constants

    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if constants.is_offline_mode() or proxied or hub_reachable():
        return
    from .models import DEFAULT_MODEL, ModelUnavailableError  # lazy: models imports this module

    raise ModelUnavailableError(
        f"model '{ref}' is a Hugging Face id, but {constants.ENDPOINT} cannot be reached (no network) and "
        "HF_HUB_OFFLINE is not set: set HF_HUB_OFFLINE=1 to load it from your Hugging Face cache, pass a local "
        f"folder as the model name, or use the embedded model ({DEFAULT_MODEL})"
    )
