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
    assert len(tokens) == 3 and {"token", "ppl", "masked", "entropy", "topk_entropy"} <= set(tokens[0]["tokens"][0])


def test_mask_command_masks_confident_conflicts_by_entropy(tmp_path, capsys, tiny):
    data = _write(tmp_path, ROWS)
    assert main(["mask", "--model", "tiny-llama", "--data", str(data), "--rule", "conflict", "--tau", "1.5",
                 "--conflict-entropy", "0.9", "--out", str(tmp_path / "o")]) == 0
    assert "top-20 entropy / log 20 < 0.9" in capsys.readouterr().out
    tokens = [t for row in (tmp_path / "o" / "tokens.jsonl").read_text().splitlines()
              for t in json.loads(row)["tokens"]]
    assert all(t["masked"] == (t["ppl"] > 1.5 and t["topk_entropy"] < 0.9) for t in tokens)
    assert 0 < sum(t["masked"] for t in tokens) < sum(t["ppl"] > 1.5 for t in tokens)  # a real subset of STM's


def test_mask_command_reports_bad_input_without_traceback(tmp_path, capsys):
    data = _write(tmp_path, [{"prompt": "x"}])
    assert main(["mask", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "line 1 of data.jsonl: missing field 'completion'" in capsys.readouterr().err


def test_text_parts_content_is_read_as_its_text(tmp_path):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]
    rows = [{"messages": [{"role": "user", "content": parts},
                          {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]},
            {"prompt": [{"role": "user", "content": parts}], "completion": "Red."}]
    out = read_jsonl(_write(tmp_path, rows))
    assert out[0]["prompt"] == [{"role": "user", "content": "Name a colour."}] and out[0]["response"] == "Blue."
    assert out[1]["prompt"][0]["content"] == "Name a colour."


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
         r"line 2 of data.jsonl: 'messages\[0\].content' must be a string or a list of .*text.* parts; got null"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"}]},
                       {"role": "assistant", "content": "a"}]},
         r"line 2 of data.jsonl: 'messages\[0\].content\[0\]' is \{\"type\": \"image\".*only .*text.* parts"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
         r"line 2 of data.jsonl: 'messages\[1\].content' must be a string"),
        ({"prompt": [{"role": "user", "content": 5}], "completion": "a"},
         r"line 2 of data.jsonl: 'prompt\[0\].content' must be a string .*got int"),
    ],
)
def test_message_content_that_is_not_text_names_the_line_and_field(tmp_path, bad, match):
    with pytest.raises(DataFormatError, match=match):
        read_jsonl(_write(tmp_path, [ROWS[0], bad]))


def test_a_non_utf8_byte_names_the_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataFormatError, match=r"line 2 of data.jsonl is not UTF-8 .*0xe9.*save the file as UTF-8"):
        read_jsonl(path)


@pytest.fixture
def no_model(monkeypatch):
    """`stmkit mask` must refuse bad input before it loads any model."""
    import stmkit.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(stmkit.models, "load_model", refuse)


def test_mask_refuses_a_non_string_user_content_before_loading_the_model(tmp_path, capsys, no_model):
    data = _write(tmp_path, [{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}])
    assert main(["mask", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stmkit: error: line 1 of data.jsonl: 'messages[0].content'") and err.count("\n") == 1


def test_mask_refuses_an_existing_file_as_out_before_any_work(tmp_path, capsys, no_model):
    data, out = _write(tmp_path, ROWS), tmp_path / "out.txt"
    out.write_text("keep me")
    assert main(["mask", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stmkit: error: --out {out} is an existing file") and err.count("\n") == 1
    assert out.read_text() == "keep me"


def test_mask_names_an_unwritable_out_or_cache(tmp_path, capsys, monkeypatch, no_model):
    data, blocker = _write(tmp_path, ROWS), tmp_path / "a-file"
    blocker.write_text("")
    assert main(["mask", "--data", str(data), "--out", str(blocker / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"stmkit: error: --out {blocker / 'o'} is not a writable folder")
    monkeypatch.setenv("STMKIT_CACHE", str(blocker / "cache"))
    assert main(["mask", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stmkit: error: STMKIT_CACHE={blocker / 'cache'} is not a writable folder")
    assert "set STMKIT_CACHE" in err


def test_python_dash_m_stmkit_is_the_stmkit_command():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "stmkit", "models"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "smollm2-135m-instruct" in res.stdout
