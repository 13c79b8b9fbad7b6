"""SQL in the sandbox: one read-only query in a separate process, and BIRD's execution match of two queries.

The runner below is the kit's own script, run through the same machinery as model code (limits, namespaces,
fresh environment) but as the kit's user, because databases often sit where ``nobody`` cannot read them. The
statement itself is contained by SQLite: a read-only connection, an authorizer that allows only reads, a
progress-handler time limit and a row cap.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import process

SQL_STATUSES = ("ok", "error", "timeout", "row_cap")


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
    res = process.execute(
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
