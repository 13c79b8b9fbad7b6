"""The sandbox contains hostile programs and SQL: each is scored as a failure, and the test process is untouched."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from stmkit import sandbox
from stmkit.sandbox import process

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(
    not IS_ROOT, reason="privilege drop to nobody only happens when the kit runs as root"
)


@pytest.fixture(scope="module")
def protected_dir():
    """A root-owned 0755 directory with a sentinel file: visible to the sandbox, not writable by nobody.

    Not under /tmp: the sandbox sees its own private /tmp, so a folder there would be invisible, not protected.
    """
    base = next((b for b in ("/var/lib", "/opt", "/usr/local") if os.access(b, os.W_OK)), None)
    d = Path(tempfile.mkdtemp(prefix="stmkit-test-protected-", dir=base))
    d.chmod(0o755)
    sentinel = d / "sentinel.txt"
    sentinel.write_text("keep me\n")
    sentinel.chmod(0o644)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture(autouse=True)
def parent_untouched(protected_dir):
    """After every test: same pid alive, same cwd, same environment, same signal handlers, sentinel intact."""

    def environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest rewrites this one

    pid, cwd, env = os.getpid(), os.getcwd(), environ()
    handlers = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM)
    }
    yield
    assert os.getpid() == pid
    os.kill(pid, 0)
    assert os.getcwd() == cwd
    assert environ() == env
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert (protected_dir / "sentinel.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in protected_dir.iterdir()) == ["sentinel.txt"]


def _sandbox_pids() -> set[int]:
    """Live processes started from a sandbox working directory (their command line names it)."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if sandbox.WORKDIR_PREFIX.encode() in cmd:
                pids.add(int(d))
    return pids


def _assert_no_leftovers(before: set[int], wait_s: float = 3.0) -> None:
    deadline = time.monotonic() + wait_s
    while (left := _sandbox_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes survived the run: {sorted(left)}"


@pytest.fixture(params=["namespaces", "fallback"])
def layers(request, monkeypatch):
    """Run a test with the namespace layers, and again with them off (the in-child guard and subreaper sweep)."""
    monkeypatch.setattr(process, "USE_NAMESPACES", request.param == "namespaces")
    return request.param


# --- positive cases -------------------------------------------------------------------------------------------


def test_correct_mbpp_program_passes():
    code = "def add(a, b):\n    return a + b\n"
    res = sandbox.check_program(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], timeout_s=5)
    assert res.passed and res.status == "ok" and res.returncode == 0


def test_wrong_mbpp_program_fails_with_the_assert():
    code = "def add(a, b):\n    return a - b\n"
    res = sandbox.check_program(code, ["assert add(1, 2) == 3"], setup="import math", timeout_s=5)
    assert not res.passed and res.status == "error"
    assert "AssertionError" in res.stderr


def test_build_program_order_and_stdin():
    prog = sandbox.build_program("x = base + 1", ["assert x == 3"], setup="base = 2")
    assert prog.index("base = 2") < prog.index("x = base + 1") < prog.index("assert x == 3")
    res = sandbox.run_python("print(input()[::-1])", stdin="abc\n", timeout_s=5)
    assert res.passed and res.stdout == "cba\n"


def test_run_many_keeps_input_order_and_carries_on():
    codes = ["print(1)", "raise SystemExit(2)", "while True: pass", "print(4)"]
    res = sandbox.run_many(codes, workers=2, timeout_s=1.0)
    assert [r.status for r in res] == ["ok", "error", "timeout", "ok"]
    assert res[0].stdout == "1\n" and res[3].stdout == "4\n"


def test_environment_is_minimal_and_hash_seed_fixed(monkeypatch):
    monkeypatch.setenv("STMKIT_FAKE_SECRET", "hunter2")
    res = sandbox.run_python("import os, sys; print(sorted(os.environ)); print(sys.flags.hash_randomization)")
    assert res.passed
    names, hash_randomization = res.stdout.splitlines()
    assert eval(names) == ["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED"]
    assert hash_randomization == "0"  # PYTHONHASHSEED=0 took effect


def test_isolation_layers_reported():
    res = sandbox.run_python("pass")
    assert res.passed
    assert {"rlimit_cpu", "rlimit_as", "rlimit_fsize", "rlimit_core", "rlimit_nproc"} <= set(res.isolation)
    assert "netns" in res.isolation or "socket_guard" in res.isolation
    if IS_ROOT:
        assert "uid_65534" in res.isolation


def test_no_file_descriptor_leak():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        sandbox.run_python("print('x' * 100)", timeout_s=5)
    assert len(os.listdir("/proc/self/fd")) == before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="timeout_s"):
        sandbox.run_python("pass", timeout_s=0)
    with pytest.raises(TypeError, match="code must be a str"):
        sandbox.run_python(b"pass")


# --- hostile programs -----------------------------------------------------------------------------------------


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    res = sandbox.run_python("while True:\n    pass\n", timeout_s=1.0)
    assert res.status == "timeout" and not res.passed
    assert time.monotonic() - t0 < 1.0 + process.GRACE_S + 1.0


def test_fork_bomb_is_bounded_and_cleaned_up(layers):
    before = _sandbox_pids()
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = sandbox.run_python(code, timeout_s=1.0, max_processes=8)
    assert not res.passed and res.status in ("timeout", "killed")
    _assert_no_leftovers(before)


def test_process_that_leaves_the_group_is_killed(layers):
    before = _sandbox_pids()
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nprint('parent done')\n"
    res = sandbox.run_python(code, timeout_s=5)
    assert res.stdout == "parent done\n"
    _assert_no_leftovers(before)


def test_memory_bomb():
    res = sandbox.run_python(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", memory_mb=200
    )
    assert res.status == "memory" and not res.passed


def test_huge_output_is_capped():
    res = sandbox.run_python("while True:\n    print('x' * 1000)\n", max_output_bytes=10_000, timeout_s=5)
    assert res.status == "output_limit" and not res.passed
    assert len(res.stdout) + len(res.stderr) <= 10_000


def test_huge_file_is_refused():
    res = sandbox.run_python("open('big', 'wb').write(b'x' * (3 * 2**20))", max_file_mb=1, timeout_s=5)
    assert res.status == "error" and "File too large" in res.stderr


@root_only
def test_cannot_write_or_delete_outside_its_directory(protected_dir):
    write = f"open({str(protected_dir / 'new.txt')!r}, 'w').write('pwned')"
    delete = f"import os; os.remove({str(protected_dir / 'sentinel.txt')!r})"
    home = f"open({str(Path.home() / 'stmkit-sandbox-pwned')!r}, 'w').write('pwned')"
    for code in (write, delete, home):
        res = sandbox.run_python(code, timeout_s=5)
        assert res.status == "error", code
        assert "PermissionError" in res.stderr
    assert not (Path.home() / "stmkit-sandbox-pwned").exists()


def test_working_directory_is_removed():
    res = sandbox.run_python("import os; print(os.getcwd()); open('scratch.txt', 'w').write('x')")
    assert res.passed
    assert not Path(res.stdout.strip()).exists()


def test_killing_the_parent_fails():
    res = sandbox.run_python(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')\n"
    )
    assert res.status in ("error", "killed")
    res = sandbox.run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert res.status == "error"  # our pid is invisible (PID namespace) or not ours to signal (uid nobody)


def test_os_exit_is_an_error():
    res = sandbox.run_python("import os\nos._exit(3)\n")
    assert res.status == "error" and res.returncode == 3


def test_deep_recursion_is_an_error():
    res = sandbox.run_python("def f(n):\n    return f(n + 1)\nf(0)\n", timeout_s=5)
    assert res.status == "error" and "RecursionError" in res.stderr


def test_parent_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("STMKIT_FAKE_SECRET", "hunter2")
    res = sandbox.run_python("import os\nprint(os.environ['STMKIT_FAKE_SECRET'])\n")
    assert res.status == "error" and "KeyError" in res.stderr
    assert "hunter2" not in res.stdout + res.stderr
    res = sandbox.run_python(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    if IS_ROOT:
        assert res.status == "error"
        assert "hunter2" not in res.stdout + res.stderr


def test_network_is_blocked(layers):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(0.3)
        port = srv.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
        res = sandbox.run_python(code, timeout_s=5)
        assert res.status == "error"
        raw = sandbox.run_python(
            f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n",
            timeout_s=5,
        )
        assert raw.status == "error"
        with pytest.raises(TimeoutError):
            srv.accept()
    expected = "netns" if layers == "namespaces" else "socket_guard"
    assert expected in res.isolation


# --- SQL ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "toy.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, raw BLOB)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)", [(i, f"n{i}", i / 4, b"\x00\xff") for i in range(30)]
        )
    conn.close()
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_select_works(db):
    res = sandbox.run_sql(db, "SELECT id, name, score, raw FROM t WHERE id < 2 ORDER BY id", timeout_s=5)
    assert res.status == "ok" and res.error == ""
    assert res.rows == [(0, "n0", 0.0, b"\x00\xff"), (1, "n1", 0.25, b"\x00\xff")]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t (name) VALUES ('x')",
        "DROP TABLE t",
        "UPDATE t SET name = 'x'",
        "ATTACH DATABASE '/tmp/stmkit-attach.sqlite' AS other",
        "PRAGMA journal_mode=WAL",
        "SELECT 1; DROP TABLE t",
        "SELECT load_extension('nope')",
    ],
)
def test_writes_and_attach_fail_cleanly(db, sql):
    digest = _sha(db)
    res = sandbox.run_sql(db, sql, timeout_s=5)
    assert res.status == "error" and res.rows is None and res.error
    assert _sha(db) == digest
    assert not Path("/tmp/stmkit-attach.sqlite").exists()


def test_runaway_recursive_cte_times_out(db):
    digest = _sha(db)
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
    t0 = time.monotonic()
    res = sandbox.run_sql(db, sql, timeout_s=1.5)
    assert res.status == "timeout" and res.rows is None
    assert time.monotonic() - t0 < 6
    assert _sha(db) == digest


def test_row_cap(db):
    res = sandbox.run_sql(db, "SELECT id FROM t", row_cap=10, timeout_s=5)
    assert res.status == "row_cap" and len(res.rows) == 10


def test_bad_db_path_names_the_path(tmp_path):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(FileNotFoundError, match="nope.sqlite"):
        sandbox.run_sql(missing, "SELECT 1")


def test_execution_match_compares_result_sets(db):
    gold = "SELECT id FROM t WHERE id IN (1, 2, 3)"
    assert sandbox.sql_execution_match(db, "SELECT id FROM t WHERE id BETWEEN 1 AND 3 ORDER BY id DESC", gold)
    assert not sandbox.sql_execution_match(db, "SELECT id FROM t WHERE id BETWEEN 1 AND 4", gold)
    assert not sandbox.sql_execution_match(db, "SELECT name FROM t WHERE id IN (1, 2, 3)", gold)
    assert not sandbox.sql_execution_match(db, "DELETE FROM t", gold)


# --- the completion proof: a check passes only when every test ran after the code ---------------------------------

WRONG_ADD = "def add(a, b):\n    return a - b\n"
RIGHT_ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]

# Ways a wrong answer can leave before its tests run (or stop them from running); each must fail, with a cause.
EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "sys.exit()": "import sys\nsys.exit()\n",
    "exit()": "exit()\n",
    "quit()": "quit()\n",
    "raise SystemExit": "raise SystemExit\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "main block": "if __name__ == '__main__':\n    import sys\n    print(add(1, 2))\n    sys.exit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "os._exit(1)": "import os\nos._exit(1)\n",
    "os.abort()": "import os\nos.abort()\n",
    "SIGTERM to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "SIGKILL to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "kill(0, SIGTERM)": "import os, signal\nos.kill(0, signal.SIGTERM)\n",
    "signal handler exits 0": (
        "import os, signal\nsignal.signal(signal.SIGUSR1, lambda *a: os._exit(0))\nos.kill(os.getpid(), signal.SIGUSR1)\n"
    ),
    "alarm handler exits 0": (
        "import os, signal, time\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n"
        "time.sleep(3)\n"
    ),
    "exit hook + sys.exit(1)": "import atexit, os, sys\natexit.register(os._exit, 0)\nsys.exit(1)\n",
    "excepthook exits 0": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "threading.excepthook exits 0": (
        "import os, threading\nthreading.excepthook = lambda *a: os._exit(0)\n"
    ),
    "thread calls os._exit(0)": "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(2)\n",
    "KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "exit while the tests run": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "os._exit while the tests run": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "profiler exits 0 in the tests": "import os, sys\nsys.setprofile(lambda *a: os._exit(0))\n",
    "tracer exits 0 in the tests": "import os, sys\nsys.settrace(lambda *a: os._exit(0))\n",
    "exec/compile/enumerate replaced": (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n"
        "builtins.enumerate = lambda *a, **k: iter(())\n"
    ),
    "os.write replaced": "import os\nos.write = lambda fd, data: len(data)\n",
    "stdout closed then exit 0": "import os, sys\nos.close(1)\nos.close(2)\nos._exit(0)\n",
    "forged verdict on every fd": (
        "import os, json\nfor fd in range(3, 64):\n    for head in (b'', b'x '):\n        try:\n"
        "            os.write(fd, head + json.dumps({'done': 3}).encode() + b'\\n')\n"
        "        except OSError:\n            pass\nos._exit(0)\n"
    ),
    "fork: parent exits 0": "import os\nif os.fork():\n    os._exit(0)\n",
    "unclosed string swallows the tests": 'x = """\n',
}


@pytest.mark.parametrize("name", sorted(EARLY_EXITS))
def test_leaving_before_the_tests_finish_fails_with_its_cause(name):
    res = sandbox.check_program(WRONG_ADD + EARLY_EXITS[name], ADD_TESTS, timeout_s=5)
    assert not res.passed, f"{name}: {res}"
    assert res.status != "ok" and res.cause, f"{name}: no cause recorded: {res}"


@pytest.mark.parametrize(
    "name", ["sys.exit(0)", "exit()", "quit()", "raise SystemExit", "os._exit(0)", "SIGTERM to itself",
             "exit while the tests run", "thread calls os._exit(0)", "signal handler exits 0"]
)
def test_early_exits_are_named_as_such(name):
    res = sandbox.check_program(WRONG_ADD + EARLY_EXITS[name], ADD_TESTS, timeout_s=5)
    assert res.status == "early_exit", res
    assert "before the tests finished" in res.cause or "without the proof" in res.cause


def test_a_right_answer_passes_whatever_it_does_around_its_tests():
    extras = [
        "if __name__ == '__main__':\n    print(add(1, 2))\n",
        "import atexit, os\natexit.register(os._exit, 1)\n",  # exit hooks never run: the driver leaves first
        "import builtins\nbuiltins.print = None\n",
        "import sys\nsys.stdout.write('no newline')\n",
    ]
    for extra in extras:
        res = sandbox.check_program(RIGHT_ADD + extra, ADD_TESTS, setup="import math", timeout_s=5)
        assert res.passed and res.status == "ok" and res.cause == "", (extra, res)
    res = sandbox.check_program(RIGHT_ADD + "print('hello')\n", ADD_TESTS, timeout_s=5)
    assert res.stdout == "hello\n"  # unbuffered: output survives the driver's os._exit


def test_failure_causes_name_the_statement():
    res = sandbox.check_program(WRONG_ADD, ["assert add(0, 0) == 0", "assert add(1, 2) == 3"], timeout_s=5)
    assert res.status == "error" and res.cause == "AssertionError in test 2"
    res = sandbox.check_program("def add(a, b) return", ADD_TESTS, timeout_s=5)
    assert res.status == "error" and res.cause.startswith("SyntaxError in the code")
    res = sandbox.check_program(RIGHT_ADD, ADD_TESTS, setup="import no_such_module", timeout_s=5)
    assert res.status == "error" and res.cause.startswith("ModuleNotFoundError in the setup code")


def test_check_program_refuses_a_bare_string_of_tests():
    with pytest.raises(TypeError, match="tests must be a list"):
        sandbox.check_program(RIGHT_ADD, "assert add(1, 2) == 3")


def test_mbpp_scorer_and_self_output_filter_reject_early_exits():
    from stmkit.datagen import check_answers
    from stmkit.tasks import ScoreOptions, get_task
    from stmkit.tasks.base import Example

    ex = Example(id="t1", task="mbpp", prompt="add", tests=tuple(ADD_TESTS))
    answers = [f"```python\n{WRONG_ADD}import sys\nsys.exit(0)\n```", f"```python\n{RIGHT_ADD}```"]
    scored = get_task("mbpp").scorer([ex, ex], answers, ScoreOptions(timeout_s=5))
    assert [s["correct"] for s in scored] == [False, True]
    assert scored[0]["error"].startswith("early_exit: SystemExit")
    assert check_answers("mbpp", [ex, ex], answers, timeout_s=5) == [False, True]


# --- private scratch: /tmp, /var/tmp and /dev/shm ------------------------------------------------------------------


def _leak_code(tag: str) -> str:
    return "\n".join(
        f"open('{d}/{tag}', 'w').write('leak')" for d in sandbox.SCRATCH_DIRS if os.path.isdir(d)
    ) + "\n"


@root_only
def test_files_written_to_shared_scratch_folders_do_not_survive(layers):
    tag = f"stmkit-leak-{os.getpid()}-{layers}"
    res = sandbox.run_python(_leak_code(tag), timeout_s=10)
    assert res.passed, res
    survivors = [d for d in sandbox.SCRATCH_DIRS if os.path.exists(f"{d}/{tag}")]
    assert survivors == [], f"left behind in {survivors}"
    assert ("scratch_tmpfs" if layers == "namespaces" else "scratch_sweep") in res.isolation


def test_scratch_writes_count_against_the_scratch_limit():
    code = (
        "for i in range(40):\n"
        "    with open(f'/dev/shm/chunk{i}', 'wb') as f:\n"
        "        f.write(b'x' * (1 << 20))\n"
    )
    res = sandbox.run_python(code, timeout_s=10, scratch_mb=8, max_file_mb=4)
    if "scratch_tmpfs" not in res.isolation:
        pytest.skip("no mount namespace here: the scratch folders are shared (isolation_report says so)")
    assert res.status == "error" and "No space left on device" in res.stderr
    res = sandbox.run_python(code.replace("/dev/shm/", ""), timeout_s=10, scratch_mb=8, max_file_mb=4)
    assert res.status == "error" and "No space left on device" in res.stderr  # its working directory too


def test_isolation_report_names_the_scratch_layer():
    report = sandbox.isolation_report()
    assert report["scratch"].startswith(("private tmpfs", "shared folders"))


def test_sql_never_reports_success_from_a_runner_that_did_not_finish(db, monkeypatch):
    # A runner that printed an "ok" report but was then stopped is not trusted: its process status decides first.
    real = process.execute

    def stopped(*a, **k):
        res = real(*a, **k)
        return sandbox.SandboxResult("killed", -9, res.stdout, res.stderr, res.wall_s, res.isolation)

    monkeypatch.setattr(process, "execute", stopped)
    res = sandbox.run_sql(db, "SELECT 1")
    assert res.status != "ok" and res.rows is None


# --- found by a red-team pass: each passed a wrong answer, or left something behind, before its fix ---------------

RED_TEAM = {
    # reads the token from the first progress record by putting its own pipe under the verdict fd
    "verdict fd swapped to read a record": (
        "import os\n"
        "V = max(int(n) for n in os.listdir('/proc/self/fd') if int(n) > 2 and os.path.exists('/proc/self/fd/' + n)"
        " and os.readlink('/proc/self/fd/' + n).startswith('pipe:'))\n"
        "saved = os.dup(V)\nr, w = os.pipe()\nos.dup2(w, V)\n"
        "def add(a, b):\n"
        "    tok = os.read(r, 4096).split(b' ', 1)[0]\n"
        "    for line in (tok + b' {\"done\": 3}\\n', tok + b' done 3\\n'):\n"
        "        os.write(saved, line)\n"
        "    os._exit(0)\n"
    ),
    # a patched json encoder receives the token through bytes.__radd__
    "json encoder patched": (
        "import json, os\n"
        "class B(bytes):\n"
        "    def __radd__(self, other):\n"
        "        os.write(1, b'')\n"
        "        B.token = other\n"
        "        return bytes(other) + bytes(self)\n"
        "class S(str):\n"
        "    def encode(self, *a, **k):\n"
        "        return B(str.encode(self, *a, **k))\n"
        "class E(json.JSONEncoder):\n"
        "    def encode(self, o):\n"
        "        return S(super().encode(o))\n"
        "json._default_encoder = E()\n"
        "def add(a, b):\n"
        "    tok = getattr(B, 'token', b'').split(b' ')[0]\n"
        "    for fd in range(3, 32):\n"
        "        for line in (tok + b' {\"done\": 3}\\n', tok + b' done 3\\n'):\n"
        "            try:\n                os.write(fd, line)\n            except OSError:\n                pass\n"
        "    os._exit(0)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(RED_TEAM))
def test_red_team_forgeries_fail(name):
    res = sandbox.check_program(WRONG_ADD + RED_TEAM[name], ADD_TESTS, timeout_s=5)
    assert not res.passed, f"{name}: {res}"


@root_only
def test_run_lock_and_sysv_ipc_do_not_survive():
    tag = f"stmkit-leak-{os.getpid()}-lock"
    code = (f"open('/run/lock/{tag}', 'w').write('x')\n"
            "import ctypes\nlibc = ctypes.CDLL(None)\n"
            f"print(libc.shmget({0x5717 + os.getpid() % 1000}, 1 << 20, 0o1000 | 0o666))\n")  # IPC_CREAT
    res = sandbox.run_python(code, timeout_s=10)
    assert res.passed, res
    assert not os.path.exists(f"/run/lock/{tag}")
    assert "ipcns" in res.isolation
    with open("/proc/sysvipc/shm") as f:
        keys = {int(line.split()[0]) for line in f.readlines()[1:] if line.split()}
    assert 0x5717 + os.getpid() % 1000 not in keys


@root_only
def test_concurrent_runs_cannot_see_each_other():
    # Two runs at once, both uid nobody: the second must not find the first in /proc.
    slow = "import time\ntime.sleep(3)\n"
    spy = ("import os, time\ntime.sleep(0.5)\n"
           "others = [p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', str(os.getpid()))]\n"
           "seen = [open(f'/proc/{p}/cmdline', 'rb').read() for p in others]\n"
           "print(sum(b'time.sleep(3)' in s or b'main.py' in s for s in seen))\n")
    res = sandbox.run_many([slow, spy], workers=2, timeout_s=10)
    assert res[1].passed, res[1]
    assert res[1].stdout.strip() == "0", res[1].stdout
    assert "private_proc" in res[1].isolation


def test_a_blob_never_equals_its_text_spelling(db):
    gold = "SELECT raw FROM t WHERE id = 0"
    assert not sandbox.sql_execution_match(db, "SELECT 'x''00ff''' FROM t WHERE id = 0", gold, timeout_s=5)
    assert sandbox.sql_execution_match(db, "SELECT x'00ff'", gold, timeout_s=5)


def test_an_interpreter_under_tmp_makes_the_scratch_partial_and_swept(monkeypatch):
    # An interpreter inside a scratch folder keeps that folder shared: the run must say so, and sweep it.
    if not IS_ROOT:
        pytest.skip("the sweep removes what uid nobody left: root only")
    real = os.path.realpath(sandbox.isolation_report()["code_interpreter"])
    resolve = os.path.realpath
    monkeypatch.setattr(os.path, "realpath",
                        lambda p, *a, **k: "/tmp/elsewhere/python3" if p == real or resolve(p) == real
                        else resolve(p, *a, **k))
    tag = f"stmkit-leak-{os.getpid()}-partial"
    res = sandbox.run_python(f"open('/tmp/{tag}', 'w').write('x')\n", timeout_s=10)
    assert res.passed, res
    assert "scratch_partial" in res.isolation and "scratch_sweep" in res.isolation
    assert not os.path.exists(f"/tmp/{tag}")
