"""README.md's generated blocks, between their markers: the paper map, the verdict and siblings tables (cpu-demo) and
the forgetting curve (cpu-curve)."""

from __future__ import annotations

from pathlib import Path

from ..cache import atomic_write_text
from ..catalogue import ORDER, TITLES
from ..sweeps import load_sweep, resolve_sweep, wall_times
from .build import build_sections
from .render import cell
from .runs import Context

MAP_START, MAP_END = "<!-- paper-map:start -->", "<!-- paper-map:end -->"


def paper_map(root: Path, profile: str = "cpu-demo") -> str:
    """The README's map: each paper table/figure -> notebooks, make target, output file, runtime on the profile."""
    # (profile, sweep): the first that feeds an output is where the map sends the reader.
    feeders = [(p, sw, load_sweep(p, resolve_sweep(sw))) for p, sw in
               (("cpu-demo", None), ("cpu-demo", "cpu-demo-extra"), ("cpu-full", None), ("paper", None))]
    last, computed = wall_times(Path(root))
    wall = {**last, **computed}  # the computing execution where there was one
    sections = {s.id: s for s in build_sections(Context.load(root, profile))}
    lines = ["| paper | notebooks | command | output (results/cpu-demo/...) | cpu-demo wall time |",
             "|---|---|---|---|---|"]
    for ident in ORDER:
        where = next(((p, sw, runs) for p, sw, runs in feeders if any(ident in r.feeds for r in runs)), None)
        runs = [r for r in where[2] if ident in r.feeds] if where else []
        nbs = ", ".join(sorted({f"`{r.notebook}`" for r in runs})) or "—"
        cmd = "—" if where is None else (f"`make reproduce ONLY={ident}`"
                                         + (f" `SWEEP={where[1]}`" if where[1] else "")
                                         + ("" if where[0] == "cpu-demo" else f" `PROFILE={where[0]}`"))
        sec = sections.get(ident)
        if sec and sec.status == "made":
            out = ", ".join(f"`{f}`" for f in sec.files if f.endswith((".png", ".csv"))) or "REPORT.md"
        elif sec and sec.status == "unavailable":
            out, cmd = "not available offline", "—"
        else:
            out = f"needs profile `{where[0]}`" if where and where[0] != profile else "—"
        secs = sum(wall.get(r.name, 0.0) for r in runs) if where and where[0] == profile else None
        t = f"{secs / 60:.1f} min" if secs else "—"
        title = sections[ident].title if ident in sections else TITLES.get(ident, ident)
        if where is None and not (sec and sec.status == "unavailable"):
            out = "not built yet (the report says what it needs)"
        lines.append(f"| {cell(title)} | {nbs} | {cmd} | {out} | {t} |")
    return "\n".join(lines)


VERDICT_START, VERDICT_END = "<!-- verdict:start -->", "<!-- verdict:end -->"
SIBLINGS_START, SIBLINGS_END = "<!-- siblings:start -->", "<!-- siblings:end -->"
CURVE_START, CURVE_END = "<!-- forgetting-curve:start -->", "<!-- forgetting-curve:end -->"
# README's generated tables: (markers, the profile whose report makes it, its table under results/<profile>/tables)
BLOCKS = (((VERDICT_START, VERDICT_END), "cpu-demo", "verdict"), ((SIBLINGS_START, SIBLINGS_END), "cpu-demo", "siblings"),
          ((CURVE_START, CURVE_END), "cpu-curve", "forgetting_curve_summary"))


def _between(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{where} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + body + "\n" + end + tail


def update_readme(readme: Path, root: Path, profile: str = "cpu-demo", paper_map_too: bool = True) -> None:
    """Rewrite the paper map, and the profile's tables (BLOCKS) where README.md has their markers, from the
    recorded runs. paper_map_too=False leaves the map (and its cold wall times) alone: after a warm or partial run."""
    text = readme.read_text()
    if paper_map_too and profile == "cpu-demo":  # the map quotes the default's wall times
        text = _between(text, MAP_START, MAP_END, paper_map(root, profile), readme)
    for (start, end), block_profile, name in BLOCKS:
        table_md = Path(root) / "tables" / f"{name}.md"
        if block_profile == profile and start in text and table_md.is_file():
            text = _between(text, start, end, table_md.read_text().strip(), readme)
    atomic_write_text(readme, text)
