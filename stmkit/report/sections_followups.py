"""The follow-up experiments: the regularisation grid (Table 8, Figures 11-12), the tau sweep (Figures 5-6, Table 13),
more models (Table 11), DPF (Tables 14, 18), continual training (Table 19), correctness (Tables 20-21), diversity
(Table 6), Figure 2, IFEval (Table 9), and the output the kit cannot make (Table 10)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..catalogue import NEEDS, TITLES
from ..evaluation import load_records
from ..plots import accuracy_vs_masked, ppl_vs_bwt, regularization_lines, save_figure
from ..tables import save_table, to_markdown
from ..tasks import ifeval
from .claims import compare, interval, stm_vs_gt_claim
from .runs import (
    GEMMA2B,
    GEMMA9B,
    LLAMA,
    OLMO,
    Context,
    accuracy_rows,
    evaluations,
    fmt_ci,
    in_main_setting,
    interval_column,
    is_plain,
    main_scope,
    main_setting,
    model_of,
    paper_scale,
    regularization,
    regularization_accuracy,
    runs_by_method,
    sft_runs,
    target_of,
    tau_points,
    transfer_rows,
)
from .section import Generator, Section, for_paper_model, missing, paper_md, registrar, rel, unavailable

GENERATORS: dict[str, Generator] = {}
generator = registrar(GENERATORS)


@generator("table08")
def table08(ctx: Context) -> Section:
    title = TITLES["table08"]
    found = regularization(ctx)
    if found is None:
        return missing("table08", title, NEEDS["table08"])
    name, rec, df = found
    files = save_table(df, "table08_regularization", ctx.tables_dir,
                       f"Table 8 (kit, {ctx.scale(rec)}). {rec.results.delta_w_definition} TI/BWT in %, "
                       "95% paired-bootstrap CIs; drift KL(base||tuned) in nats/token.")
    stm = df[df["method"] == "STM"]
    others = df[df["method"] != "STM"]
    parts = []
    if not stm.empty and not others.empty:
        s_dw = float(stm["delta_w"].iloc[0])
        parts.append(f"STM changes the weights less than every regularised ground-truth run (||ΔW||): "
                     f"{'yes' if s_dw < float(others['delta_w'].min()) else 'no'} (STM {s_dw:.3f}, regularised "
                     f"{float(others['delta_w'].min()):.3f}-{float(others['delta_w'].max()):.3f})")
        if df["evaluated"].all():
            transfer = evaluations(ctx)[1]
            s_int = interval(transfer.get(f"{name}/{stm['run'].iloc[0]}", {}), "bwt")
            verdicts = {r: compare(s_int, interval(transfer.get(f"{name}/{r}", {}), "bwt")) for r in others["run"]}
            parts.append("STM forgets less than each regularised run (BWT): "
                         + "; ".join(f"{r}: {v}" for r, v in verdicts.items()))
        else:
            parts.append("BWT/TI of these adapters: not evaluated (add the run to a 05_evaluate train_run)")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(
        8, ["config_as_printed", "metric", "value"])
    return Section("table08", title, "made", body, rel(ctx, files), ". ".join(parts) or "not measured")


def _parallel(ident: str, ctx: Context, which: str) -> Section:
    """Figures 11-12: one line per regularised setting across weight decay, dropout, step and accuracy."""
    title = TITLES[ident]
    found = regularization(ctx)
    if found is None:
        return missing(ident, title, NEEDS[ident])
    name, rec, df = found
    pts, refs = regularization_accuracy(ctx, name, df, which)
    if pts.empty:
        evaluated = any(f"{name}/{r}" in evaluations(ctx)[0] for r in df["run"])
        return missing(ident, title, NEEDS[ident] + (f" (run `{name}` has not been evaluated: add it to a 05_evaluate "
                        "train_run)" if not evaluated else " (its evaluation has no such task)"))
    if pts["step"].isna().all():
        pts["step"] = rec.config.get("training", {}).get("max_steps") or "final"
    what = "target-task accuracy" if which == "target" else "mean non-target accuracy"
    fig = regularization_lines(pts, refs, f"Regularisation grid: {what} (each axis scaled to its range)")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, f"{ident}_regularization_{which}", ctx.figures_dir)]
    table = save_table(pts, f"{ident}_regularization_{which}", ctx.tables_dir, f"Figure {int(ident[3:])} data (kit).")
    best = pts.loc[pts["accuracy"].idxmax()]
    steps = "per checkpoint" if pts["step"].nunique() > 1 else "at the final step only (no checkpoints evaluated)"
    claim = (f"Highest {what}: {best['run']} ({best['accuracy']:.3f}); Original {refs.get('Original', float('nan')):.3f}. "
             f"Accuracy {steps}; at this scale read the intervals in Table 8/12 before ranking.")
    return Section(ident, title, "made", f"Kit: {ctx.scale(rec)}.", files + rel(ctx, table), claim)


@generator("fig11")
def fig11(ctx: Context) -> Section:
    return _parallel("fig11", ctx, "target")


@generator("fig12")
def fig12(ctx: Context) -> Section:
    return _parallel("fig12", ctx, "non-target")


def _tau_panels(ctx: Context, ident: str) -> Section:
    """Figures 5 and 6: accuracy on each task against the share of tokens STM masked (the tau sweep)."""
    title = TITLES[ident]
    pts = tau_points(ctx)
    if len({p["masked_%"] for p in pts}) < 3:
        return missing(ident, title, NEEDS[ident])
    df = pd.DataFrame(pts)
    fig = accuracy_vs_masked(df)
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, f"{ident}_tau_sweep", ctx.figures_dir)]
    files += rel(ctx, save_table(df, f"{ident}_tau_sweep", ctx.tables_dir, f"Figure {int(ident[3:])} data (kit)."))
    rec = next(iter(ctx.by_stage("evaluate").values()))
    spread = df.groupby("task")["accuracy"].agg(lambda a: a.max() - a.min())
    # a task whose intervals do not all share a point has a change the sweep can tell from item noise
    apart = [t for t, g in df.groupby("task") if g["ci_low"].max() > g["ci_high"].min()]
    claim = ("Accuracy against the share of masked tokens (error bars: 95% bootstrap CIs over items). Largest change "
             f"across the sweep: {spread.idxmax()} {spread.max():.3f}. Tasks whose intervals do not all overlap: "
             f"{', '.join(apart) if apart else 'none (no change distinguishable from noise)'}.")
    return Section(ident, title, "made", f"Kit: {ctx.scale(rec)}; {df['run'].nunique()} runs.", files, claim)


@generator("fig05")
def fig05(ctx: Context) -> Section:
    return _tau_panels(main_scope(ctx, LLAMA, "math" if paper_scale(ctx) else None), "fig05")


@generator("fig06")
def fig06(ctx: Context) -> Section:
    return for_paper_model(ctx, "fig06", GEMMA2B, "math", "Figure 5", lambda sub: _tau_panels(sub, "fig06"))


@generator("table13")
def table13(ctx: Context) -> Section:
    title = TITLES["table13"]
    df = pd.DataFrame(tau_points(ctx.scope(target="math")))
    if df.empty or df["masked_%"].nunique() < 2:
        return missing("table13", title, NEEDS["table13"])
    df["cell"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(df["accuracy"], df["ci_low"], df["ci_high"],
                                                                         strict=True)]
    wide = df.pivot_table(index=["model", "run", "tau", "masked_%"], columns="task", values="cell", aggfunc="first",
                          dropna=False).reset_index().sort_values(["model", "masked_%"])
    files = save_table(wide, "table13_math_tau_sweep", ctx.tables_dir,
                       "Table 13 (kit): MATH target, tau sweep; accuracy [95% CI] per task (tau empty = ground truth).")
    body = "*Kit:*\n\n" + to_markdown(wide) + "\n" + paper_md(13, ["model", "method", "tau", "pct_masked",
                                                                       "eval_task", "accuracy_pct"])
    return Section("table13", title, "made", body, rel(ctx, files),
                   "Accuracy per tau on every task; compare the target column with the non-target ones.")


@generator("table11")
def table11(ctx: Context) -> Section:
    title = TITLES["table11"]
    frames = []
    for model in (OLMO, GEMMA9B):
        sub = ctx.scope(model, "mbpp")
        sft = sft_runs(sub)
        df = transfer_rows(sub, [n for n, i in sft.items() if i["method"] in ("gt", "stm") and in_main_setting(sub, i)])
        if not df.empty:
            frames.append(df.assign(model=model))
    if not frames:
        return missing("table11", title, NEEDS["table11"])
    df = pd.concat(frames, ignore_index=True)
    files = save_table(df, "table11_more_models", ctx.tables_dir, "Table 11 (kit): TI/BWT in %, 95% paired-bootstrap CIs.")
    claims = []
    for model in df["model"].unique():
        sub = ctx.scope(model, "mbpp")
        claims.append(f"{model}: " + stm_vs_gt_claim(sub).split(" Drift")[0])
    body = "*Kit:*\n\n" + to_markdown(df) + "\n" + paper_md(11, ["model", "method", "tau", "metric", "value_pct"])
    return Section("table11", title, "made", body, rel(ctx, files), " ".join(claims))


def _dpf_table(ctx: Context, ident: str, model: str, paper_n: int) -> Section:
    """Tables 14 and 18: MATH target, STM vs DPF vs STM+DPF (share of tokens filtered, accuracy per task)."""
    title = TITLES[ident]
    sub = ctx.scope(model, "math") if ctx.scope(model).runs else main_scope(ctx)
    sft = sft_runs(sub)
    names = [n for n, i in sft.items() if i["method"] in ("gt", "stm", "dpf", "stm+dpf") and in_main_setting(sub, i)]
    if not any(sft[n]["method"] in ("dpf", "stm+dpf") for n in names):
        return missing(ident, title, NEEDS[ident])
    df = accuracy_rows(sub, names, lambda n: {"tau": sft[n]["tau"], "filtered_%": sft[n]["masked_%"]})
    if df.empty:
        return missing(ident, title, NEEDS[ident] + " (the DPF runs are not evaluated yet)")
    _, transfer, _, rec = evaluations(sub)
    df["BWT_95CI"] = interval_column(transfer, df["run"], "bwt")
    files = save_table(df, f"{ident}_dpf", ctx.tables_dir,
                       f"Table {paper_n} (kit, {sub.scale(rec)}): accuracy [95% CI]; filtered_% = share of response "
                       "tokens masked; DPF masks tokens whose PPL rose under the ground-truth adapter.")
    stm = next((n for n in runs_by_method(sub, "stm") if n in transfer), None)
    parts = []
    for other in ("dpf", "stm+dpf"):
        o = next((n for n in runs_by_method(sub, other) if n in transfer), None)
        if stm and o:
            parts.append(f"STM forgets less than {other.upper()} (BWT): "
                         f"{compare(interval(transfer[stm], 'bwt'), interval(transfer[o], 'bwt'))}")
    scope = "" if model in sub.models() else f" The paper's table is {model}; this profile's model stands in."
    body = (f"*Kit ({sub.scale(rec)}):*{scope}\n\n" + to_markdown(df) + "\n"
            + paper_md(paper_n, ["method", "tau", "pct_filtered", "eval_task", "accuracy_pct"]))
    return Section(ident, title, "made", body, rel(ctx, files), "; ".join(parts) or "no STM/DPF pair evaluated")


@generator("table14")
def table14(ctx: Context) -> Section:
    return _dpf_table(ctx, "table14", LLAMA, 14)


@generator("table18")
def table18(ctx: Context) -> Section:
    return for_paper_model(ctx, "table18", GEMMA2B, None, "Table 14", lambda _: _dpf_table(ctx, "table18", GEMMA2B, 18))


@generator("table19")
def table19(ctx: Context) -> Section:
    title = TITLES["table19"]
    sft = sft_runs(ctx)
    acc, _, _, rec = evaluations(ctx)
    chains = [(i["record"].results.init_run, n) for n, i in sft.items() if i["record"].results.init_run]
    chains = [(a, b) for a, b in chains if a in acc and b in acc and "Original" in acc]
    if not chains:
        return missing("table19", title, NEEDS["table19"])
    rows = []
    for first, second in chains:
        for step, name in enumerate(("Original", first, second)):
            trained_on = "initial model" if step == 0 else target_of(sft[name]["record"])
            for spec, sm in acc[name].items():
                rows.append({"chain": f"{first} -> {second}", "step": step, "run": name, "trained_on": trained_on,
                             "method": sft.get(name, {}).get("label", name), "eval_task": spec,
                             "accuracy": sm["accuracy"], "ci_low": sm["ci_low"], "ci_high": sm["ci_high"]})
    df = pd.DataFrame(rows)
    files = save_table(df, "table19_continual", ctx.tables_dir,
                       f"Table 19 (kit, {ctx.scale(rec)}): accuracy after each continual-training step [95% CI].")
    first, second = chains[0]
    t1 = target_of(sft[first]["record"])
    kept = df[(df["chain"] == f"{first} -> {second}") & (df["eval_task"].str.split(":").str[0] == t1)]
    claim = "not measured"
    if len(kept) == 3:
        a1, a2 = kept[kept["step"] == 1].iloc[0], kept[kept["step"] == 2].iloc[0]
        overlap = not (a2["ci_high"] < a1["ci_low"])
        claim = (f"The first task's gain survives the second step ({t1}: {a1['accuracy']:.3f} after step 1, "
                 f"{a2['accuracy']:.3f} after step 2): {'yes (within the intervals)' if overlap else 'no'}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(
        19, ["step", "training_task", "eval_task", "accuracy"])
    return Section("table19", title, "made", body, rel(ctx, files), claim)


def _correctness(ctx: Context, ident: str, paper_n: int) -> Section:
    """Tables 20-21: Self-Output training sets at several correctness levels, accuracy on every task."""
    title = TITLES[ident]
    sft = sft_runs(ctx)
    names = [n for n, i in sft.items() if i["record"].results.correctness is not None] + \
        [n for n in runs_by_method(ctx, "gt")[:1]]
    if not any(sft[n]["record"].results.correctness is not None for n in names):
        return missing(ident, title, NEEDS[ident])
    df = accuracy_rows(ctx, names, lambda n: {
        "correctness_%": (None if sft[n]["record"].results.correctness is None
                          else 100 * sft[n]["record"].results.correctness),
        "trained_tokens": sft[n]["trained_tokens"]})
    if len(df) <= 1:
        return missing(ident, title, NEEDS[ident] + " (the correctness runs are not evaluated yet)")
    _, transfer, _, rec = evaluations(ctx)
    df["BWT_95CI"] = interval_column(transfer, df["run"], "bwt")
    files = save_table(df, f"{ident}_correctness", ctx.tables_dir,
                       f"Table {paper_n} (kit, {ctx.scale(rec)}): accuracy [95% CI] after training on Self-Output "
                       "sets with the given share of correct answers.")
    levels = sorted((sft[n]["record"].results.correctness, n) for n in names if n in transfer
                    and sft[n]["record"].results.correctness is not None)
    claim = "not measured"
    if len(levels) >= 2:
        lo_n, hi_n = levels[0][1], levels[-1][1]
        claim = (f"Self-Output data forgets little whatever its correctness (BWT, {levels[0][0]:.0%} vs "
                 f"{levels[-1][0]:.0%} correct): "
                 f"{compare(interval(transfer[lo_n], 'bwt'), interval(transfer[hi_n], 'bwt'))}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(
        paper_n, ["method", "rate_as_printed", "trained_tokens", "eval_task", "accuracy"])
    return Section(ident, title, "made", body, rel(ctx, files), claim)


@generator("table20")
def table20(ctx: Context) -> Section:
    return _correctness(main_scope(ctx, LLAMA, "mbpp"), "table20", 20)


@generator("table21")
def table21(ctx: Context) -> Section:
    return for_paper_model(ctx, "table21", GEMMA2B, "mbpp", "Table 20", lambda sub: _correctness(sub, "table21", 21))


@generator("table06")
def table06(ctx: Context) -> Section:
    title = TITLES["table06"]
    rows = {}
    for rec in ctx.by_stage("evaluate").values():
        rows.update(rec.results.self_bleu)
    if not rows:
        return missing("table06", title, NEEDS["table06"])
    _, transfer, _, rec = evaluations(ctx)
    sft = sft_runs(ctx)
    df = pd.DataFrame([{"run": lab, "method": sft.get(lab, {}).get("label", lab), "task": r.get("task"),
                        "questions": r.get("n_items"), "samples_each": r.get("n_samples"),
                        "self_bleu": r.get("self_bleu"), "self_bleu_sd": r.get("self_bleu_sd"),
                        "sample_accuracy": r.get("accuracy"),
                        "BWT_95CI": fmt_ci(*(transfer.get(lab, {}).get(k) for k in ("bwt", "bwt_low", "bwt_high")))}
                       for lab, r in rows.items()])
    files = save_table(df, "table06_self_bleu", ctx.tables_dir,
                       f"Table 6 (kit, {ctx.scale(rec)}): Self-BLEU (x100; lower = more diverse) of sampled answers, "
                       "mean and standard deviation over questions; sample_accuracy = share of correct samples.")
    base = df[df["run"] == "Original"]["self_bleu"]
    claim = "not measured"
    if not base.empty and len(df) > 1:
        moved = {r["method"]: r["self_bleu"] - float(base.iloc[0]) for _, r in df.iterrows() if r["run"] != "Original"}
        claim = ("Change in Self-BLEU vs the original (positive = less diverse): "
                 + ", ".join(f"{m} {v:+.2f}" for m, v in moved.items()) + " (no interval; one sample set per model)")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(6, ["method", "learning_rate",
                                                                                        "metric", "value"])
    return Section("table06", title, "made", body, rel(ctx, files), claim)


@generator("fig02")
def fig02(ctx: Context) -> Section:
    title = TITLES["fig02"]
    sft = sft_runs(ctx)
    _, transfer, _, rec = evaluations(ctx)
    pts = [{"run": n, "model": model_of(i["record"]), "method": i["label"], "label_ppl": i["label_ppl"],
            "bwt": transfer[n].get("bwt"), "bwt_low": transfer[n].get("bwt_low"),
            "bwt_high": transfer[n].get("bwt_high"), "final_train_loss": i["final_train_loss"]}
           for n, i in sft.items() if i["method"] in ("gt", "self_output", "rephrase") and n in transfer
           and i.get("label_ppl") is not None
           and in_main_setting(ctx, {**i, "record": i["record"].with_results(correctness=None)})]
    if len({p["method"].split(" ")[0] for p in pts}) < 2:  # label sources, not one source's fine-tuning variants
        return missing("fig02", title, NEEDS["fig02"])
    pts = [p for p in pts if p["bwt"] is not None]
    if len({p["method"].split(" ")[0] for p in pts}) < 2:
        return missing("fig02", title, "a defined BWT: it is a change relative to the base model's accuracy on the "
                                        "non-target tasks, and the base model scored 0 on all of them (stand-ins do)")
    df = pd.DataFrame(pts)
    fig = ppl_vs_bwt(df)
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig02_ppl_vs_bwt", ctx.figures_dir)]
    files += rel(ctx, save_table(df, "fig02_ppl_vs_bwt", ctx.tables_dir, "Figure 2 data (kit)."))
    rho = df["label_ppl"].rank().corr(df["bwt"].rank()) if len(df) >= 3 else None  # Spearman
    claim = ("Lower-PPL labels forget less (Spearman correlation of label PPL with BWT, negative = the paper's "
             f"trend): {'n/a (fewer than 3 points)' if rho is None else 'undefined (no variation)' if pd.isna(rho) else f'{rho:+.2f} over {len(df)} runs'}; "
             "the BWT intervals overlap at this scale, so treat the trend as illustrative.")
    return Section("fig02", title, "made", f"Kit: {ctx.scale(rec)}.", files, claim)


def _ifeval_levels(summary: dict[str, Any], n_resamples: int = 1000) -> dict[str, Any]:
    """Instruction-level and loose accuracies of one IFEval evaluation, read from its per-item file ({} if none)."""
    try:
        records = load_records(summary["items_path"])
        levels: dict[str, Any] = dict(ifeval.accuracies(records))
        _, lo, hi = ifeval.instruction_ci(records, n_resamples=n_resamples)
    except (KeyError, TypeError, OSError, ValueError):
        return {}
    levels.update(instruction_low=lo, instruction_high=hi, standin=all(str(r["id"]).startswith("standin-")
                                                                          for r in records))
    return levels


@generator("table09")
def table09(ctx: Context) -> Section:
    """IFEval after MBPP training: prompt-level strict accuracy (the paper's metric), instruction-level beside it,
    for the base model and the plain ground-truth and STM runs at each learning rate."""
    title = TITLES["table09"]
    ctx = main_scope(ctx, None, "mbpp")
    acc, transfer, _, rec = evaluations(ctx)
    sft = sft_runs(ctx)
    _, finetune = main_setting(ctx)
    keep = [lab for lab in acc if lab == "Original" or (
        lab in sft and sft[lab]["method"] in ("gt", "stm") and is_plain(sft[lab]) and sft[lab]["finetune"] == finetune)]
    rows, standin, change = [], False, {}
    for label in keep:
        spec = next((t for t in acc[label] if t.split(":")[0] == "ifeval"), None)
        if spec is None:
            continue
        sm, lv = acc[label][spec], _ifeval_levels(acc[label][spec])
        standin = standin or lv.get("standin", False)
        d = transfer.get(label, {}).get("per_task", {}).get(spec, {})
        if d:
            change[label] = (d["change_low"], d["change_high"])
        rows.append({
            "run": label, "method": sft.get(label, {}).get("label", label),
            "learning_rate": sft.get(label, {}).get("learning_rate"),
            "prompt_strict": sm["accuracy"], "prompt_strict_95CI": f"[{sm['ci_low']:.3f}, {sm['ci_high']:.3f}]",
            "instruction_strict": lv.get("instruction_strict"),
            "instruction_strict_95CI": f"[{lv['instruction_low']:.3f}, {lv['instruction_high']:.3f}]" if lv else "n/a",
            "prompt_loose": lv.get("prompt_loose"), "instruction_loose": lv.get("instruction_loose"),
            "change_vs_original": None if not d else d["change"],
            "change_95CI": "n/a" if not d else f"[{d['change_low']:+.3f}, {d['change_high']:+.3f}]",
            "prompts": sm["n"], "instructions": lv.get("n_instructions"),
        })  # fmt: skip
    if not rows:
        return missing("table09", title, NEEDS["table09"])
    df = pd.DataFrame(rows)
    what = (f"the kit's IFEval stand-in (NOT IFEval: prompts generated from the instruction registry of "
            f"{ifeval.PIN}, all but {len(ifeval.EXCLUDED)} of its instruction types; see stmkit/tasks/ifeval.py)"
            if standin else "IFEval")
    files = save_table(df, "table09_ifeval", ctx.tables_dir,
                       f"Table 9 (kit, {ctx.scale(rec)}; {what}): prompt-level and instruction-level accuracy, strict "
                       "and loose, 95% bootstrap CIs over prompts; change = prompt-level strict after - before, "
                       "paired over prompts.")
    gt = next((r for r in runs_by_method(ctx, "gt") if r in change), None)
    stm = next((r for r in runs_by_method(ctx, "stm") if r in change), None)
    claim = ("STM keeps instruction following better than ground truth (change in IFEval prompt-level strict "
             "accuracy vs the original, paired 95% CIs): "
             + ("not measured" if not gt or not stm else compare(change[stm], change[gt]))
             + (" (on the offline stand-in, not IFEval)" if standin else ""))
    body = (f"*Kit ({ctx.scale(rec)}; {what}):*\n\n" + to_markdown(df) + "\n"
            + paper_md(9, ["model", "method", "learning_rate", "stm_tau", "metric", "value"]))
    return Section("table09", title, "made", body, rel(ctx, files), claim)


# ---------------------------------------------------------------- outputs this kit cannot make


@generator("table10")
def table10(ctx: Context) -> Section:
    return unavailable("table10")
