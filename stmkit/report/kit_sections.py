"""The report's sections beyond the paper's outputs: the verdict at this scale, STM and its siblings, and where
forgetting appears (profile cpu-curve)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .. import forgetting_curve, report_verdict
from ..plots import forgetting_curve as curve_figure
from ..plots import save_figure
from ..tables import save_table, to_markdown
from .runs import Context, in_main_setting, sft_runs


def forgetting_curve_markdown(ctx: Context) -> str:
    """"Where forgetting appears" when an evaluation scored training checkpoints (profile cpu-curve), else ""."""
    evaluate = list(ctx.by_stage("evaluate").values())
    if not forgetting_curve.has_checkpoints(evaluate):  # the usual case: nothing to read
        return ""
    final_steps = {name: info["record"].results.training.get("steps") for name, info in sft_runs(ctx).items()}
    try:
        rows = forgetting_curve.curve_rows(evaluate, {k: v for k, v in final_steps.items() if v})
    except Exception as exc:  # a bug or a moved results folder: say so in its place, never lose the report
        return f"## Where forgetting appears\n\nNot computed: `{type(exc).__name__}: {exc}`."
    table = pd.DataFrame(rows)
    save_table(table, "forgetting_curve", ctx.tables_dir, "Measures over training steps (profile cpu-curve).")
    runs = {name: (report_verdict.arm_of(info) or info["label"], info["learning_rate"])
            for name, info in sft_runs(ctx).items()}
    save_table(pd.DataFrame(forgetting_curve.summary(rows, runs)), "forgetting_curve_summary", ctx.tables_dir,
               "Gold-answer NLL rise over the base on the non-target items, per training step (one seed; 95% "
               "interval over items), and KL drift from the base.")
    fig = curve_figure(rows, "Where forgetting appears (one seed; 95% intervals over items)")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "forgetting_curve", ctx.figures_dir)]
    plt.close(fig)
    lines = ["## Where forgetting appears: measures over training steps", "",
             "Each training run's checkpoints evaluated like final models (one seed; intervals over items, so they "
             "understate run-to-run variation). Gold-answer NLL rise over the base is loss of ability; KL drift is "
             "distance from the base.", ""]
    lines += [f"- {line}" for line in forgetting_curve.describe(rows, "gold_nll")]
    lines += ["", f"![forgetting curve]({files[0]})", "", to_markdown(table.round(4)), ""]
    return "\n".join(lines)


def verdict_markdown(ctx: Context, model: str) -> str:
    """"Verdict at this scale" (stmkit.report_verdict); a failure is reported in its place, never hides the rest."""
    try:
        evaluate = list(ctx.by_stage("evaluate").values())
        score = next(iter(ctx.by_stage("score").values()), None)
        generate = next(iter(ctx.by_stage("generate").values()), None)
        data = report_verdict.collect(sft_runs(ctx), evaluate, score, lambda info: in_main_setting(ctx, info), generate)
        text = report_verdict.section(data, ctx.tables_dir, model)
    except Exception as exc:  # a bug to report, not a reason to lose the report
        return f"## Verdict at this scale\n\nThe verdict could not be computed: `{type(exc).__name__}: {exc}`."
    try:
        mask_runs = ctx.by_stage("mask")
        mask_run = next(iter(sorted(mask_runs)), None)
        plane = ctx.gather_figure(mask_run, "probability_entropy_plane") if mask_run else []
        cats = ctx.gather_figure(mask_run, "categories_confident_conflicts") if mask_run else []
        quadrants = mask_runs[mask_run].results.entropy_quadrants or None if mask_run else None
        siblings = report_verdict.siblings_section(data, ctx.tables_dir, ctx.figures_dir,
                                                   plane[0] if plane else None, quadrants,
                                                   cats[0] if cats else None)
    except Exception as exc:
        siblings = f"## Beyond the paper: STM and its siblings\n\nNot computed: `{type(exc).__name__}: {exc}`."
    return text + ("\n\n" + siblings if siblings else "")
