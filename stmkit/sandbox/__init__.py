"""Run model-written Python and SQL in a separate, locked-down process; never in the kit's own process.

How one run is contained (every layer that the OS allows is used; ``isolation_report()`` says which were active):

- **Process**: a fresh interpreter in its own session / process group (``start_new_session``), started through a
  small launcher (below) instead of ``preexec_fn``, so it is safe to call from threads (``run_many``). The parent
  only reads pipes and kills the group; its signals, cwd, environment and files are never touched.
- **Resource limits** (``setrlimit`` in the launcher, inherited by everything it starts): CPU seconds, address
  space (``memory_mb``), largest file written, number of processes (``max_processes``), no core files.
- **Wall clock**: the launcher's timer kills the code at ``timeout_s``; the parent kills the whole process group
  ``process.GRACE_S`` later as a backstop. Output beyond ``max_output_bytes`` (stdout + stderr) also kills the group
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

Modules: ``python.py`` runs and checks model-written Python, ``sql.py`` runs SQL and BIRD's execution match,
``process.py`` is the parent side both use (``execute``: start, watch, kill, judge) and ``child.py`` holds what
runs inside the child processes, as source text (the launcher, the socket guard, the check driver).
"""

from .process import SCRATCH_DIRS, STATUSES, WORKDIR_PREFIX, SandboxResult
from .python import build_program, check_many, check_program, isolation_report, run_many, run_python
from .sql import SQL_STATUSES, SqlMatch, SqlResult, run_sql, sql_execution_compare, sql_execution_match

__all__ = [
    "SCRATCH_DIRS", "SQL_STATUSES", "STATUSES", "WORKDIR_PREFIX", "SandboxResult", "SqlMatch", "SqlResult",
    "build_program", "check_many", "check_program", "isolation_report", "run_many", "run_python", "run_sql",
    "sql_execution_compare", "sql_execution_match",
]  # fmt: skip
