"""The main comparisons: Tables 2-5, 7, 12, 15 and 16 and Figures 4, 7, 13 and 14, from the sft and evaluate runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..catalogue import NEEDS, TITLES
from ..plots import convergence, effective_rank_bars, save_figure, singular_value_curves
from ..tables import save_table, to_markdown
from .claims import compare, interval, stm_vs_gt_claim
from .runs import (
    GEMMA2B,
    LLAMA,
    Context,
    checkpoint_curves,
    evaluations,
    in_main_setting,
    is_plain,
    main_scope,
    main_setting,
    runs_by_method,
    sft_runs,
    target_of,
    transfer_rows,
    unfinished,
)
from .section import Generator, Section, for_paper_model, missing, paper_md, registrar, rel

GENERATORS: dict[str, Generator] = {}
generator = registrar(GENERATORS)


@generator("table02")
def table02(ctx: Context) -> Section:
    title = TITLES["table02"]
    sft = sft_runs(ctx)
    df = transfer_rows(ctx, [n for n, i in sft.items() if i["method"] in ("gt", "stm", "self_output", "rephrase")
                             and in_main_setting(ctx, i)])
    if df.empty:
        return missing("table02", title, NEEDS["table02"])
    df["end_of_turn_masked_%"] = [100 * sft[r]["record"].results.masking.get(
        "end_of_turn_masked_share", float("nan")) for r in df["run"]]
    df["target_answers_unfinished"] = [unfinished(ctx, r) for r in df["run"]]
    _, _, _, rec = evaluations(ctx)
    files = save_table(df, "table02_main", ctx.tables_dir,
                       f"Table 2 (kit, {ctx.scale(rec)}; {rec.results.n_items if rec else None} items per task). TI/BWT in %, "
                       "95% paired-bootstrap CIs over items; BWT averages the non-target tasks with a non-zero "
                       "original accuracy; drift = mean per-token KL(p_base || p_tuned) on the base's own answers.")
    body = (f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n"
            + paper_md(2, ["model", "target_task", "method", "metric", "value"], "metric != 'data_cost'"))
    claim = stm_vs_gt_claim(ctx)
    stm = df[df["run"].isin(runs_by_method(ctx, "stm")[:1])]
    if not stm.empty and stm["end_of_turn_masked_%"].iloc[0] > 50:
        claim += (f" Note: STM masked the end-of-turn token in {stm['end_of_turn_masked_%'].iloc[0]:.0f}% of the "
                  "training answers (the model finds the end of a bare ground-truth answer surprising), so it trains "
                  f"little on where to stop; its target answers left unfinished: {stm['target_answers_unfinished'].iloc[0]}"
                  " (see the column for the others).")
    return Section("table02", title, "made", body, rel(ctx, files), claim)


def _ablation(ctx: Context, ident: str, paper_n: int, paper_cols: list[str]) -> Section:
    """Tables 3 and 15: masking high vs random vs low-PPL tokens, and the tau sweep, as TI/BWT rows."""
    title = TITLES[ident]
    sft = sft_runs(ctx)
    names = [n for n, i in sft.items() if i["method"] in ("stm", "random", "low", "gt", "quantile")]
    df = transfer_rows(ctx, names)
    if df.empty or not {"random", "low"} & {sft[n]["method"] for n in df["run"]}:
        return missing(ident, title, NEEDS[ident])
    df.insert(2, "tau", [sft[n]["tau"] if sft[n]["method"] in ("stm", "low", "random") else None for n in df["run"]])
    _, transfer, _, rec = evaluations(ctx)
    files = save_table(df, f"{ident}_masking_ablation", ctx.tables_dir, f"Table {paper_n} (kit, {ctx.scale(rec)}).")
    stm = next((n for n in runs_by_method(ctx, "stm") if n in transfer and sft[n]["tau"] == 2.5), None)
    parts = []
    for other in ("random", "low"):
        o = next((n for n in runs_by_method(ctx, other) if n in transfer), None)
        if stm and o:
            verdict = compare(interval(transfer[stm], "bwt"), interval(transfer[o], "bwt"))
            parts.append(f"masking high-PPL tokens forgets less than masking {other} ones (BWT): {verdict}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(paper_n, paper_cols)
    return Section(ident, title, "made", body, rel(ctx, files), "; ".join(parts) or "not measured")


@generator("table03")
def table03(ctx: Context) -> Section:
    return _ablation(main_scope(ctx, GEMMA2B, "mbpp"), "table03", 3,
                     ["config_as_printed", "pct_masked", "metric", "value_pct"])


@generator("table15")
def table15(ctx: Context) -> Section:
    return for_paper_model(ctx, "table15", LLAMA, None, "Table 3", lambda sub: _ablation(
        sub, "table15", 15, ["config_as_printed", "target_task_inferred", "pct_masked", "metric", "value_pct"]))


@generator("table07")
def table07(ctx: Context) -> Section:
    title = TITLES["table07"]
    sft = sft_runs(ctx)
    if not sft:
        return missing("table07", title, NEEDS["table07"])
    df = pd.DataFrame([{"run": n, "training data / method": i["label"], "finetune": i["finetune"],
                        "delta_w": i["delta_w"], "trained_tokens": i["trained_tokens"]} for n, i in sft.items()])
    rec = next(iter(sft.values()))["record"]
    definition = rec.results.delta_w_definition
    files = save_table(df, "table07_weight_norm", ctx.tables_dir, f"Table 7 (kit, {ctx.scale(rec)}). {definition}")
    gt = df.set_index("run").loc[runs_by_method(ctx, "gt"), "delta_w"] if runs_by_method(ctx, "gt") else df[:0]
    stm = df.set_index("run").loc[runs_by_method(ctx, "stm"), "delta_w"] if runs_by_method(ctx, "stm") else df[:0]
    claim = ("STM's update is smaller than ground truth's (||ΔW||): "
             + ("not measured" if gt.empty or stm.empty else
                f"{'yes' if stm.iloc[0] < gt.iloc[0] else 'no'} ({stm.iloc[0]:.3f} vs {gt.iloc[0]:.3f}; one seed)"))
    body = (f"*Kit ({ctx.scale(rec)}):* {definition}\n\n" + to_markdown(df) + "\n"
            + paper_md(7, ["model", "training_data", "metric", "value"]))
    return Section("table07", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)


@generator("table12")
def table12(ctx: Context) -> Section:
    title = TITLES["table12"]
    acc, _, _, rec = evaluations(ctx)
    if not acc:
        return missing("table12", title, NEEDS["table12"])
    sft = sft_runs(ctx)
    rows = []
    for label, tasks in acc.items():
        row: dict[str, Any] = {"method": sft.get(label, {}).get("label", label), "run": label}
        for spec, sm in tasks.items():
            row[spec] = f"{sm['accuracy']:.3f} [{sm['ci_low']:.3f}, {sm['ci_high']:.3f}]"
        rows.append(row)
    df = pd.DataFrame(rows)
    files = save_table(df, "table12_raw_accuracy", ctx.tables_dir,
                       f"Table 12 (kit, {ctx.scale(rec)}): accuracy [95% bootstrap CI over items].")
    body = (f"*Kit ({ctx.scale(rec)}; {rec.results.n_items if rec else None} items per task):*\n\n" + to_markdown(df)
            + "\n" + paper_md(12, ["model", "target_task", "method", "eval_task", "accuracy"],
                              "model == 'Llama 3 8B Instruct'"))
    return Section("table12", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files],
                   "Raw accuracies; see Table 2 for the claims.")


def _convergence(ctx: Context, ident: str) -> Section:
    """Figures 4 and 7: per-epoch target accuracy (checkpoint evaluations), validation and training loss."""
    title = TITLES[ident]
    sft = {n: i for n, i in sft_runs(ctx).items() if i["method"] in ("gt", "stm", "self_output") and in_main_setting(ctx, i)}
    if not sft:
        return missing(ident, title, NEEDS[ident])
    curves = {i["label"]: (pd.DataFrame(i["record"].results.train_losses),
                           pd.DataFrame(i["record"].results.eval_losses)) for i in sft.values()}
    ckpt = checkpoint_curves(ctx)
    target = target_of(next(iter(sft.values()))["record"])
    accuracy = {}
    for name, i in sft.items():
        rows = [c for c in ckpt.get(name, []) if c["task"].split(":")[0] == target]
        if rows:
            accuracy[i["label"]] = pd.DataFrame(rows)
    fig = convergence(curves, accuracy, f"Convergence on {target}")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, f"{ident}_convergence", ctx.figures_dir)]
    if accuracy:
        data = pd.concat([a.assign(method=lab) for lab, a in accuracy.items()], ignore_index=True)
        files += rel(ctx, save_table(data, f"{ident}_accuracy_per_checkpoint", ctx.tables_dir,
                                     f"Figure {int(ident[3:])}: target accuracy per checkpoint (kit)."))
    final = {lab: (float(c[0]["loss"].iloc[-1]) if not c[0].empty and "loss" in c[0] else None)
             for lab, c in curves.items()}
    gt, stm = final.get("Ground Truth"), final.get("STM")
    claim = ("STM's training loss ends far below ground truth's: "
             + ("not measured" if gt is None or stm is None else
                f"{'yes' if stm < 0.5 * gt else 'no'} (final step loss {stm:.3f} vs {gt:.3f})"))
    if accuracy:
        last = {lab: a.sort_values("epoch").iloc[-1] for lab, a in accuracy.items()}
        claim += ". Final target accuracy: " + ", ".join(
            f"{lab} {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for lab, r in last.items())
    rec = next(iter(sft.values()))["record"]
    how = ("target accuracy per checkpoint from 05_evaluate (checkpoint_tasks)" if accuracy else
           "the accuracy panel is empty: no checkpoint evaluations (set training.save_every_epochs and 05_evaluate's "
           "checkpoint_tasks)")
    return Section(ident, title, "made", f"Kit: {ctx.scale(rec)}. Panels: {how}; validation loss per epoch; "
                   "training loss per step.", files, claim)


@generator("fig04")
def fig04(ctx: Context) -> Section:
    return _convergence(main_scope(ctx, LLAMA, "mbpp"), "fig04")


@generator("fig07")
def fig07(ctx: Context) -> Section:
    return for_paper_model(ctx, "fig07", GEMMA2B, "mbpp", "Figure 4", lambda sub: _convergence(sub, "fig07"))


@generator("fig13")
def fig13(ctx: Context) -> Section:
    title = TITLES["fig13"]
    sft = sft_runs(ctx)
    spectra = {i["label"]: pd.DataFrame(i["record"].results.spectra) for i in sft.values()
               if i["record"].results.spectra}
    if not spectra:
        return missing("fig13", title, NEEDS["fig13"])
    fig = effective_rank_bars(spectra, "q_proj", "Effective rank of the LoRA update per layer (q_proj)")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig13_effective_rank", ctx.figures_dir)]
    means = {k: float(v[v["projection"] == "q_proj"]["effective_rank"].mean()) for k, v in spectra.items()
             if "projection" in v}
    have = {k for k in means if k in ("Self-Output", "Rephrase")}
    claim = ("Mean effective rank per method: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items())
             + ("" if have else "; the paper compares Self-Output and Rephrase with ground truth, which needs "
                "generated-data runs"))
    return Section("fig13", title, "made", f"Kit: {ctx.scale(next(iter(sft.values()))['record'])}.", files, claim)


def _variant_table(ctx: Context, ident: str, key: str, caption: str, paper_cols: list[str]) -> Section:
    """Ground-truth and STM runs (evaluated) grouped by one config field: fine-tuning type or learning rate."""
    title = TITLES[ident]
    sft = sft_runs(ctx)
    lr, finetune = main_setting(ctx)
    plain = [n for n, i in sft.items() if i["method"] in ("gt", "stm") and is_plain(i) and (
        i["finetune"] == finetune if key == "learning_rate" else (i["finetune"] != finetune or i["learning_rate"] == lr))]
    df = transfer_rows(ctx, plain)
    if df.empty:
        return missing(ident, title, NEEDS[ident])
    df.insert(2, key, [sft.get(r, {}).get(key) for r in df["run"]])
    df.insert(3, "delta_w", [sft.get(r, {}).get("delta_w") for r in df["run"]])
    if df[key].nunique() < 2:
        return missing(ident, title, NEEDS[ident])
    df = df.sort_values([key, "method"], key=lambda c: c.astype(str)).reset_index(drop=True)
    _, transfer, drift, rec = evaluations(ctx)
    files = save_table(df, f"{ident}_{key}", ctx.tables_dir, f"{caption} (kit, {ctx.scale(rec)}).")
    verdicts = []
    for value, group in df.groupby(key, sort=False):
        gt = next((r for r in group["run"] if sft[r]["method"] == "gt"), None)
        stm = next((r for r in group["run"] if sft[r]["method"] == "stm"), None)
        if gt and stm:
            bwt = compare(interval(transfer[stm], "bwt"), interval(transfer[gt], "bwt"))
            kl_s, kl_g = (drift.get(r, {}).get("all", {}).get("kl") for r in (stm, gt))
            kl = "" if kl_s is None or kl_g is None else f", drift KL {kl_s:.3f} vs {kl_g:.3f}"
            verdicts.append(f"{key} {value}: STM forgets less (BWT) {bwt}{kl}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(int(ident[5:]), paper_cols)
    return Section(ident, title, "made", body, rel(ctx, files),
                   "; ".join(verdicts) + " (one seed per row)" if verdicts else "no ground-truth/STM pair per setting")


@generator("table04")
def table04(ctx: Context) -> Section:
    return _variant_table(main_scope(ctx, GEMMA2B, "mbpp"), "table04", "finetune",
                          "Table 4: fine-tuning types with and without STM",
                          ["finetuning", "method", "metric", "value_pct"])


@generator("table16")
def table16(ctx: Context) -> Section:
    return for_paper_model(ctx, "table16", LLAMA, "mbpp", "Table 4", lambda sub: _variant_table(
        sub, "table16", "finetune", "Table 16: LoRA and DoRA with and without STM (Llama 3 8B)",
        ["finetuning", "method", "metric", "value_pct"]))


@generator("table05")
def table05(ctx: Context) -> Section:
    return _variant_table(main_scope(ctx, None, "mbpp"), "table05", "learning_rate", "Table 5: learning-rate sweep",
                          ["model", "learning_rate", "method", "metric", "value_pct"])


@generator("fig14")
def fig14(ctx: Context) -> Section:
    title = TITLES["fig14"]
    spectra = {i["label"]: pd.DataFrame(i["record"].results.spectra) for i in sft_runs(ctx).values()
               if i["record"].results.spectra and i["method"] in ("gt", "self_output", "rephrase", "stm")}
    if not spectra:
        return missing("fig14", title, NEEDS["fig14"])
    fig = singular_value_curves(spectra, "q_proj")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig14_singular_values", ctx.figures_dir)]
    return Section("fig14", title, "made", "Singular values of each layer's LoRA update (q_proj).", files,
                   "Illustration of the update spectra; compare with Figure 13's effective ranks.")
