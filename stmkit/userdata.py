"""Bring your own data: prompt/completion or chat-messages JSONL -> examples the scorer and trainer accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A row of a user's data file is malformed; the message names the file, line and field."""


def _messages_ok(msgs: Any) -> bool:
    return isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)


def _json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


TEXT_PART = '{"type": "text", "text": ...}'


def _text(content: Any, where: str, key: str) -> str:
    """A message's content as a string: a string, or TRL's list of text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DataFormatError(f"{where}: '{key}' must be a string or a list of {TEXT_PART} parts; "
                              f"got {_json_type(content)}")
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            shown = json.dumps(part)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise DataFormatError(f"{where}: '{key}[{i}]' is {shown}; only {TEXT_PART} parts are accepted "
                                  "(stmkit trains text-only models)")
    return "".join(part["text"] for part in content)


def _messages(msgs: list[dict[str, Any]], where: str, key: str) -> list[dict[str, Any]]:
    """Messages with their content as plain strings, which every chat template accepts."""
    return [{**m, "content": _text(m["content"], where, f"{key}[{i}].content")} for i, m in enumerate(msgs)]


def parse_row(row: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    """One JSON object -> {id, prompt (str or list of messages), response}."""
    item_id = str(row.get("id", index))
    if "messages" in row:
        msgs = row["messages"]
        if not _messages_ok(msgs) or len(msgs) < 2:
            raise DataFormatError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects")
        if msgs[-1]["role"] != "assistant":
            raise DataFormatError(f"{where}: the last message must have role 'assistant' (the response to train on)")
        msgs = _messages(msgs, where, "messages")
        prompt, response = msgs[:-1], msgs[-1]["content"]
    elif "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if key not in row:
                raise DataFormatError(f"{where}: missing field '{key}' (rows need prompt and completion, or messages)")
        prompt, completion = row["prompt"], row["completion"]
        if _messages_ok(completion):  # TRL's conversational prompt-completion format
            if len(completion) != 1 or completion[0]["role"] != "assistant":
                raise DataFormatError(f"{where}: 'completion' must be a single assistant message")
            completion = _text(completion[0]["content"], where, "completion[0].content")
        if not isinstance(prompt, str) and not _messages_ok(prompt):
            raise DataFormatError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages")
        if not isinstance(prompt, str):
            prompt = _messages(prompt, where, "prompt")
        if not isinstance(completion, str):
            raise DataFormatError(f"{where}: 'completion' must be a string")
        response = completion
    else:
        raise DataFormatError(f"{where}: missing field 'prompt' and 'completion' (or 'messages'); found "
                              f"{', '.join(sorted(row)) or 'no fields'}")
    if not response.strip():
        raise DataFormatError(f"{where}: the response is empty; there is nothing to train on")
    return {"id": item_id, "prompt": prompt, "response": response}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file as an example; the first malformed row raises, naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    out, ids = [], set()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"line {line_no} of {path.name}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"{where} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                      "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{where} is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataFormatError(f"{where} is not a JSON object")
            ex = parse_row(row, where, line_no)
            if ex["id"] in ids:
                raise DataFormatError(f"{where}: duplicate id {ex['id']!r}")
            ids.add(ex["id"])
            out.append(ex)
    if not out:
        raise DataFormatError(f"{path} has no rows")
    return out
