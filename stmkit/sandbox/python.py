"""Model-written Python in the sandbox: run a program, check code against its tests, many at once in parallel.

The code runs as ``nobody`` when the kit is root, under an interpreter that uid can start (probed once), with a
private size-limited scratch; ``isolation_report`` says which layers this machine gives it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import process
from .process import SAFE_PATH, Check, SandboxResult

_PY_FLAGS = ("-s", "-P", "-B")  # -I without -E: our own env is already clean and PYTHONHASHSEED must apply

_interpreter_lock = threading.Lock()
_interpreter_cache: dict[bool, tuple[str, tuple[str, ...]]] = {}


def _code_interpreter(drop_privileges: bool) -> str:
    """The interpreter for model-written code: one that starts under the uid the code will run as."""
    if not (drop_privileges and os.geteuid() == 0):
        return sys.executable
    with _interpreter_lock:
        if True in _interpreter_cache:
            return _interpreter_cache[True][0]
        candidates = [
            os.environ.get("STMKIT_SANDBOX_PYTHON"),
            sys.executable,
            getattr(sys, "_base_executable", None),
            shutil.which("python3", path=SAFE_PATH),
        ]
        tried = []
        for cand in dict.fromkeys(c for c in candidates if c):
            res = process.execute(
                "import sys; print(sys.version_info[0])",
                interpreter=cand,
                flags=_PY_FLAGS,
                drop_privileges=True,
                timeout_s=20.0,
                cpu_s=None,
                memory_mb=512,
                max_output_bytes=4096,
                stdin="",
                max_processes=64,
                max_file_mb=1,
                scratch_mb=None,
            )
            if res.passed and res.stdout.strip() == "3":
                _interpreter_cache[True] = (cand, res.isolation)
                return cand
            tried.append(f"{cand} ({res.status}: {res.stderr.strip()[-200:]})")
    raise RuntimeError(
        "no Python interpreter starts as uid 65534 (nobody), which the sandbox needs when the kit runs as root. "
        f"Tried: {'; '.join(tried)}. Set STMKIT_SANDBOX_PYTHON to a python3 (>= 3.11) that every user may execute, "
        "e.g. /usr/bin/python3, or run the kit as a non-root user."
    )


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: float | None = None,
    memory_mb: int = 1024,
    max_output_bytes: int = 65536,
    stdin: str = "",
    max_processes: int = 64,
    max_file_mb: int = 16,
    scratch_mb: int = 64,
) -> SandboxResult:
    """Run a Python program in a fresh, locked-down interpreter (see the module docstring for the layers).

    passed iff it exits 0 within its limits. `scratch_mb` caps everything it writes to its working directory,
    /tmp, /var/tmp and /dev/shm together (where a private mount namespace can be made).
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    return _execute(code, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes,
                    stdin=stdin, max_processes=max_processes, max_file_mb=max_file_mb, scratch_mb=scratch_mb)


def _execute(payload: Any, **limits: Any) -> SandboxResult:
    """process.execute for model-written code: nobody's interpreter, dropped privileges, the caller's limits."""
    return process.execute(payload, interpreter=_code_interpreter(True), flags=_PY_FLAGS, drop_privileges=True,
                           **limits)


def run_many(codes: list[str], *, workers: int = 2, **kw: Any) -> list[SandboxResult]:
    """run_python on several programs in parallel (thread pool); results in input order."""
    return _parallel(run_python, codes, workers, kw)


def check_many(
    programs: Sequence[tuple[str, Sequence[str], str]], *, workers: int = 2, **kw: Any
) -> list[SandboxResult]:
    """check_program on several (code, tests, setup) triples in parallel; results in input order."""
    return _parallel(lambda p, **k: check_program(*p, **k), list(programs), workers, kw)


def _parallel(fn: Any, items: list[Any], workers: int, kw: dict[str, Any]) -> list[SandboxResult]:
    if workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    if not items:
        return []
    _code_interpreter(True)  # probe once, before the threads race for it
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(lambda item: fn(item, **kw), items))


def build_program(code: str, tests: list[str] | tuple[str, ...], setup: str = "") -> str:
    """setup + code + tests as one program, the way the MBPP checker assembles it (for reading and run_python)."""
    parts = [setup.strip("\n"), code.strip("\n"), "\n".join(tests)]
    return "\n\n".join(p for p in parts if p) + "\n"


def check_program(
    code: str,
    tests: Sequence[str],
    setup: str = "",
    *,
    timeout_s: float = 10.0,
    cpu_s: float | None = None,
    memory_mb: int = 1024,
    max_output_bytes: int = 65536,
    stdin: str = "",
    max_processes: int = 64,
    max_file_mb: int = 16,
    scratch_mb: int = 64,
) -> SandboxResult:
    """Run setup, code and each test in the sandbox; passed only with proof that every test ran and returned.

    Leaving early in any way (sys.exit, os._exit, a signal, an exit hook, ...) is status "early_exit"; `cause` says
    where the run stopped and why.
    """
    if not isinstance(code, str) or not isinstance(setup, str):
        raise TypeError("code and setup must be str")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests must be a list of str (one test statement each)")
    check = Check(setup=setup, code=code, tests=tuple(tests))
    return _execute(check, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes,
                    stdin=stdin, max_processes=max_processes, max_file_mb=max_file_mb, scratch_mb=scratch_mb)


def isolation_report() -> dict[str, Any]:
    """Which layers are active on this machine for Python code and for SQL, and which interpreter runs the code."""
    py = run_python("pass", timeout_s=20.0)
    return {
        "euid": os.geteuid(),
        "code_interpreter": _code_interpreter(True),
        "python_layers": list(py.isolation),
        "python_status": py.status,
        "namespaces_enabled": process.USE_NAMESPACES,
        "scratch": _scratch_layer(py.isolation),
    }


def _scratch_layer(layers: Sequence[str]) -> str:
    """Which layer keeps what the code writes to /tmp, /var/tmp and /dev/shm from outliving the run."""
    if "scratch_tmpfs" in layers:
        return "private tmpfs (mount namespace, size-limited, gone with the run)"
    if "scratch_partial" in layers:
        return ("private tmpfs over some folders (one holds the code's interpreter and stays shared); files uid "
                "nobody left in the shared ones are removed after each run")
    if "scratch_sweep" in layers:
        return "shared folders; files uid nobody left there are removed after each run"
    return "shared folders, not cleaned (no mount namespace and not root): files written there outlive the run"

