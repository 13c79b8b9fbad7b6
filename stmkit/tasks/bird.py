"""BIRD text-to-SQL: the dev set from a directory you provide, and an offline stand-in that is NOT BIRD.

BIRD (https://bird-bench.github.io/) is not on any package registry, and its dev set (1534 questions over 11
SQLite databases, about 1.4 GB) cannot be shipped with the kit. ``load_bird_dev`` reads the official layout once
you have downloaded and unpacked it. ``build_standin`` (generator in ``bird_standin``) makes a few small SQLite
databases (school, shop, library) and template questions with gold SQL, in BIRD's format, so that the whole BIRD
code path (prompt, generation, SQL extraction, sandboxed execution match) runs offline and in tests. Its numbers say
nothing about BIRD: the questions are simple, templated and synthetic. Stand-in items carry ``meta["standin"] = True``.

Scoring is BIRD's execution accuracy (``stmkit.sandbox.sql_execution_match``): predicted and gold queries both run
read-only in a separate process; correct iff their result sets are equal.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import sandbox
from ..cache import atomic_dir, cache_root, verify_dir
from . import prompts
from .base import Example, ScoreOptions, spread
from .bird_standin import connect_read_only, write_standin
from .registry import Task, register

TASK_NAMES = ("bird",)  # what this module registers (read without importing it: registry.task_names)

BIRD_URL = "https://bird-bench.github.io/"
PROMPT_STYLES = ("kit", "reference")

# The kit's zero-shot prompt: the schema, BIRD's "External Knowledge" (evidence) line, the question, and the
# answer format. Wording follows BIRD's and stream-bench's prompts ("-- Using valid SQLite ..."); the paper's
# code used stream-bench's prompt without the evidence (prompt_style="reference", prompts.BIRD_PROMPT).
BIRD_PROMPT_KIT = (
    "{schema}\n\n"
    "{evidence_line}"
    "-- Using valid SQLite{evidence_clause}, answer the following question for the tables provided above.\n"
    "-- Question: {question}\n\n"
    "Now, generate one correct SQLite query that answers the question. Reply with the query only, in the "
    "format:\n```sql\n<your_SQL_code>\n```"
)


# --------------------------------------------------------------------------------------------------------------
# Prompts


def schema_prompt(db_path: str | Path, example_rows: int = 0) -> str:
    """The CREATE TABLE statements of a database, optionally each followed by its first rows (BIRD style)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"SQLite database {str(db_path)!r} not found; check the database directory")
    conn = connect_read_only(db_path)
    try:
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        ).fetchall()
        parts = []
        for name, sql in tables:
            text = sql.strip()
            if example_rows > 0:
                cur = conn.execute(f'SELECT * FROM "{name}" LIMIT {int(example_rows)}')
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
                lines = ["\t".join(cols)] + ["\t".join(str(v) for v in r) for r in rows]
                text += f"\n/*\n{len(rows)} example rows:\nSELECT * FROM {name} LIMIT {int(example_rows)};\n"
                text += "\n".join(lines) + "\n*/"
            parts.append(text)
    finally:
        conn.close()
    return "\n\n".join(parts)


def _strip_all_lines(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines())


def make_prompt(schema: str, question: str, evidence: str = "", style: str = "kit") -> str:
    """The zero-shot BIRD prompt: 'kit' (schema, evidence, question, ```sql format) or 'reference' (paper's code)."""
    if style == "reference":
        return _strip_all_lines(prompts.BIRD_PROMPT.format(schema=schema, question=question.strip()))
    if style != "kit":
        raise ValueError(f"prompt style {style!r} is unknown; use one of {PROMPT_STYLES}")
    evidence = (evidence or "").strip()
    return BIRD_PROMPT_KIT.format(
        schema=schema,
        evidence_line=f"-- External Knowledge: {evidence}\n" if evidence else "",
        evidence_clause=" and understanding External Knowledge" if evidence else "",
        question=question.strip(),
    )


def _example(
    item_id: str,
    record: dict[str, Any],
    db_path: Path,
    schema: str,
    style: str,
    extra_meta: dict[str, Any] | None = None,
) -> Example:
    gold = record["SQL"].strip()
    evidence = (record.get("evidence") or "").strip()
    meta = {"db_path": str(db_path), "db_id": record["db_id"], "question": record["question"].strip()}
    meta["evidence"] = evidence
    if record.get("difficulty"):
        meta["difficulty"] = record["difficulty"]
    meta.update(extra_meta or {})
    return Example(
        id=item_id,
        task="bird",
        prompt=make_prompt(schema, record["question"], evidence, style),
        response=f"```sql\n{gold}\n```",
        answer=gold,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------------------------
# The real dev set


def _bird_missing(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found at {path}. BIRD is not on any package registry: download the dev set from {BIRD_URL} "
        "(e.g. dev.zip), unpack it, also unpack dev_databases.zip inside it, and pass the folder that holds "
        "dev.json and dev_databases/ (e.g. load_bird_dev('data/bird/dev_20240627')). For offline runs use "
        "build_standin() instead."
    )


def load_bird_dev(
    path: str | Path,
    *,
    prompt_style: str = "kit",
    example_rows: int = 0,
    limit: int | None = None,
) -> list[Example]:
    """BIRD dev items from the official layout: <path>/dev.json and <path>/dev_databases/<db_id>/<db_id>.sqlite."""
    root = Path(path).expanduser()
    if root.is_file() and root.suffix == ".json":
        root, json_path = root.parent, root
    else:
        json_path = root / "dev.json"
    if not root.is_dir():
        raise _bird_missing("BIRD dev directory", root)
    if not json_path.is_file():
        raise _bird_missing("dev.json", json_path)
    db_root = root / "dev_databases"
    if not db_root.is_dir():
        if (root / "dev_databases.zip").is_file():
            raise FileNotFoundError(
                f"{db_root} does not exist but {root / 'dev_databases.zip'} does: unzip it in {root} first"
            )
        raise _bird_missing("dev_databases/ directory", db_root)
    try:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(
            f"{json_path} is not valid JSON ({e}); re-download the BIRD dev set from {BIRD_URL}"
        ) from e
    if not isinstance(records, list):
        raise ValueError(f"{json_path} should hold a JSON list of questions, got {type(records).__name__}")
    return _items_from_records(records, db_root, json_path, prompt_style, example_rows, limit, standin=False)


def _items_from_records(
    records: list[dict[str, Any]],
    db_root: Path,
    json_path: Path,
    style: str,
    example_rows: int,
    limit: int | None,
    standin: bool,
) -> list[Example]:
    schemas: dict[str, str] = {}
    items = []
    for n, rec in enumerate(records[:limit] if limit is not None else records):
        for key in ("db_id", "question", "SQL"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise ValueError(
                    f"item {n} of {json_path} has no '{key}' text field; is this a BIRD dev.json?"
                )
        db_id = rec["db_id"]
        db_path = (db_root / db_id / f"{db_id}.sqlite").absolute()
        if db_id not in schemas:
            if not db_path.is_file():
                raise FileNotFoundError(
                    f"item {n} of {json_path} needs database {db_path}, which does not exist; "
                    f"check that dev_databases/ was fully unpacked (BIRD: {BIRD_URL})"
                )
            schemas[db_id] = schema_prompt(db_path, example_rows)
        if standin:
            item_id = rec["question_id"]
            extra = {"standin": True, "template": rec["template"]}
        else:
            item_id = str(rec.get("question_id", n))
            extra = {}
        items.append(_example(item_id, rec, db_path, schemas[db_id], style, extra))
    return items


# --------------------------------------------------------------------------------------------------------------
# The offline stand-in (NOT BIRD): generated by bird_standin


def build_standin(
    root: Path, n_items: int = 200, seed: int = 0, *, prompt_style: str = "kit"
) -> list[Example]:
    """Generate the offline stand-in (NOT BIRD) under root: same seed -> byte-identical databases and items."""
    records = write_standin(Path(root), n_items, seed)
    return _items_from_records(records, Path(root) / "standin_databases", Path(root) / "standin.json", prompt_style, 0,
                               None, standin=True)


# --------------------------------------------------------------------------------------------------------------
# Extraction and scoring

_SQL_BLOCK = re.compile(r"```[ \t]*(?:sql|sqlite)[ \t]*\n(.*?)(?:```|\Z)", re.IGNORECASE | re.DOTALL)
_ANY_BLOCK = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
# A bare query: SELECT, or WITH followed by a CTE definition (not prose such as "With the hint, ..."), up to a
# blank line or the end of the text.
_BARE_SQL = re.compile(
    r"^[ \t]*(?:SELECT\b|WITH\s+(?:RECURSIVE\s+)?[\w\"`\[\]]+\s*(?:\([^)]*\)\s*)?AS\s*\().*?(?=\n[ \t]*\n|\Z)",
    re.IGNORECASE | re.DOTALL | re.MULTILINE,
)


def extract_sql(text: str) -> str:
    """The SQL in a model answer: the last ```sql block, else the last ``` block, else a bare SELECT/WITH."""
    for pattern in (_SQL_BLOCK, _ANY_BLOCK):
        blocks = [b.strip() for b in pattern.findall(text)]
        blocks = [b for b in blocks if b]
        if blocks:
            return blocks[-1]
    m = _BARE_SQL.search(text)
    return m.group(0).strip() if m else ""


def score(example: Example, generated: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Execution match of the generated SQL against the gold SQL on the item's database (run in the sandbox)."""
    db_path = example.meta.get("db_path")
    if not db_path:
        raise ValueError(
            f"item {example.id!r} has no meta['db_path']; load it with load_bird_dev or build_standin"
        )
    sql = extract_sql(generated)
    if not sql:
        return {"extracted": "", "correct": False, "error": "no SQL found in the answer"}
    match = sandbox.sql_execution_compare(db_path, sql, example.answer, timeout_s=timeout_s)
    if match.gold.status != "ok":
        error = f"gold SQL failed ({match.gold.status}): {match.gold.error}"
    elif match.predicted.status != "ok":
        error = f"{match.predicted.status}: {match.predicted.error}"
    else:
        error = "" if match.correct else "result differs from the gold result"
    return {"extracted": sql, "correct": match.correct, "error": error}


def score_many(
    examples: Sequence[Example], generated: Sequence[str], options: ScoreOptions
) -> list[dict[str, Any]]:
    """`score` for many items, options.workers at a time (each query runs in its own sandboxed process)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(examples) != len(generated):
        raise ValueError(f"bird: {len(examples)} examples but {len(generated)} generated answers")
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        pairs = zip(examples, generated, strict=True)
        return list(pool.map(lambda pair: score(*pair, timeout_s=options.timeout_s), pairs))


# --------------------------------------------------------------------------------------------------------------
# The registered task: BIRD dev when a directory is given, else the stand-in built once in the cache

STANDIN_VERSION = 1  # bump when build_standin changes what it generates: the cached copy is rebuilt
STANDIN_ITEMS = 200
BIRD_DIR_ENV = "STMKIT_BIRD_DIR"


def load_standin(root: str | Path, *, prompt_style: str = "kit") -> list[Example]:
    """The stand-in items of a folder made by build_standin (its standin.json and standin_databases/)."""
    root = Path(root)
    json_path = root / "standin.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} is missing; build the stand-in with build_standin({str(root)!r})")
    records = json.loads(json_path.read_text(encoding="utf-8"))
    return _items_from_records(records, root / "standin_databases", json_path, prompt_style, 0, None, standin=True)


def _standin_dir(seed: int, n_items: int) -> Path:
    """The stand-in's folder in the stmkit cache, built once (atomically) and verified."""
    root = cache_root() / "bird_standin" / f"v{STANDIN_VERSION}-seed{seed}-n{n_items}"
    if not root.is_dir():
        with atomic_dir(root, meta={"standin_version": STANDIN_VERSION, "seed": seed, "n_items": n_items}) as tmp:
            build_standin(tmp, n_items, seed)
    verify_dir(root)
    return root


def ensure_standin(seed: int = 0, n_items: int = STANDIN_ITEMS, *, prompt_style: str = "kit") -> list[Example]:
    """The stand-in (NOT BIRD), built once into the stmkit cache folder and reused."""
    return load_standin(_standin_dir(seed, n_items), prompt_style=prompt_style)


def ensure_dev_fixture(seed: int = 0, n_items: int = STANDIN_ITEMS) -> Path:
    """The stand-in laid out as BIRD dev is (dev.json, dev_databases/<db>/<db>.sqlite), built once in the cache:
    data.source 'hub-fixture' reads it through load_bird_dev, the path the paper profile takes with real BIRD."""
    import shutil

    standin = _standin_dir(seed, n_items)
    root = cache_root() / "bird_dev_fixture" / standin.name
    if not root.is_dir():
        with atomic_dir(root, meta={"standin_version": STANDIN_VERSION, "seed": seed, "n_items": n_items}) as tmp:
            shutil.copytree(standin / "standin_databases", tmp / "dev_databases")
            shutil.copyfile(standin / "standin.json", tmp / "dev.json")
    verify_dir(root)
    return root


def load_items(
    split: str = "test", n: int = 0, bird_dir: str | Path | None = None, *, prompt_style: str = "kit",
    source: str = "embedded",
) -> list[Example]:
    """BIRD items: the dev set in bird_dir (or $STMKIT_BIRD_DIR) if given, else by data source: the offline
    stand-in ('embedded'), the stand-in in BIRD's dev layout ('hub-fixture'), or an error ('hf': BIRD is not on
    the hub, the paper profile needs the dev folder).

    Only the "test" split exists (the paper evaluates on BIRD dev). With n > 0 on the real dev set, the n items
    are a deterministic spread over its databases (ordered by split_rank), not the first n, which would all
    come from one or two databases.
    """
    if split != "test":
        raise ValueError(f"task bird has only a 'test' split (BIRD dev or the stand-in), not {split!r}")
    folder = bird_dir or os.environ.get(BIRD_DIR_ENV) or None
    if folder is None and source == "hf":
        raise ValueError(
            f"BIRD is not on the Hugging Face hub; download the dev set from {BIRD_URL} and set "
            f"${BIRD_DIR_ENV} (or eval.bird_dir) to its folder, or use data.source 'embedded' for the stand-in"
        )
    if folder is None and source == "hub-fixture":
        folder = ensure_dev_fixture()
    if folder is None:
        items = ensure_standin(prompt_style=prompt_style)
        if n > len(items):
            raise ValueError(f"asked for {n} items of the BIRD stand-in, which has only {len(items)}")
        return items[:n] if n else items
    return spread("bird", load_bird_dev(folder, prompt_style=prompt_style), n, f"BIRD dev in {folder}")


def _load(split: str, n: int, source: str, data_dir: str | None) -> list[Example]:
    return load_items(split, n, data_dir or None, source=source)


TASK = register(
    Task(
        name="bird",
        kind="sql",
        title="BIRD",
        embedded=None,
        note=f"BIRD dev from ${BIRD_DIR_ENV} / eval.bird_dir; else the offline stand-in (NOT BIRD, see bird.py)",
        scorer=score_many,
        loader=_load,
    )
)
