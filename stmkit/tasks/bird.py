"""BIRD text-to-SQL: the dev set from a directory you provide, and an offline stand-in that is NOT BIRD.

BIRD (https://bird-bench.github.io/) is not on any package registry, and its dev set (1534 questions over 11
SQLite databases, about 1.4 GB) cannot be shipped with the kit. ``load_bird_dev`` reads the official layout once
you have downloaded and unpacked it. ``build_standin`` generates a few small SQLite databases (school, shop,
library) and template questions with gold SQL, in BIRD's format, so that the whole BIRD code path (prompt,
generation, SQL extraction, sandboxed execution match) runs offline and in tests. Its numbers say nothing about
BIRD: the questions are simple, templated and synthetic. Stand-in items carry ``meta["standin"] = True``.

Scoring is BIRD's execution accuracy (``stmkit.sandbox.sql_execution_match``): predicted and gold queries both run
read-only in a separate process; correct iff their result sets are equal.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sandbox
from . import prompts
from .base import Example, ScoreOptions, spread
from .registry import Task, register

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


def _connect_ro(db_path: str | Path) -> sqlite3.Connection:
    """Read-only connection for the kit's own schema queries (never for model-written SQL)."""
    return sqlite3.connect(Path(db_path).absolute().as_uri() + "?mode=ro", uri=True)


def schema_prompt(db_path: str | Path, example_rows: int = 0) -> str:
    """The CREATE TABLE statements of a database, optionally each followed by its first rows (BIRD style)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"SQLite database {str(db_path)!r} not found; check the database directory")
    conn = _connect_ro(db_path)
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
# The offline stand-in (NOT BIRD)

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ren",
    "sa",
    "to",
    "vi",
    "del",
    "an",
    "bo",
    "cor",
    "el",
    "fin",
    "ga",
    "hu",
    "ja",
)
_CITIES = ("Avonford", "Brookvale", "Cedarton", "Dunmore", "Elmstead", "Fairhaven", "Glenwick", "Harrowgate")
_COUNTRIES = ("Norland", "Estavia", "Westmark", "Sudora", "Ostreich")


def _names(rng: random.Random, n: int, words: int = 2) -> list[str]:
    out: list[str] = []
    seen = set()
    while len(out) < n:
        name = " ".join(
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
            for _ in range(words)
        )
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _school(rng: random.Random) -> tuple[list[str], dict[str, list[tuple]]]:
    ddl = [
        "CREATE TABLE students (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  grade INTEGER,\n"
        "  city TEXT,\n  birth_year INTEGER\n)",
        "CREATE TABLE courses (\n  id INTEGER PRIMARY KEY,\n  title TEXT NOT NULL,\n  department TEXT,\n"
        "  credits INTEGER\n)",
        "CREATE TABLE enrollments (\n  student_id INTEGER REFERENCES students(id),\n"
        "  course_id INTEGER REFERENCES courses(id),\n  score INTEGER,\n  PRIMARY KEY (student_id, course_id)\n)",
    ]
    students = [
        (i + 1, name, rng.randint(9, 12), rng.choice(_CITIES), rng.randint(2006, 2010))
        for i, name in enumerate(_names(rng, 60))
    ]
    depts = ("Mathematics", "Science", "History", "Languages", "Arts")
    titles = _names(rng, 14, words=1)
    courses = [
        (i + 1, f"{t} Studies", rng.choice(depts), rng.choice((2, 3, 4, 5))) for i, t in enumerate(titles)
    ]
    pairs = sorted(rng.sample([(s[0], c[0]) for s in students for c in courses], 180))
    # Scores are distinct within a course, so "the k best students" never ends in a tie.
    by_course: dict[int, list[int]] = {}
    for student, course in pairs:
        by_course.setdefault(course, []).append(student)
    scores = {
        c: dict(zip(studs, rng.sample(range(35, 101), len(studs)), strict=True))
        for c, studs in by_course.items()
    }
    enrollments = [(s, c, scores[c][s]) for s, c in pairs]
    return ddl, {"students": students, "courses": courses, "enrollments": enrollments}


def _shop(rng: random.Random) -> tuple[list[str], dict[str, list[tuple]]]:
    ddl = [
        "CREATE TABLE customers (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  city TEXT,\n"
        "  joined_year INTEGER\n)",
        "CREATE TABLE products (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  category TEXT,\n"
        "  price REAL\n)",
        "CREATE TABLE orders (\n  id INTEGER PRIMARY KEY,\n  customer_id INTEGER REFERENCES customers(id),\n"
        "  product_id INTEGER REFERENCES products(id),\n  quantity INTEGER,\n  order_year INTEGER\n)",
    ]
    customers = [
        (i + 1, name, rng.choice(_CITIES), rng.randint(2015, 2023)) for i, name in enumerate(_names(rng, 45))
    ]
    cats = ("Kitchen", "Garden", "Toys", "Books", "Tools")
    prices = rng.sample(range(199, 9999), 30)  # distinct prices: "most expensive" has one answer
    products = [
        (i + 1, f"{name} {rng.choice(('Deluxe', 'Basic', 'Pro', 'Mini'))}", rng.choice(cats), prices[i] / 100)
        for i, name in enumerate(_names(rng, 30, words=1))
    ]
    orders = [
        (
            i + 1,
            rng.randint(1, len(customers)),
            rng.randint(1, len(products)),
            rng.randint(1, 6),
            rng.randint(2019, 2024),
        )
        for i in range(150)
    ]
    return ddl, {"customers": customers, "products": products, "orders": orders}


def _library(rng: random.Random) -> tuple[list[str], dict[str, list[tuple]]]:
    ddl = [
        "CREATE TABLE authors (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  country TEXT\n)",
        "CREATE TABLE books (\n  id INTEGER PRIMARY KEY,\n  title TEXT NOT NULL,\n"
        "  author_id INTEGER REFERENCES authors(id),\n  genre TEXT,\n  year INTEGER,\n  pages INTEGER\n)",
        "CREATE TABLE loans (\n  id INTEGER PRIMARY KEY,\n  book_id INTEGER REFERENCES books(id),\n"
        "  member_name TEXT,\n  loan_year INTEGER,\n  returned INTEGER\n)",
    ]
    authors = [(i + 1, name, rng.choice(_COUNTRIES)) for i, name in enumerate(_names(rng, 20))]
    genres = ("Mystery", "Fantasy", "Poetry", "Biography", "Science")
    page_counts = rng.sample(range(90, 900), 50)
    books = [
        (
            i + 1,
            f"The {t}",
            rng.randint(1, len(authors)),
            rng.choice(genres),
            rng.randint(1950, 2023),
            page_counts[i],
        )
        for i, t in enumerate(_names(rng, 50, words=1))
    ]
    members = _names(rng, 25)
    loans = [
        (i + 1, rng.randint(1, len(books)), rng.choice(members), rng.randint(2018, 2024), rng.randint(0, 1))
        for i in range(140)
    ]
    return ddl, {"authors": authors, "books": books, "loans": loans}


_DATABASES: dict[str, Callable[[random.Random], tuple[list[str], dict[str, list[tuple]]]]] = {
    "school": _school,
    "shop": _shop,
    "library": _library,
}


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class _Template:
    """A question pattern. Each slot draws from a column (table, column index) or from a tuple of values."""

    name: str
    db_id: str
    question: str
    evidence: str
    sql: str  # slots as {slot} (numbers) or {slot_q} (quoted SQL string literal)
    slots: dict[str, tuple]

    def draw(self, rng: random.Random, data: dict[str, list[tuple]]) -> tuple[str, str, str]:
        values: dict[str, Any] = {}
        for slot, spec in self.slots.items():
            if len(spec) == 2 and isinstance(spec[0], str) and spec[0] in data:
                choices = sorted({row[spec[1]] for row in data[spec[0]]})
            else:
                choices = list(spec)
            values[slot] = rng.choice(choices)
        quoted = {f"{k}_q": _q(v) for k, v in values.items() if isinstance(v, str)}
        return self.question.format(**values), self.evidence, self.sql.format(**values, **quoted)


_TEMPLATES = (
    _Template(
        "count_filter",
        "school",
        "How many students live in {city}?",
        "",
        "SELECT COUNT(*) FROM students WHERE city = {city_q}",
        {"city": ("students", 3)},
    ),
    _Template(
        "list_filter",
        "school",
        "List the names of the students in grade {grade} who were born in {year}.",
        "born in refers to birth_year",
        "SELECT name FROM students WHERE grade = {grade} AND birth_year = {year}",
        {"grade": ("students", 2), "year": ("students", 4)},
    ),
    _Template(
        "join",
        "school",
        "What are the titles of the courses that {name} is enrolled in?",
        "enrolled refers to a row in enrollments",
        "SELECT c.title FROM courses AS c JOIN enrollments AS e ON e.course_id = c.id "
        "JOIN students AS s ON s.id = e.student_id WHERE s.name = {name_q}",
        {"name": ("students", 1)},
    ),
    _Template(
        "aggregate",
        "school",
        "What is the average score in the course {title}?",
        "",
        "SELECT AVG(e.score) FROM enrollments AS e JOIN courses AS c ON c.id = e.course_id "
        "WHERE c.title = {title_q}",
        {"title": ("courses", 1)},
    ),
    _Template(
        "group_by",
        "school",
        "For each department, how many courses worth at least {credits} credits does it offer?",
        "list each department with its number of courses",
        "SELECT department, COUNT(*) FROM courses WHERE credits >= {credits} GROUP BY department",
        {"credits": (2, 3, 4)},
    ),
    _Template(
        "order_limit",
        "school",
        "Name the {k} students with the highest score in {title}, best first.",
        "highest score refers to MAX(score)",
        "SELECT s.name FROM students AS s JOIN enrollments AS e ON e.student_id = s.id "
        "JOIN courses AS c ON c.id = e.course_id WHERE c.title = {title_q} ORDER BY e.score DESC, s.id "
        "LIMIT {k}",
        {"k": (1, 2, 3), "title": ("courses", 1)},
    ),
    _Template(
        "count_filter",
        "shop",
        "How many products in the {cat} category cost less than {price} dollars?",
        "cost refers to price",
        "SELECT COUNT(*) FROM products WHERE category = {cat_q} AND price < {price}",
        {"cat": ("products", 2), "price": (20, 40, 60, 80)},
    ),
    _Template(
        "join",
        "shop",
        "Which products did {name} order in {year}?",
        "order in refers to order_year",
        "SELECT DISTINCT p.name FROM products AS p JOIN orders AS o ON o.product_id = p.id "
        "JOIN customers AS c ON c.id = o.customer_id WHERE c.name = {name_q} AND o.order_year = {year}",
        {"name": ("customers", 1), "year": ("orders", 4)},
    ),
    _Template(
        "aggregate",
        "shop",
        "What is the total quantity of {cat} products ordered by customers from {city}?",
        "total quantity refers to SUM(quantity)",
        "SELECT SUM(o.quantity) FROM orders AS o JOIN products AS p ON p.id = o.product_id "
        "JOIN customers AS c ON c.id = o.customer_id WHERE p.category = {cat_q} AND c.city = {city_q}",
        {"cat": ("products", 2), "city": ("customers", 2)},
    ),
    _Template(
        "order_limit",
        "shop",
        "What are the names and prices of the {k} most expensive products in the {cat} category?",
        "most expensive refers to MAX(price)",
        "SELECT name, price FROM products WHERE category = {cat_q} ORDER BY price DESC LIMIT {k}",
        {"k": (1, 2, 3, 5), "cat": ("products", 2)},
    ),
    _Template(
        "group_by",
        "shop",
        "How many orders were placed in each year by customers who joined in or after {year}?",
        "each year refers to order_year; joined refers to joined_year",
        "SELECT o.order_year, COUNT(*) FROM orders AS o JOIN customers AS c ON c.id = o.customer_id "
        "WHERE c.joined_year >= {year} GROUP BY o.order_year",
        {"year": (2016, 2017, 2018, 2019, 2020)},
    ),
    _Template(
        "count_filter",
        "library",
        "How many {genre} books were published before {year}?",
        "published refers to year",
        "SELECT COUNT(*) FROM books WHERE genre = {genre_q} AND year < {year}",
        {"genre": ("books", 3), "year": (1970, 1980, 1990, 2000, 2010)},
    ),
    _Template(
        "join",
        "library",
        "List the titles of the books written by authors from {country}.",
        "",
        "SELECT b.title FROM books AS b JOIN authors AS a ON a.id = b.author_id WHERE a.country = {country_q}",
        {"country": ("authors", 2)},
    ),
    _Template(
        "aggregate",
        "library",
        "What is the average number of pages of the books by {name}?",
        "average number of pages refers to AVG(pages)",
        "SELECT AVG(b.pages) FROM books AS b JOIN authors AS a ON a.id = b.author_id WHERE a.name = {name_q}",
        {"name": ("authors", 1)},
    ),
    _Template(
        "group_by",
        "library",
        "For each genre, how many loans made in {year} have not been returned yet?",
        "not returned refers to returned = 0",
        "SELECT b.genre, COUNT(*) FROM loans AS l JOIN books AS b ON b.id = l.book_id "
        "WHERE l.loan_year = {year} AND l.returned = 0 GROUP BY b.genre",
        {"year": ("loans", 3)},
    ),
    _Template(
        "order_limit",
        "library",
        "Which {k} {genre} books have the most pages? Give their titles, longest first.",
        "most pages refers to MAX(pages)",
        "SELECT title FROM books WHERE genre = {genre_q} ORDER BY pages DESC LIMIT {k}",
        {"k": (1, 2, 3), "genre": ("books", 3)},
    ),
)


def _write_db(path: Path, ddl: list[str], data: dict[str, list[tuple]]) -> None:
    """Create the database at a temporary name, then rename: an interrupted build never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        with conn:
            for stmt in ddl:
                conn.execute(stmt)
            for table, rows in data.items():
                marks = ",".join("?" * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    finally:
        conn.close()
    os.replace(tmp, path)


def build_standin(
    root: Path, n_items: int = 200, seed: int = 0, *, prompt_style: str = "kit"
) -> list[Example]:
    """Generate the offline stand-in (NOT BIRD) under root: same seed -> byte-identical databases and items."""
    if n_items < 1:
        raise ValueError(f"n_items={n_items!r} must be >= 1")
    root = Path(root)
    db_root = root / "standin_databases"
    data_by_db = {}
    for db_id, make in _DATABASES.items():
        ddl, data = make(random.Random(f"stmkit-standin:{seed}:{db_id}"))
        _write_db(db_root / db_id / f"{db_id}.sqlite", ddl, data)
        data_by_db[db_id] = data
    rng = random.Random(f"stmkit-standin:{seed}:questions")
    records, seen = [], set()
    conns = {db_id: _connect_ro(db_root / db_id / f"{db_id}.sqlite") for db_id in _DATABASES}
    try:
        attempts = 0
        while len(records) < n_items:
            attempts += 1
            if attempts > 50 * n_items:
                raise RuntimeError(
                    f"could only make {len(records)} distinct stand-in questions; ask for fewer"
                )
            # Round robin over the templates; one that has run out of new questions is just skipped.
            template = _TEMPLATES[attempts % len(_TEMPLATES)]
            question, evidence, sql = template.draw(rng, data_by_db[template.db_id])
            if question in seen:
                continue
            rows = conns[template.db_id].execute(sql).fetchall()  # the kit's own gold SQL: verify it runs
            if not rows or rows == [(None,)] or rows == [(0,)]:
                continue  # an empty or zero answer would make many wrong queries look right
            seen.add(question)
            records.append(
                {
                    "question_id": f"standin-{len(records):04d}",
                    "db_id": template.db_id,
                    "question": question,
                    "evidence": evidence,
                    "SQL": sql,
                    "template": template.name,
                }
            )
    finally:
        for conn in conns.values():
            conn.close()
    json_path = root / "standin.json"
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    return _items_from_records(records, db_root, json_path, prompt_style, 0, None, standin=True)


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
    from ..cache import atomic_dir, cache_root, verify_dir

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

    from ..cache import atomic_dir, cache_root, verify_dir

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
