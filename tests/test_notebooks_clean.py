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


def test_every_parameter_is_visible_to_papermill():
    """papermill silently ignores a parameter whose line it cannot parse (e.g. an '=' inside the comment)."""
    import ast

    import papermill as pm

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        assigned = {t.id for node in ast.parse("".join(cells[0]["source"])).body for t in node.targets}
        assert {"profile", "overrides", "run_name", "results_dir", "run_key"} <= assigned, path.name
        seen = set(pm.inspect_notebook(str(path)))
        assert assigned == seen, f"{path.name}: papermill cannot see {sorted(assigned - seen)}"
