"""One report section per paper output: the Section type, the registrar its generator is filed with, and the text of
an output this profile did not make (with what it needs) or that the kit cannot make."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalogue import BY_ID, NEEDS, TITLES
from ..paper import paper_table
from ..tables import to_markdown
from .runs import Context


@dataclass
class Section:
    """One paper table or figure in the report."""

    id: str  # table01 ... fig14
    title: str
    status: str = "missing"  # "made" | "missing" | "unavailable"
    body: str = ""  # Markdown
    files: list[str] = field(default_factory=list)
    claim: str = ""


Generator = Callable[[Context], Section]


def registrar(table: dict[str, Generator]) -> Callable[[str], Callable[[Generator], Generator]]:
    """A decorator `@generator(ident)` that files a section's generator in `table` under its output's id."""

    def generator(ident: str) -> Callable[[Generator], Generator]:
        def wrap(fn: Generator) -> Generator:
            table[ident] = fn
            return fn

        return wrap

    return generator


def rel(ctx: Context, files: list[Any]) -> list[str]:
    return [str(Path(f).relative_to(ctx.root)) for f in files]


def for_paper_model(ctx: Context, ident: str, model: str, target: str | None, own: str,
                    make: Callable[[Context], Section]) -> Section:
    """An output the paper makes for one of its models: built from that model's runs, else 'missing' with a
    pointer to the output that holds this profile's own version."""
    sub = ctx.scope(model, target)
    if not sub.runs:
        return missing(ident, TITLES[ident], f"{NEEDS[ident]}; this profile's own version is {own}")
    return make(sub)


def missing(ident: str, title: str, needs: str) -> Section:
    return Section(ident, title, "missing", f"Not produced by this profile: needs {needs}.")


def unavailable(ident: str) -> Section:
    return Section(ident, TITLES[ident], "unavailable", f"Not available in this kit: {BY_ID[ident].unavailable}.")


def paper_md(n: int, columns: list[str] | None = None, query: str | None = None) -> str:
    df = paper_table(n)
    if query:
        df = df.query(query)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    return f"*Paper (Table {n}, as printed):*\n\n" + to_markdown(df.reset_index(drop=True))
