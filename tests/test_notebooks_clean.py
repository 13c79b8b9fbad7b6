"""Source notebooks are committed with outputs stripped."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_source_notebooks_have_no_outputs():
    dirty = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell.get("outputs") or cell.get("execution_count"):
                dirty.append(path.name)
                break
    assert not dirty, f"strip outputs with `make strip`: {dirty}"
