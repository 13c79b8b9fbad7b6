"""Every paper output's section, in the catalogue's order, and the report written from them."""

from __future__ import annotations

from pathlib import Path

from ..catalogue import NEEDS, ORDER, TITLES
from . import sections_data, sections_followups, sections_training
from .render import write_report
from .runs import Context
from .section import Generator, Section, missing

GENERATORS: dict[str, Generator] = {**sections_data.GENERATORS, **sections_training.GENERATORS,
                                    **sections_followups.GENERATORS}


def build_sections(ctx: Context) -> list[Section]:
    """Run every generator; a generator that fails is reported as such, never hides the others."""
    out = []
    for ident in ORDER:
        fn = GENERATORS.get(ident)
        if fn is None:
            out.append(missing(ident, TITLES[ident], NEEDS[ident]))
            continue
        try:
            out.append(fn(ctx))
        except Exception as exc:  # a broken generator is a bug to report, not a reason to lose the report
            out.append(Section(ident, TITLES.get(ident, ident), "missing",
                               f"The generator failed: `{type(exc).__name__}: {exc}`."))
    return out


def build_report(root: Path, profile: str) -> list[Section]:
    """Build every table and figure from the recorded runs and write the report."""
    ctx = Context.load(root, profile)
    sections = build_sections(ctx)
    write_report(ctx, sections)
    return sections
