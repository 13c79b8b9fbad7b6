"""BIRD loader (offline fixture in the official layout), the deterministic stand-in, SQL extraction and scoring."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from stmkit.tasks import bird, load, prompts
from stmkit.tasks.base import Example


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> tuple[Path, list[Example]]:
    root = tmp_path_factory.mktemp("standin")
    return root, bird.build_standin(root, n_items=200, seed=0)


def _portable(items: list[Example], root: Path) -> list[dict]:
    """Items with db_path made relative to the build root (the only field that names the root)."""
    out = []
    for e in items:
        d = e.to_dict()
        d["meta"] = dict(d["meta"], db_path=str(Path(d["meta"]["db_path"]).relative_to(root)))
        out.append(d)
    return out


def _db_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.sqlite"))
    }


# --- the stand-in ---------------------------------------------------------------------------------------------


def test_standin_is_deterministic(standin, tmp_path):
    root_a, items_a = standin
    root_b = tmp_path / "elsewhere"
    items_b = bird.build_standin(root_b, n_items=200, seed=0)
    assert _portable(items_a, root_a) == _portable(items_b, root_b)
    digests = _db_digests(root_a)
    assert len(digests) == 3 and digests == _db_digests(root_b)
    assert (root_a / "standin.json").read_bytes() == (root_b / "standin.json").read_bytes()
    other = bird.build_standin(tmp_path / "seed1", n_items=200, seed=1)
    assert [e.answer for e in other] != [e.answer for e in items_a]


def test_standin_items_are_labelled_and_well_formed(standin):
    _, items = standin
    assert len(items) == 200
    assert [e.id for e in items[:3]] == ["standin-0000", "standin-0001", "standin-0002"]
    assert len({e.id for e in items}) == 200
    assert len({e.meta["question"] for e in items}) == 200
    assert {e.meta["db_id"] for e in items} == {"school", "shop", "library"}
    assert len({e.meta["template"] for e in items}) >= 5
    for e in items:
        assert e.task == "bird" and e.meta["standin"] is True
        assert "CREATE TABLE" in e.prompt and e.meta["question"] in e.prompt and "```sql" in e.prompt
        if e.meta["evidence"]:
            assert f"-- External Knowledge: {e.meta['evidence']}" in e.prompt
        assert e.response == f"```sql\n{e.answer}\n```"
        assert Path(e.meta["db_path"]).is_file()
    assert "NOT BIRD" in bird.__doc__


def test_every_gold_sql_executes_and_is_not_empty(standin):
    _, items = standin
    for e in items:
        conn = sqlite3.connect(Path(e.meta["db_path"]).as_uri() + "?mode=ro", uri=True)
        try:
            rows = conn.execute(e.answer).fetchall()
        finally:
            conn.close()
        assert rows and rows != [(None,)], e.id


# --- scoring --------------------------------------------------------------------------------------------------


def test_correct_answer_scores_true(standin):
    _, items = standin
    e = items[0]
    answer = f"Sure! Here is the query:\n```sql\n{e.answer};\n```\nIt counts the rows."
    out = bird.score(e, answer, timeout_s=5)
    assert out == {"extracted": e.answer + ";", "correct": True, "error": ""}


def test_equivalent_query_in_another_order_scores_true(standin):
    _, items = standin
    e = next(x for x in items if x.meta["template"] == "group_by")
    reordered = e.answer + " ORDER BY 2 DESC"
    assert bird.score(e, f"```sql\n{reordered}\n```", timeout_s=5)["correct"] is True


def test_wrong_answer_scores_false(standin):
    _, items = standin
    e = next(x for x in items if x.meta["template"] == "count_filter")
    out = bird.score(e, "```sql\nSELECT -12345\n```", timeout_s=5)
    assert out["correct"] is False and out["error"] == "result differs from the gold result"
    broken = bird.score(e, "```sql\nSELECT nope FROM nowhere\n```", timeout_s=5)
    assert broken["correct"] is False and broken["error"].startswith("error:")
    empty = bird.score(e, "I don't know.", timeout_s=5)
    assert empty == {"extracted": "", "correct": False, "error": "no SQL found in the answer"}


def test_write_statement_scores_false_and_leaves_db_unchanged(standin):
    _, items = standin
    e = items[1]
    db = Path(e.meta["db_path"])
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for sql in ("DROP TABLE students", "DELETE FROM orders", "INSERT INTO books (title) VALUES ('x')"):
        out = bird.score(e, f"```sql\n{sql}\n```", timeout_s=5)
        assert out["correct"] is False and out["error"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_score_needs_a_database():
    e = Example(id="x", task="bird", prompt="p", answer="SELECT 1")
    with pytest.raises(ValueError, match="db_path"):
        bird.score(e, "SELECT 1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```sql\nSELECT 1\n```\nthen\n```sql\nSELECT 2\n```", "SELECT 2"),
        ("```SQL\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("```\nSELECT 3\n```", "SELECT 3"),
        ("```sql\nSELECT 1\n```\n```python\nprint(1)\n```", "SELECT 1"),
        ("The answer is:\nSELECT x\nFROM t\n\nThis selects x.", "SELECT x\nFROM t"),
        ("with c as (select 1) select * from c", "with c as (select 1) select * from c"),
        ("```sql\nSELECT unfinished FROM t", "SELECT unfinished FROM t"),
        ("With the hint, the query is:\nSELECT 1", "SELECT 1"),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1) SELECT x FROM c",
            "WITH RECURSIVE c(x) AS (SELECT 1) SELECT x FROM c",
        ),
        ("no query here", ""),
    ],
)
def test_extract_sql(text, expected):
    assert bird.extract_sql(text) == expected


# --- the real dev set's layout, as a tiny offline fixture -----------------------------------------------------


def _write_bird_fixture(root: Path) -> Path:
    dev = root / "dev_20240627"
    db_dir = dev / "dev_databases" / "toy_db"
    db_dir.mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "toy_db.sqlite")
    with conn:
        conn.execute("CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT, species TEXT, age INTEGER)")
        conn.executemany(
            "INSERT INTO pets VALUES (?, ?, ?, ?)",
            [(1, "Rex", "dog", 3), (2, "Tom", "cat", 5), (3, "Kit", "cat", 1)],
        )
    conn.close()
    records = [
        {
            "question_id": 0,
            "db_id": "toy_db",
            "question": "How many cats are there?",
            "evidence": "cats refers to species = 'cat'",
            "SQL": "SELECT COUNT(*) FROM pets WHERE species = 'cat'",
            "difficulty": "simple",
        },
        {
            "question_id": 1,
            "db_id": "toy_db",
            "question": "Name the oldest pet.",
            "evidence": "",
            "SQL": "SELECT name FROM pets ORDER BY age DESC LIMIT 1",
        },
    ]
    (dev / "dev.json").write_text(json.dumps(records))
    return dev


def test_load_bird_dev_from_official_layout(tmp_path):
    dev = _write_bird_fixture(tmp_path)
    items = bird.load_bird_dev(dev)
    assert [e.id for e in items] == ["0", "1"]
    e = items[0]
    assert e.task == "bird" and e.answer == "SELECT COUNT(*) FROM pets WHERE species = 'cat'"
    assert e.response == f"```sql\n{e.answer}\n```"
    assert e.meta["db_id"] == "toy_db" and e.meta["difficulty"] == "simple"
    assert Path(e.meta["db_path"]) == (dev / "dev_databases" / "toy_db" / "toy_db.sqlite").absolute()
    assert "CREATE TABLE pets" in e.prompt and "How many cats are there?" in e.prompt
    assert "-- External Knowledge: cats refers to species = 'cat'" in e.prompt and "```sql" in e.prompt
    assert "External Knowledge" not in items[1].prompt
    assert "standin" not in e.meta
    assert bird.score(e, "```sql\nSELECT count(id) FROM pets WHERE species = 'cat'\n```", timeout_s=5)[
        "correct"
    ]
    assert bird.load_bird_dev(dev / "dev.json", limit=1) == items[:1]


def test_reference_prompt_style_is_the_papers_code(tmp_path):
    dev = _write_bird_fixture(tmp_path)
    e = bird.load_bird_dev(dev, prompt_style="reference")[0]
    schema = bird.schema_prompt(dev / "dev_databases" / "toy_db" / "toy_db.sqlite")
    assert e.prompt == prompts.BIRD_PROMPT.format(schema=schema, question="How many cats are there?")
    with pytest.raises(ValueError, match="prompt style"):
        bird.load_bird_dev(dev, prompt_style="fancy")


def test_schema_prompt_with_example_rows(tmp_path):
    dev = _write_bird_fixture(tmp_path)
    text = bird.schema_prompt(dev / "dev_databases" / "toy_db" / "toy_db.sqlite", example_rows=2)
    assert "2 example rows" in text and "Rex" in text and "Kit" not in text


def test_missing_bird_directory_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        bird.load_bird_dev(tmp_path / "no_such_dir")
    msg = str(err.value)
    assert "no_such_dir" in msg and bird.BIRD_URL in msg and "load_bird_dev(" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dev.json"):
        bird.load_bird_dev(tmp_path / "empty")


def test_tasks_load_reads_the_dev_folder_it_is_given(tmp_path):
    # stmkit.tasks.load passes data_dir to BIRD's loader; a task that ships its items ignores it.
    folder = bird.ensure_dev_fixture()
    items = load("bird", "test", 2, "hf", data_dir=str(folder))
    assert [e.id for e in items] == [e.id for e in bird.load_items("test", 2, folder)]
    assert Path(items[0].meta["db_path"]).parent.parent == folder / "dev_databases"
    with pytest.raises(ValueError, match="BIRD is not on the Hugging Face hub"):
        load("bird", "test", 2, "hf")
    assert load("gsm8k", "test", 2, data_dir=str(tmp_path)) == load("gsm8k", "test", 2)


def test_zipped_databases_and_bad_records_are_explained(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "dev.json").write_text("[]")
    (dev / "dev_databases.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="unzip"):
        bird.load_bird_dev(dev)
    (dev / "dev_databases").mkdir()
    (dev / "dev.json").write_text(json.dumps([{"db_id": "x", "question": "q"}]))
    with pytest.raises(ValueError, match="item 0 .* no 'SQL'"):
        bird.load_bird_dev(dev)
    (dev / "dev.json").write_text(json.dumps([{"db_id": "x", "question": "q", "SQL": "SELECT 1"}]))
    with pytest.raises(FileNotFoundError, match="x.sqlite"):
        bird.load_bird_dev(dev)


def test_examples_round_trip(standin):
    _, items = standin
    assert [Example.from_dict(e.to_dict()) for e in items[:5]] == items[:5]
    assert dataclasses.replace(items[0]) == items[0]
