"""The sandbox's parent side: start the launcher under every isolation layer, watch it, and judge the outcome.

``execute`` is the one way a program (model-written Python, a check under the driver, or the SQL runner) is run:
a fresh working directory, a clean environment, the launcher of child.py in its own session, output read with a
cap and a deadline, the process group killed afterwards, and the status (and for a check, its cause) read off the
launcher's and the driver's pipes. See the package docstring for the layers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .child import CHECK_DRIVER, LAUNCHER, RUN_MAIN, SOCKET_GUARD

NOBODY = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKDIR_PREFIX = "stmkit-sbx-"
STATUSES = ("ok", "error", "early_exit", "timeout", "memory", "output_limit", "killed")
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # the world-writable places

GRACE_S = 2.0  # extra wall time the parent allows the launcher to stop the code and report
_EARLY_EXCEPTIONS = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")  # leaving early, not failing a test

# Tests switch this off to exercise the in-child network guard on machines where namespaces work.
USE_NAMESPACES = True


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed program: status is one of STATUSES; passed iff "ok"."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: tuple[str, ...] = ()  # layers that were active for this run (see isolation_report)
    cause: str = ""  # why it did not pass, in words (check_program: which statement stopped it, or how it left)

    @property
    def passed(self) -> bool:
        """True iff the program ran within its limits: exit 0, and for check_program every test proven run."""
        return self.status == "ok"


@dataclass(frozen=True)
class Check:
    """A program to run under the check driver: setup, candidate code and its tests as separate units."""

    setup: str
    code: str
    tests: tuple[str, ...]


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _make_workdir(owner: int | None) -> str:
    base = tempfile.gettempdir()
    if owner is not None and not _traversable_by_others(base):
        base = "/tmp"  # $TMPDIR under /root would lock nobody out of its own working directory
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=base)
    if owner is not None:
        os.chown(workdir, owner, owner)
    return workdir


def _traversable_by_others(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(q).st_mode & 0o001 for q in [p, *p.parents])


def _remove_tree(path: str) -> None:
    def onerror(func, p, _exc):  # non-root: the code may have chmod'ed things read-only
        try:
            os.chmod(p, 0o700)
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _sweep_scratch(owner: int, since: float) -> None:
    """Fallback without a private scratch: remove what `owner` created in the shared scratch folders since `since`."""
    for folder in SCRATCH_DIRS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != owner or st.st_ctime < since - 1:
                continue
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _exited(pid: int) -> bool:
    """True once the process has exited, without reaping it (so its process-group id stays reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def execute(
    program: str | Check,
    *,
    interpreter: str,
    flags: tuple[str, ...],
    drop_privileges: bool,
    timeout_s: float,
    cpu_s: float | None,
    memory_mb: int,
    max_output_bytes: int,
    stdin: str,
    max_processes: int,
    max_file_mb: int,
    scratch_mb: int | None,
) -> SandboxResult:
    """Run a program (source text, or a Check under the check driver) with `interpreter` under every layer."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0")
    if memory_mb <= 0 or max_output_bytes <= 0 or max_processes <= 0:
        raise ValueError("memory_mb, max_output_bytes and max_processes must be > 0")
    if scratch_mb is not None and scratch_mb <= 0:
        raise ValueError(f"scratch_mb={scratch_mb!r} must be > 0")
    owner = NOBODY if (drop_privileges and os.geteuid() == 0) else None
    workdir = _make_workdir(owner)
    pipes: list[int] = []
    status_r, status_w = os.pipe()
    pipes += [status_r, status_w]
    token, verdict_r, n_units = b"", -1, 0
    proc = None
    start = time.monotonic()
    started_at = time.time()
    try:
        if isinstance(program, Check):
            token = secrets.token_hex(16).encode()
            n_units = int(bool(program.setup.strip())) + 1 + len(program.tests)
            token_r, token_w = os.pipe()
            verdict_r, verdict_w = os.pipe()
            pipes += [token_r, verdict_r, verdict_w]
            os.write(token_w, token + b"\n")
            os.close(token_w)
            path = os.path.join(workdir, "check.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"setup": program.setup, "code": program.code, "tests": list(program.tests)}, f)
            tail = [path, str(token_r), str(verdict_w)]
            flags = (*flags, "-u")  # unbuffered: the driver leaves with os._exit, which flushes nothing
            argv = [interpreter, *flags, "-c", CHECK_DRIVER, *tail]
            argv_guarded = [interpreter, *flags, "-c", SOCKET_GUARD + CHECK_DRIVER, *tail]
            child_fds: tuple[int, ...] = (status_w, token_r, verdict_w)
        else:
            path = os.path.join(workdir, "main.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(program)
            argv = [interpreter, *flags, path]
            argv_guarded = [interpreter, *flags, "-c", SOCKET_GUARD + RUN_MAIN, path]
            child_fds = (status_w,)
        if owner is not None:
            os.chown(path, owner, owner)
        env = _child_env(workdir)
        cfg = {
            "status_fd": status_w,
            "wall_s": float(timeout_s),
            "cpu_s": int(math.ceil(cpu_s if cpu_s is not None else timeout_s)) + 1,
            "memory_bytes": int(memory_mb) * 1024 * 1024,
            "file_bytes": int(max_file_mb) * 1024 * 1024,
            "nproc": int(max_processes),
            "namespaces": bool(USE_NAMESPACES),
            "drop_to": owner,
            "env": env,
            "argv": argv,
            "argv_guarded": argv_guarded,
            "workdir": workdir,
            "interpreter": os.path.realpath(interpreter),
            "scratch_mb": scratch_mb,
            "scratch_dirs": list(SCRATCH_DIRS),
        }
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(cfg)],
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                close_fds=True,
                pass_fds=child_fds,
                start_new_session=True,
            )
        for fd in child_fds:  # only the child holds these now: EOF on them means it is gone
            os.close(fd)
            pipes.remove(fd)
        # The launcher stops the code at timeout_s itself; the parent's deadline is the backstop.
        out, err, outcome = _collect(proc, start + timeout_s + GRACE_S, max_output_bytes)
        returncode = proc.wait()
        wall = time.monotonic() - start
        report = _merge_records(_read_pipe(status_r))
        verdict = _verdict_records(_read_pipe(verdict_r), token, n_units) if token else None
    finally:
        if proc is not None and proc.returncode is None:  # an exception on the way: leave nothing behind
            _kill_group(proc.pid)
            proc.wait()
        for fd in pipes:
            os.close(fd)
        _remove_tree(workdir)
    layers = tuple(report.get("layers", ()))
    if owner is not None and scratch_mb is not None and "scratch_tmpfs" not in layers:
        _sweep_scratch(owner, started_at)
        layers += ("scratch_sweep",)
    if "exit" in report:
        returncode = report["exit"]
    if report.get("timed_out"):
        outcome = outcome or "timeout"
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if verdict is None:
        status, cause = outcome or _classify(returncode, stderr), ""
    else:
        status, cause = _judge_check(outcome, returncode, stderr, verdict)
    return SandboxResult(status, returncode, stdout, stderr, round(wall, 4), layers, cause)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr until both close, the deadline passes or the cap is hit; always kill the group after."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    total, outcome, killed = 0, None, False
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout"
                break
            for key, _ in sel.select(min(remaining, 0.1)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                take = chunk[: max(0, cap - total)]
                bufs[key.fd] += take
                total += len(chunk)
                if total > cap:
                    outcome = "output_limit"
                    break
            if outcome:
                break
            if not killed and _exited(proc.pid):
                # The launcher is done; anything still holding the pipes is a leftover: kill it, drain the rest.
                _kill_group(proc.pid)
                killed = True
    while outcome is None and not _exited(proc.pid):
        if time.monotonic() >= deadline:
            outcome = "timeout"
            break
        time.sleep(0.01)
    _kill_group(proc.pid)  # launcher not yet reaped, so the group id cannot have been reused
    proc.stdout.close()
    proc.stderr.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), outcome


def _read_pipe(fd: int, cap: int = 1 << 20) -> bytes:
    """What is waiting in a pipe whose writers are gone (or the first `cap` bytes of it)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < cap and (chunk := os.read(fd, 65536)):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _merge_records(data: bytes) -> dict[str, Any]:
    """Merge the launcher's status lines ({"layers": ...} first, {"exit": ..., "timed_out": ...} at the end)."""
    merged: dict[str, Any] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            merged.update(json.loads(line))
        except ValueError:
            pass
    return merged


def _verdict_records(data: bytes, token: bytes, expected: int) -> dict[str, Any]:
    """The check driver's records, merged. "done" is set only by the proof line (this run's token and the number of
    units); every other line is informational (where the run was, why it stopped) and cannot set it."""
    merged: dict[str, Any] = {}
    for line in data.split(b"\n"):
        if line == token + b" done %d" % expected:
            merged["done"] = expected
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            merged.update({k: v for k, v in msg.items() if k in ("started", "stopped", "exc", "detail")})
    return merged


def _judge_check(
    outcome: str | None, returncode: int | None, stderr: str, verdict: dict[str, Any]
) -> tuple[str, str]:
    """Status and cause of a check run: "ok" only with the driver's proof that every test ran and returned."""
    where = verdict.get("started", "the start")
    if outcome == "timeout":
        return "timeout", f"time limit reached during {where}"
    if outcome == "output_limit":
        return "output_limit", f"output limit exceeded during {where}"
    if "done" in verdict and "stopped" not in verdict and returncode == 0:
        return "ok", ""
    if "stopped" in verdict:
        exc, at = verdict.get("exc", ""), verdict["stopped"]
        detail = f": {verdict['detail']}" if verdict.get("detail") else ""
        if exc in _EARLY_EXCEPTIONS:
            return "early_exit", f"{exc}{detail} raised in {at}, before the tests finished"
        status = "memory" if exc == "MemoryError" else "error"
        return status, f"{exc} in {at}{detail}"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        status = {signal.SIGXCPU: "timeout", signal.SIGKILL: "killed"}.get(-returncode, "early_exit")
        return status, f"killed by {name} during {where}, before the tests finished"
    if "MemoryError" in stderr[-4000:]:
        return "memory", f"MemoryError during {where}"
    return "early_exit", (
        f"the process ended with exit status {returncode} during {where} without the proof that every test ran "
        "(os._exit, an exit hook, a signal handler or a replaced interpreter hook)"
    )


def _classify(returncode: int | None, stderr: str) -> str:
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:
        return "timeout"  # CPU seconds used up (RLIMIT_CPU soft limit)
    if returncode == -signal.SIGKILL:
        return "killed"
    if "MemoryError" in stderr[-4000:]:
        return "memory"
    return "error"

