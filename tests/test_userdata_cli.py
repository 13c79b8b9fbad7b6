"""Bring-your-own-data: JSONL formats, errors that name the line and field, and the `stmkit mask` command."""

from __future__ import annotations

import json

import pytest

from stmkit.cli import main
from stmkit.userdata import DataFormatError, read_jsonl

ROWS = [
    {"prompt": "What is 2+2?", "completion": "2+2 equals 4."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."}]},
    {"id": "conv", "prompt": [{"role": "user", "content": "Say hi"}],
     "completion": [{"role": "assistant", "content": "Hi there!"}]},
]


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_three_formats_are_read(tmp_path):
    out = read_jsonl(_write(tmp_path, ROWS))
    assert [e["id"] for e in out] == ["1", "2", "conv"]
    assert out[1]["prompt"][0]["role"] == "system" and out[1]["response"] == "Blue."
    assert out[2]["response"] == "Hi there!"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"prompt": "x"}, "line 2 of data.jsonl: missing field 'completion'"),
        ({"text": "x"}, "line 2 of data.jsonl: missing field 'prompt' and 'completion'"),
        ("{not json", "line 2 of data.jsonl is not valid JSON"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "role 'assistant'"),
        ({"prompt": "x", "completion": "  "}, "response is empty"),
    ],
)
def test_malformed_rows_name_the_line_and_field(tmp_path, bad, match):
    with pytest.raises(DataFormatError, match=match):
        read_jsonl(_write(tmp_path, [ROWS[0], bad]))


def test_mask_command_writes_a_trl_dataset_and_stats(tmp_path, capsys, tiny):
    data = _write(tmp_path, ROWS)
    rc = main(["mask", "--model", "tiny-llama", "--data", str(data), "--tau", "2.5", "--out", str(tmp_path / "o")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "response tokens" in printed and "%" in printed
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["examples_in"] == 3 and stats["examples_out"] + stats["examples_dropped"] == 3
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "o" / "dataset"))
    assert set(ds.column_names) >= {"input_ids", "labels"} and len(ds) == 3
    assert all(any(x != -100 for x in lab) for lab in ds["labels"])  # nothing TRL would silently drop
    tokens = [json.loads(x) for x in (tmp_path / "o" / "tokens.jsonl").read_text().splitlines()]
    assert len(tokens) == 3 and {"token", "ppl", "masked"} <= set(tokens[0]["tokens"][0])


def test_mask_command_reports_bad_input_without_traceback(tmp_path, capsys):
    data = _write(tmp_path, [{"prompt": "x"}])
    assert main(["mask", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "line 1 of data.jsonl: missing field 'completion'" in capsys.readouterr().err
