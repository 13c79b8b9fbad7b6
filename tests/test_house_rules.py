"""House rules of the code base that a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import stmkit

PACKAGE = Path(stmkit.__file__).parent


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_no_function_takes_more_than_eight_positional_parameters():
    too_many = []
    for path, fn in _functions():
        positional = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        if len(positional) > 8:
            too_many.append(f"{path}:{fn.lineno} {fn.name} ({len(positional)})")
    assert not too_many, "make the trailing parameters keyword-only (*, ...): " + ", ".join(too_many)


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these by concern: {long}"


def test_the_readme_structure_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    structure = readme[readme.index("## Project structure"):readme.index("## Results")]
    # metrics/ holds evaluate's metric scripts, loaded by path (one line for the folder)
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
               and "metrics" not in p.relative_to(PACKAGE).parts[:-1]]
    unnamed = sorted(str(p.relative_to(PACKAGE.parent)) for p in modules if p.name not in structure)
    assert not unnamed, f"add a line for each to README's project structure: {unnamed}"
