"""Run model-written Python and SQL in a separate, locked-down process; never in the kit's own process.

How one run is contained (every layer that the OS allows is used; ``isolation_report()`` says which were active):

- **Process**: a fresh interpreter in its own session / process group (``start_new_session``), started through a
  small launcher (below) instead of ``preexec_fn``, so it is safe to call from threads (``run_many``). The parent
  only reads pipes and kills the group; its signals, cwd, environment and files are never touched.
- **Resource limits** (``setrlimit`` in the launcher, inherited by everything it starts): CPU seconds, address
  space (``memory_mb``), largest file written, number of processes (``max_processes``), no core files.
- **Wall clock**: the launcher's timer kills the code at ``timeout_s``; the parent kills the whole process group
  ``_GRACE_S`` later as a backstop. Output beyond ``max_output_bytes`` (stdout + stderr) also kills the group
  (status ``output_limit``).
- **Filesystem**: a fresh temporary working directory (also ``HOME``), deleted afterwards.
- **Private scratch** (model-written code only): a new mount namespace in which ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` are one size-limited tmpfs (``scratch_mb``) holding the working directory too, so everything the code
  writes counts against that limit and vanishes with the namespace. Where no mount namespace can be made (or a
  folder holds the code's interpreter and must stay shared), files that uid ``nobody`` left in the shared folders
  during the run are removed afterwards (``scratch_sweep``). ``/run/lock`` is covered too.
- **IPC and /proc**: a new IPC namespace (SysV shared memory, semaphores and message queues die with the run) and a
  ``/proc`` of the sandbox's own PID namespace, so concurrent runs (all uid ``nobody``) cannot see each other.
- **Completion proof** (``check_program``): setup, code and each test run as separate compiled units under a small
  driver; the run passes only when the driver, after the last test statement, writes a per-run random token
  (sent on a pipe and held only in the driver's locals) to a verdict pipe. Any way of leaving early --
  ``sys.exit``/``exit()``/``quit()``/``raise SystemExit``, ``os._exit``, signals, exit hooks, replaced hooks or
  builtins -- leaves no token and fails with its cause recorded (status ``early_exit``).
- **Privileges**: when the kit runs as root (``RLIMIT_NPROC`` does not bind root), the user code runs as
  ``nobody`` (uid/gid 65534, no supplementary groups), so it cannot write outside its own directory and
  world-writable places, cannot signal or read the kit's processes, and the process cap binds.
- **Namespaces** (Linux): a new network namespace (only a downed loopback: no connection can leave the process)
  and a new PID namespace, whose init is the launcher's supervisor process: killing it kills every process the code
  started, even ones that called ``setsid()`` to leave the process group, and ``kill(-1, ...)`` reaches only the
  sandbox. As root these are plain ``unshare(2)`` calls; otherwise an unprivileged user namespace is tried.
- **Network guard** (fallback): when no network namespace could be made, a preamble replaces
  ``socket.socket``/``create_connection``/``getaddrinfo`` with versions that refuse Internet sockets. It stops
  ordinary code, not code written to evade it; the namespace layer is the real one.
- **Subreaper sweep** (fallback): without a PID namespace the launcher is a child subreaper and, once the code
  exits or times out, kills every descendant it inherited (also ones that called ``setsid()``).
- **Environment**: nothing is inherited; the child sees only PATH, LANG, HOME (the temp dir), PYTHONHASHSEED=0
  and PYTHONDONTWRITEBYTECODE=1. The interpreter runs with ``-s -P -B`` (what ``-I`` does, minus ``-E``) so
  that PYTHONHASHSEED=0 takes effect: same program, same set iteration order, same result.

As root the code's interpreter must be executable by ``nobody``. ``sys.executable`` often is not (a pyenv under
``/root``), so the first of ``$STMKIT_SANDBOX_PYTHON``, ``sys.executable``, the base interpreter and ``python3`` on
``/usr/local/bin:/usr/bin:/bin`` that starts as ``nobody`` is used (probed once, see ``isolation_report()``).

SQL (``run_sql``) runs a fixed runner script through the same machinery (limits, namespaces, fresh env) but as
the kit's own user, because databases often sit where ``nobody`` cannot read them. The statement itself is
contained by SQLite: a read-only connection (``mode=ro`` and ``PRAGMA query_only``), an authorizer that allows
only reads (no ATTACH, DETACH, PRAGMA, writes or schema changes, no ``load_extension``), a progress-handler time
limit, and a row cap.

Layer names in ``SandboxResult.isolation``: rlimit_cpu, rlimit_as, rlimit_fsize, rlimit_core, rlimit_nproc,
wall_timer, netns, pidns, ipcns, userns, mountns, private_proc, scratch_tmpfs, scratch_partial, scratch_sweep,
uid_65534, socket_guard, subreaper_sweep.

Not covered: without a mount namespace and without root, files the code leaves in world-writable places outlive the
run. The completion proof stops ordinary code; code written to dig the token out of the driver's frame or file
descriptors can still forge a pass, and a test can be fooled by a returned object whose ``__eq__`` always says
True, or by code that shadows what the tests call (``def set(x): ...``, ``math.isclose = ...``): tests share the
code's namespace and modules, as in every assert-based checker, HumanEval's included. Without a PID namespace, ``kill(-1, ...)`` reaches every process of uid nobody (or of the kit's user
when not root), and if the parent's backstop has to kill the launcher itself, descendants that left the process
group survive it.
Without root, the code runs as the kit's own user (in a user namespace where possible) and can read and write
whatever that user can.
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
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOBODY = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKDIR_PREFIX = "stmkit-sbx-"
STATUSES = ("ok", "error", "early_exit", "timeout", "memory", "output_limit", "killed")
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # the world-writable places
SQL_STATUSES = ("ok", "error", "timeout", "row_cap")

_GRACE_S = 2.0  # extra wall time the parent allows the launcher to stop the code and report

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
class SqlResult:
    """Outcome of one sandboxed SQL query: status is one of SQL_STATUSES."""

    status: str
    rows: list[tuple] | None
    error: str
    wall_s: float


@dataclass(frozen=True)
class SqlMatch:
    """BIRD execution match of a predicted query against the gold one, with both results."""

    correct: bool
    predicted: SqlResult
    gold: SqlResult


# --------------------------------------------------------------------------------------------------------------
# The launcher: runs as `python -I -S -c _LAUNCHER <config json>` in the new session. It sets the limits, makes
# the namespaces, forks the code's process (which drops privileges and execs the interpreter) and reports the
# code's exit status, and the layers that were active, on a status pipe that the code never sees.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
os.set_inheritable(status_fd, False)
libc = ctypes.CDLL(None, use_errno=True)
layers = []
is_root = os.geteuid() == 0

def report(**msg):
    os.write(status_fd, (json.dumps(msg) + "\n").encode())

def limit(res, soft, hard):
    cur_hard = resource.getrlimit(res)[1]
    if not is_root and cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(res, (soft, hard))

limit(resource.RLIMIT_CORE, 0, 0)
limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
limit(resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"])
limit(resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"])
layers += ["rlimit_cpu", "rlimit_as", "rlimit_fsize", "rlimit_core", "wall_timer"]

def map_ids(uid, gid):
    # In a new user namespace files can only be created under mapped ids: map our own uid/gid onto themselves.
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    except OSError:
        pass

def make_scratch():
    # One size-limited tmpfs over /tmp, and its subfolders bound over /var/tmp and /dev/shm, in a mount namespace
    # of our own: what the code writes there (its working directory included) counts against scratch_mb and is
    # gone when the namespace is.
    MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
    if libc.unshare(0x00020000) != 0:
        return
    layers.append("mountns")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return
    # A folder that holds the code's interpreter must stay visible (then the scratch is partial: the parent sweeps).
    present = [d for d in cfg["scratch_dirs"] if os.path.isdir(d) and not os.path.islink(d)]
    dirs = [d for d in present if not cfg["interpreter"].startswith(d.rstrip("/") + "/")]
    if not dirs:
        return
    work = cfg["workdir"]
    saved = {}
    for name in os.listdir(work):
        with open(os.path.join(work, name), "rb") as f:
            saved[name] = f.read()
    host = dirs[0]
    opts = ("size=%dm,mode=1777" % cfg["scratch_mb"]).encode()
    if libc.mount(b"tmpfs", host.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        return
    for d in dirs[1:]:
        sub = os.path.join(host, ".stmkit" + d.replace("/", "-"))
        os.mkdir(sub)
        os.chmod(sub, 0o1777)
        if libc.mount(sub.encode(), d.encode(), None, MS_BIND, None) != 0:
            return
    if any(work.startswith(d.rstrip("/") + "/") for d in dirs):
        os.makedirs(work, mode=0o700)
        for name, data in saved.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
        if cfg["drop_to"] is not None and is_root:
            for path in [work] + [os.path.join(work, n) for n in saved]:
                os.chown(path, cfg["drop_to"], cfg["drop_to"])
        os.chdir(work)
    layers.append("scratch_tmpfs" if dirs == present else "scratch_partial")

if cfg["namespaces"]:
    NEWNET, NEWPID, NEWUSER = 0x40000000, 0x20000000, 0x10000000
    uid, gid = os.getuid(), os.getgid()
    if is_root:
        if libc.unshare(NEWNET) == 0:
            layers.append("netns")
        if libc.unshare(NEWPID) == 0:
            layers.append("pidns")
    elif libc.unshare(NEWUSER | NEWNET | NEWPID) == 0:
        layers += ["userns", "netns", "pidns"]
        map_ids(uid, gid)
    elif libc.unshare(NEWUSER | NEWNET) == 0:
        layers += ["userns", "netns"]
        map_ids(uid, gid)
    if libc.unshare(0x08000000) == 0:  # CLONE_NEWIPC: SysV shared memory, semaphores, message queues stay private
        layers.append("ipcns")
    if cfg["scratch_mb"] is not None:
        make_scratch()
if "netns" not in layers:
    layers.append("socket_guard")
if "pidns" not in layers:
    layers.append("subreaper_sweep")
drop = is_root and cfg["drop_to"] is not None
if drop:
    layers.append("uid_%d" % cfg["drop_to"])
layers.append("rlimit_nproc")
report(layers=layers)

def run_code():
    argv = cfg["argv"] if "netns" in layers else cfg["argv_guarded"]
    try:
        limit(resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"])
        if drop:
            os.setgroups([])
            os.setgid(cfg["drop_to"])
            os.setuid(cfg["drop_to"])
            if os.getuid() != cfg["drop_to"] or os.geteuid() != cfg["drop_to"]:
                raise OSError("privileges were not dropped")
        os.execve(argv[0], argv, cfg["env"])
    except BaseException as e:
        os.write(2, ("stmkit sandbox: could not start %s: %r\n" % (argv[0], e)).encode())
    os._exit(127)

def sweep():
    # Without a PID namespace: kill whatever the code left behind. We are a child subreaper, so every orphaned
    # descendant (also one that called setsid) is re-parented to us; kill our children until none are left.
    me = str(os.getpid())
    for _ in range(10000):
        kids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        ppid = f.read().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    kids.append(int(d))
        if not kids:
            return
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        for k in kids:
            try:
                os.waitpid(k, 0)
            except ChildProcessError:
                pass

def supervise(in_pidns):
    if not in_pidns:
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    elif "mountns" in layers and libc.mount(b"proc", b"/proc", b"proc", 2 | 4 | 8, None) == 0:
        # A /proc of this PID namespace only: concurrent runs (same uid nobody) cannot see or touch each other.
        report(layers=layers + ["private_proc"])
    pid = os.fork()
    if pid == 0:
        run_code()
    state = {"timed_out": False, "done": False}

    def on_alarm(signum, frame):
        if not state["done"]:
            state["timed_out"] = True
            os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["wall_s"])
    while True:
        wpid, st = os.wait() if in_pidns else os.waitpid(pid, 0)
        if wpid == pid:
            state["done"] = True
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not in_pidns:
        sweep()
    report(exit=os.waitstatus_to_exitcode(st), timed_out=state["timed_out"])
    os._exit(0)

if "pidns" in layers:
    # The first child is pid 1 of the new namespace: when it exits, the kernel kills everything left inside.
    init = os.fork()
    if init == 0:
        supervise(True)
    os.waitpid(init, 0)
    os._exit(0)
supervise(False)
"""

# Preamble for the fallback layer: refuse Internet sockets. Runs before the program (or the check driver).
_SOCKET_GUARD = r"""
import socket as _socket
def _refuse(*a, **k):
    raise OSError("network access is disabled in the stmkit sandbox")
class _GuardedSocket(_socket.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family in (-1, _socket.AF_INET, _socket.AF_INET6):
            _refuse()
        super().__init__(family, type, proto, fileno)
_socket.socket = _GuardedSocket
_socket.SocketType = _GuardedSocket
_socket.create_connection = _refuse
_socket.getaddrinfo = _refuse
_socket.create_server = _refuse
del _socket, _refuse, _GuardedSocket
"""

_RUN_MAIN = r"""
import sys as _sys, runpy as _runpy
_path = _sys.argv[1]
_sys.argv = _sys.argv[1:]
_runpy.run_path(_path, run_name="__main__")
"""

# The check driver: `python -u -c _CHECK_DRIVER check.json TOKEN_FD VERDICT_FD`. Every unit (setup, code, each test)
# is compiled before any of them runs, and what the driver calls afterwards is bound to its own locals first, so
# code that replaces builtins, os.write, exec, json or hooks cannot make it skip a test. The token comes on a pipe
# that is closed before the code runs; the proof line (token + count) is built before the code runs, lives only in
# this function's locals and is written only after the last test returned. Progress and failure records carry no
# token. Code that digs into the driver's frame (sys._getframe, gc, a tracer set on the driver's frame, its memory)
# can still forge a pass: tests run in the code's own process, as in every assert-based checker.
_CHECK_DRIVER = r"""
def _stmkit_check():
    import json, os, sys, traceback, types
    write, exit_now, getpid, dumps = os.write, os._exit, os.getpid, json.dumps
    settrace, setprofile, print_exc, run = sys.settrace, sys.setprofile, traceback.print_exc, exec
    token_fd, verdict_fd = int(sys.argv[2]), int(sys.argv[3])
    token = os.read(token_fd, 128).strip()
    os.close(token_fd)
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)

    def record(**msg):  # progress and failure records: informational, no token (forging one can only fail a run)
        write(verdict_fd, dumps(msg).encode() + b"\n")

    units, where = [], "the code"
    try:
        if spec["setup"].strip():
            where = "the setup code"
            units.append((where, compile(spec["setup"], "<setup>", "exec")))
        where = "the code"
        units.append((where, compile(spec["code"], "main.py", "exec")))
        for i, test in enumerate(spec["tests"], 1):
            where = "test %d" % i
            units.append((where, compile(test, "<test %d>" % i, "exec")))
    except SyntaxError as e:
        print_exc()
        record(stopped=where, exc="SyntaxError", detail=str(e)[:300])
        exit_now(1)
    units, expected, pid = tuple(units), len(units), getpid()
    proof = token + b" done %d\n" % expected  # built before any candidate code runs: nothing it patches is called
    del token
    module = types.ModuleType("__main__")
    module.__file__ = "main.py"
    sys.modules["__main__"] = module
    sys.argv[:] = ["main.py"]
    namespace = module.__dict__
    del spec, f, module
    done = 0
    try:
        for where, unit in units:
            record(started=where)
            settrace(None)
            setprofile(None)
            run(unit, namespace)
            done += 1
    except BaseException as e:
        try:
            print_exc()
        except BaseException:
            pass
        try:
            name, detail = type(e).__name__, str(e)[:300]
        except BaseException:
            name, detail = "BaseException", ""
        record(stopped=where, exc=name, detail=detail)
        exit_now(1)
    if done == expected and getpid() == pid:
        write(verdict_fd, proof)
        exit_now(0)
    exit_now(1)

_stmkit_check()
"""

_PY_FLAGS = ("-s", "-P", "-B")  # -I without -E: our own env is already clean and PYTHONHASHSEED must apply
_EARLY_EXCEPTIONS = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")


@dataclass(frozen=True)
class _Check:
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


def _execute(
    program: str | _Check,
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
    """Run a program (source text, or a _Check under the check driver) with `interpreter` under every layer."""
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
        if isinstance(program, _Check):
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
            argv = [interpreter, *flags, "-c", _CHECK_DRIVER, *tail]
            argv_guarded = [interpreter, *flags, "-c", _SOCKET_GUARD + _CHECK_DRIVER, *tail]
            child_fds: tuple[int, ...] = (status_w, token_r, verdict_w)
        else:
            path = os.path.join(workdir, "main.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(program)
            argv = [interpreter, *flags, path]
            argv_guarded = [interpreter, *flags, "-c", _SOCKET_GUARD + _RUN_MAIN, path]
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
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
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
        out, err, outcome = _collect(proc, start + timeout_s + _GRACE_S, max_output_bytes)
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
            res = _execute(
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
    return _execute(code, **_code_limits(timeout_s, cpu_s, memory_mb, max_output_bytes, stdin, max_processes,
                                         max_file_mb, scratch_mb))


def _code_limits(
    timeout_s: float, cpu_s: float | None, memory_mb: int, max_output_bytes: int, stdin: str, max_processes: int,
    max_file_mb: int, scratch_mb: int,
) -> dict[str, Any]:
    """_execute's keyword arguments for model-written code: nobody's interpreter, dropped privileges, scratch."""
    return {
        "interpreter": _code_interpreter(True),
        "flags": _PY_FLAGS,
        "drop_privileges": True,
        "timeout_s": timeout_s,
        "cpu_s": cpu_s,
        "memory_mb": memory_mb,
        "max_output_bytes": max_output_bytes,
        "stdin": stdin,
        "max_processes": max_processes,
        "max_file_mb": max_file_mb,
        "scratch_mb": scratch_mb,
    }


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
    check = _Check(setup=setup, code=code, tests=tuple(tests))
    return _execute(check, **_code_limits(timeout_s, cpu_s, memory_mb, max_output_bytes, stdin, max_processes,
                                          max_file_mb, scratch_mb))


def isolation_report() -> dict[str, Any]:
    """Which layers are active on this machine for Python code and for SQL, and which interpreter runs the code."""
    py = run_python("pass", timeout_s=20.0)
    return {
        "euid": os.geteuid(),
        "code_interpreter": _code_interpreter(True),
        "python_layers": list(py.isolation),
        "python_status": py.status,
        "namespaces_enabled": USE_NAMESPACES,
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


# --------------------------------------------------------------------------------------------------------------
# SQL

_SQL_RUNNER = r"""
import json, sqlite3, sys, time
p = json.load(sys.stdin)

def emit(status, rows=None, error=""):
    sys.stdout.write(json.dumps({"status": status, "rows": rows, "error": error}))
    sys.stdout.flush()
    sys.exit(0)

def safe(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"blob": bytes(v).hex()}  # back to bytes in the parent: a blob never equals a text value
    return v

ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
DENIED_FUNCTIONS = {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"}

def authorize(action, arg1, arg2, db_name, source):
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in ALLOWED else sqlite3.SQLITE_DENY

try:
    conn = sqlite3.connect(p["uri"], uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    deadline = time.monotonic() + p["time_s"]
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 2000)
    conn.set_authorizer(authorize)
    cur = conn.execute(p["sql"])
    rows, cap = [], p["row_cap"]
    while True:
        chunk = cur.fetchmany(1000)
        if not chunk:
            break
        rows.extend([safe(v) for v in r] for r in chunk)
        if len(rows) > cap:
            emit("row_cap", rows[:cap], "the query returned more than %d rows" % cap)
    emit("ok", rows)
except sqlite3.OperationalError as e:
    if "interrupted" in str(e):
        emit("timeout", None, "query interrupted after %.1f s" % p["time_s"])
    emit("error", None, "%s: %s" % (type(e).__name__, e))
except Exception as e:
    emit("error", None, "%s: %s" % (type(e).__name__, e))
"""


def _db_path(db_path: str | Path) -> Path:
    path = Path(db_path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(
            f"SQLite database {str(db_path)!r} not found (resolved to {path}); check the path, e.g. that the BIRD "
            "dev set was unpacked with its dev_databases/<db_id>/<db_id>.sqlite layout"
        )
    return path


def run_sql(
    db_path: str | Path,
    sql: str,
    *,
    timeout_s: float = 10.0,
    row_cap: int = 10000,
    memory_mb: int = 2048,
    max_output_bytes: int = 64 * 1024 * 1024,
) -> SqlResult:
    """Execute one query read-only in a separate process; rows come back as JSON-safe tuples."""
    path = _db_path(db_path)
    if row_cap < 1:
        raise ValueError(f"row_cap={row_cap!r} must be >= 1")
    payload = json.dumps(
        {"uri": path.as_uri() + "?mode=ro", "sql": sql, "row_cap": row_cap, "time_s": timeout_s}
    )
    res = _execute(
        _SQL_RUNNER,
        interpreter=sys.executable,
        flags=("-I", "-S", "-B"),
        drop_privileges=False,
        timeout_s=timeout_s + 5.0,  # the runner stops itself at timeout_s; this catches a hung process
        cpu_s=timeout_s + 2.0,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        stdin=payload,
        max_processes=8,
        max_file_mb=1024,  # SQLite may spill big sorts to temporary files
        scratch_mb=None,  # our own runner, not model code; the database may live under /tmp
    )
    if res.status == "output_limit":
        return SqlResult("row_cap", None, f"result larger than {max_output_bytes} bytes", res.wall_s)
    if res.status in ("timeout", "killed"):
        return SqlResult(
            "timeout", None, f"query process stopped ({res.status}) after {res.wall_s:.1f} s", res.wall_s
        )
    try:
        # Trust the runner's report only from a runner that ended normally: it writes it after fetching every row.
        out = json.loads(res.stdout) if res.status == "ok" else None
    except ValueError:
        out = None
    if not isinstance(out, dict) or out.get("status") not in SQL_STATUSES:
        tail = (res.stderr or res.stdout).strip()[-500:]
        return SqlResult("error", None, f"query process failed ({res.status}): {tail}", res.wall_s)
    rows = None if out["rows"] is None else [tuple(_sql_value(v) for v in r) for r in out["rows"]]
    return SqlResult(out["status"], rows, out["error"], res.wall_s)


def _sql_value(v: Any) -> Any:
    """A cell as the runner sent it, blobs back as bytes."""
    return bytes.fromhex(v["blob"]) if isinstance(v, dict) else v


def sql_execution_compare(db_path: str | Path, predicted_sql: str, gold_sql: str, **kw: Any) -> SqlMatch:
    """Run gold and predicted queries; correct iff both succeed and their result *sets* are equal."""
    gold = run_sql(db_path, gold_sql, **kw)
    if gold.status != "ok":
        pred = SqlResult("error", None, "not run: the gold query failed", 0.0)
        return SqlMatch(False, pred, gold)
    pred = run_sql(db_path, predicted_sql, **kw)
    correct = pred.status == "ok" and set(pred.rows or ()) == set(gold.rows or ())
    return SqlMatch(correct, pred, gold)


def sql_execution_match(db_path: str | Path, predicted_sql: str, gold_sql: str, **kw: Any) -> bool:
    """BIRD execution accuracy for one item: set(predicted rows) == set(gold rows), both run read-only.

    As in BIRD's official evaluation, row order and duplicate rows are ignored and column order matters
    (rows are compared as tuples); 1 and 1.0 compare equal. A predicted query that fails, times out or
    exceeds the row cap is wrong; so is every prediction when the gold query itself fails.
    """
    return sql_execution_compare(db_path, predicted_sql, gold_sql, **kw).correct
