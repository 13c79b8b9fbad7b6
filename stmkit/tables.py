"""Tables: tidy CSV + Markdown, named after the paper's tables, written atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cache import atomic_write_text


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, tables_dir: Path, caption: str = "") -> list[Path]:
    """Write tables_dir/name.csv and name.md (with the caption above the table)."""
    tables_dir = Path(tables_dir)
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()  # a labelled index (method, task ...) is a column of the table, not to be lost
    csv_path, md_path = tables_dir / f"{name}.csv", tables_dir / f"{name}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, (f"{caption}\n\n" if caption else "") + to_markdown(df))
    return [csv_path, md_path]
