"""Every paper table and figure, built from the runs a profile recorded, and REPORT.md beside the paper's numbers.

Each generator reads run.json records (never retrains) and returns a Section: what the kit measured, the paper's
printed numbers next to it (from stmkit/data/paper, labelled as the paper's), the scale of the run, and a plain
sentence on whether the paper's claim holds here. A generator whose inputs the profile did not produce says so.

runs.py picks the runs each output reads, claims.py compares their intervals, the sections_*.py modules make one
Section per output, render.py writes REPORT.md and readme.py the README's generated blocks;
`python -m stmkit.report <profile>` does both.
"""

from .build import build_report, build_sections
from .readme import (
                     CURVE_END,
                     CURVE_START,
                     MAP_END,
                     MAP_START,
                     SIBLINGS_END,
                     SIBLINGS_START,
                     VERDICT_END,
                     VERDICT_START,
                     paper_map,
                     update_readme,
)
from .render import write_report
from .runs import Context
from .section import Section

__all__ = ["CURVE_END", "CURVE_START", "MAP_END", "MAP_START", "SIBLINGS_END", "SIBLINGS_START", "VERDICT_END", "VERDICT_START", "Context",
           "Section", "build_report", "build_sections", "paper_map", "update_readme", "write_report"]
