"""REPORT.md and REPORT.html: the scale, the verdict, one summary row per output, wall times, then every section."""

from __future__ import annotations

from pathlib import Path

import mistune

from ..cache import atomic_write_text
from ..sweeps import wall_times
from .kit_sections import forgetting_curve_markdown, verdict_markdown
from .runs import Context, paper_scale
from .section import Section


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (||ΔW|| and KL(p||q) would split the row)."""
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(ctx: Context, sections: list[Section]) -> tuple[Path, Path]:
    """results/<profile>/REPORT.md and REPORT.html."""
    made = [s for s in sections if s.status == "made"]
    runs = ctx.runs
    models = sorted({r.model.get("name", "?") for r in runs.values()})
    stand_ins = sorted({f"{m['name']} for {m['stands_in_for']}" for r in runs.values()
                        if (m := r.model).get("stands_in_for")})
    scale = ("These are small-scale results, not comparable in absolute terms with the paper's 2B-9B models. "
             if not paper_scale(ctx) else "")
    if stand_ins:
        scale = (f"**A rehearsal: every model is an architecture-faithful stand-in ({'; '.join(stand_ins)}), filed "
                 "under the paper model it stands in for. Its numbers mean nothing; it shows that the paper path "
                 "runs and what it renders.** ")
    lines = [
        f"# stmkit report: profile `{ctx.profile}`",
        "",
        "Everything below was computed by the kit's own runs (`runs/*/run.json`); numbers labelled *Paper* are "
        "the paper's printed values (arXiv 2501.14315), shipped in `stmkit/data/paper/`.",
        "",
        f"**Scale.** Model(s): {', '.join(models) or 'none'}. " + scale,
        "",
    ]
    lines += [verdict_markdown(ctx, ", ".join(models) or "no model"), ""]
    curve = forgetting_curve_markdown(ctx)
    if curve:
        lines += [curve, ""]
    lines += [
        f"{len(made)} of {len(sections)} paper tables and figures made; the rest say what they need.",
        "",
        "| output | status | claim at this scale |",
        "|---|---|---|",
    ]
    lines += [f"| [{s.id}](#{s.id}) | {s.status} | {cell(s.claim or s.body.split(chr(10))[0])} |" for s in sections]
    wall, computed = wall_times(ctx.root)  # as the pipeline measured them (kernel start included)
    if runs:
        lines += ["", "## Wall time per run", "",
                  "Notebook wall time as `make reproduce` measured it: at the last execution that computed the run's "
                  "artifacts (made new cache entries), and at its last execution (a rerun reads the cache back).", "",
                  "| run | stage | computing (s) | last execution (s) | inside the notebook, last (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {r.stage} | {computed.get(n, '-')} | {wall.get(n, '-')} | "
                  f"{r.timings_s.get('total', '-')} |" for n, r in runs.items()]
        total = sum(float(v) for n, v in wall.items() if n in runs)
        cold = sum(float(computed.get(n, wall.get(n, 0.0))) for n in runs)
        if total:
            lines += ["", f"Total notebook wall time when computed (a run that never made artifacts counts at its last "
                      f"execution): {cold:.0f} s ({cold / 60:.1f} min); of the last executions: {total:.0f} s "
                      f"({total / 60:.1f} min)."]
    for s in sections:
        lines += ["", f'<a id="{s.id}"></a>', f"## {s.title}", "", f"Status: **{s.status}**.", ""]
        if s.claim:
            lines += [f"**Claim at this scale:** {s.claim}", ""]
        if s.body:
            lines += [s.body, ""]
        for f in s.files:
            if f.endswith(".png"):
                lines += [f"![{s.id}]({f})", ""]
            elif f.endswith(".csv"):
                lines += [f"Data: `{f}`", ""]
    md = "\n".join(lines) + "\n"
    md_path, html_path = ctx.root / "REPORT.md", ctx.root / "REPORT.html"
    atomic_write_text(md_path, md)
    html = mistune.html(md)
    atomic_write_text(
        html_path,
        "<!doctype html><meta charset='utf-8'><title>stmkit report</title>"
        "<style>body{font-family:sans-serif;max-width:980px;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style>\n" + html,
    )
    return md_path, html_path
