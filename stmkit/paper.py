"""The paper's printed numbers (arXiv 2501.14315), shipped as reference data: one tidy CSV per table."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

# A plain path next to the module (not importlib.resources.files("stmkit")) because stmkit may be a
# namespace package while the lead assembles it; the files are package data either way (pyproject.toml).
PAPER_DATA_DIR = Path(__file__).resolve().parent / "data" / "paper"

_TABLE_FILE = re.compile(r"^table(\d{2})_[a-z0-9_]+\.csv$")

# Short titles from data/paper/README.md ("Figures"); the paper prints no figure data.
PAPER_FIGURES: dict[int, str] = {
    1: "MATH example: ground truth vs Self-Output, tokens with PPL >= 2.5 highlighted (Llama 3 8B)",
    2: "Average training-label PPL vs BWT, coloured by final training loss (Llama 3 8B, MBPP)",
    3: "Per-token PPL along one MATH answer: Ground Truth, Rephrase, Self-Output (Llama 3 8B)",
    4: "Convergence on MBPP over epochs: accuracy, validation and training loss (Llama 3 8B)",
    5: "STM tau sweep on MATH: accuracy on 4 tasks vs % tokens masked (Llama 3 8B)",
    6: "STM tau sweep on MATH: accuracy on 4 tasks vs % tokens masked (Gemma 2 IT 2B)",
    7: "Convergence on MBPP over epochs (Gemma 2 IT 2B)",
    8: "Token categories of all vs high-PPL tokens in MATH GT and Self-Output (Llama 3 8B)",
    9: "Token categories of all vs high-PPL tokens in MATH GT and Self-Output (Mistral 7B)",
    10: "Token categories of all vs high-PPL tokens in MATH GT and Self-Output (Gemma 2 IT 2B)",
    11: "Weight decay / dropout grid: MBPP (target) accuracy, parallel coordinates (Llama 3 8B)",
    12: "Weight decay / dropout grid: MATH (non-target) accuracy, parallel coordinates (Llama 3 8B)",
    13: "Effective rank of the LoRA update per layer 17-32: Self-Output, Rephrase, GT (Llama 3 8B)",
    14: "Singular values of the LoRA update per layer 17-32: Self-Output, Rephrase, GT (Llama 3 8B)",
}


def paper_tables() -> dict[int, str]:
    """Map each table number the kit ships to its file stem, e.g. 2 -> 'table02_main'."""
    tables = {}
    for path in sorted(PAPER_DATA_DIR.glob("table*.csv")):
        match = _TABLE_FILE.match(path.name)
        if match:
            tables[int(match.group(1))] = path.stem
    if not tables:
        raise FileNotFoundError(
            f"no tableNN_*.csv files in {PAPER_DATA_DIR}; the package data is missing "
            "(reinstall stmkit, or copy them from the shared paper folder)"
        )
    return tables


def paper_table(n: int) -> pd.DataFrame:
    """Load paper Table n as a tidy DataFrame (columns as in data/paper/README.md)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"table number must be an int such as 2 or 12, got {n!r}")
    tables = paper_tables()
    if n not in tables:
        raise KeyError(
            f"the paper has no Table {n}; the kit ships Tables {min(tables)}-{max(tables)} "
            f"(see {PAPER_DATA_DIR / 'README.md'})"
        )
    path = PAPER_DATA_DIR / f"{tables[n]}.csv"
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    # "*_as_printed" columns must keep the paper's text ("-8.10", "0.000", "12 Hours"), not a parsed float.
    as_text = {col: str for col in header if col.endswith("_as_printed")}
    return pd.read_csv(path, dtype=as_text, encoding="utf-8")
