"""What runs inside the sandbox's processes, as source text: the launcher, the socket guard and the check driver.

The parent (process.py) passes these to a fresh interpreter with ``-c``; none of it is ever executed in the kit's
own process.
"""

# --------------------------------------------------------------------------------------------------------------
# The launcher: runs as `python -I -S -c LAUNCHER <config json>` in the new session. It sets the limits, makes
# the namespaces, forks the code's process (which drops privileges and execs the interpreter) and reports the
# code's exit status, and the layers that were active, on a status pipe that the code never sees.
LAUNCHER = r"""
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
SOCKET_GUARD = r"""
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

RUN_MAIN = r"""
import sys as _sys, runpy as _runpy
_path = _sys.argv[1]
_sys.argv = _sys.argv[1:]
_runpy.run_path(_path, run_name="__main__")
"""

# The check driver: `python -u -c CHECK_DRIVER check.json TOKEN_FD VERDICT_FD`. Every unit (setup, code, each test)
# is compiled before any of them runs, and what the driver calls afterwards is bound to its own locals first, so
# code that replaces builtins, os.write, exec, json or hooks cannot make it skip a test. The token comes on a pipe
# that is closed before the code runs; the proof line (token + count) is built before the code runs, lives only in
# this function's locals and is written only after the last test returned. Progress and failure records carry no
# token. Code that digs into the driver's frame (sys._getframe, gc, a tracer set on the driver's frame, its memory)
# can still forge a pass: tests run in the code's own process, as in every assert-based checker.
CHECK_DRIVER = r"""
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
