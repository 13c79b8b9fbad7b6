"""BIRD's offline stand-in (NOT BIRD): a few small SQLite databases (school, shop, library) and template questions
with gold SQL, written in BIRD's dev format so that the whole BIRD code path runs offline and in tests.

Its numbers say nothing about BIRD: the questions are simple, templated and synthetic. ``stmkit.tasks.bird`` turns
the records into items (``bird.build_standin``) and builds the copy in the cache once (``bird.ensure_standin``).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    """Read-only connection for the kit's own queries (never for model-written SQL, which runs in the sandbox)."""
    return sqlite3.connect(Path(db_path).absolute().as_uri() + "?mode=ro", uri=True)


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


def write_standin(root: Path, n_items: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Generate the stand-in under root (standin_databases/<db>/<db>.sqlite and standin.json, BIRD's dev format):
    same seed -> byte-identical databases and questions. Returns the question records."""
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
    conns = {db_id: connect_read_only(db_root / db_id / f"{db_id}.sqlite") for db_id in _DATABASES}
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
    return records
