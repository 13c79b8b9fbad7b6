"""The training data: Tables 1 and 17 and Figures 1, 3 and 8-10, from the score, mask and generate runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..catalogue import NEEDS, TITLES
from ..tables import save_table, to_markdown
from .claims import category_claim
from .runs import GEMMA2B, LLAMA, MISTRAL, Context, model_of, target_of
from .section import Generator, Section, missing, paper_md, registrar

GENERATORS: dict[str, Generator] = {}
generator = registrar(GENERATORS)


@generator("table01")
def table01(ctx: Context) -> Section:
    title = TITLES["table01"]
    runs = ctx.by_stage("score")
    if not runs:
        return missing("table01", title, NEEDS["table01"])
    name, rec = next(iter(runs.items()))
    cols = ["training_data", "examples", "avg_ppl", "ppl_variance", "response_tokens", "share_tokens_ppl_gt_2.5"]
    df = pd.DataFrame(rec.results.table01)[cols]
    files = save_table(df, "table01_ppl_stats", ctx.tables_dir, f"Table 1 (kit, {ctx.scale(rec)}).")
    body = (f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n"
            + paper_md(1, ["scoring_model", "dataset", "training_data", "metric", "value"]))
    gt = df[df["training_data"] == "Ground Truth"]
    others = df[(df["training_data"] != "Ground Truth") & (df["examples"] > 0)]
    if others.empty:
        claim = ("Ground truth vs model-generated data: not measured (no Self-Output/Rephrase answers passed the "
                 "checker, or none were generated); "
                 f"{100 * float(gt['share_tokens_ppl_gt_2.5'].iloc[0]):.1f}% of ground-truth tokens have PPL > 2.5 "
                 "(paper's models: about 20-24%).")
    else:
        lower = all(float(r["avg_ppl"]) < float(gt["avg_ppl"].iloc[0]) for _, r in others.iterrows())
        claim = f"Model-generated data has lower sequence PPL than ground truth: {'yes' if lower else 'no'}."
    return Section("table01", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)


@generator("fig01")
def fig01(ctx: Context) -> Section:
    title = TITLES["fig01"]
    runs = ctx.by_stage("score")
    if not runs:
        return missing("fig01", title, NEEDS["fig01"])
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig01_ppl_tokens")
    body = (f"Kit: training response `{rec.results.example_id}` of the target task under "
            f"{ctx.scale(rec)}; the paper shows a MATH answer under Llama 3 8B Instruct. Interactive HTML: "
            f"`runs/{name}/fig01_tokens.html`.")
    return Section("fig01", title, "made", body, files, "Illustration; no claim to test.")


@generator("fig03")
def fig03(ctx: Context) -> Section:
    title = TITLES["fig03"]
    runs = ctx.by_stage("score")
    if not runs:
        return missing("fig03", title, NEEDS["fig03"])
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig03_ppl_trace")
    n_sources = len(rec.results.table01)
    claim = ("Ground truth is spikier than the model's own answers: see the figure "
             + ("(only ground truth was scored; no generated sets yet)." if n_sources < 2 else "(panels compared)."))
    return Section("fig03", title, "made", f"Kit: {ctx.scale(rec)}.", files, claim)


def _category_section(ctx: Context, ident: str, paper_model: str, registry_name: str, substitute: int) -> Section:
    """Figures 8-10: token categories of all vs high-PPL tokens, one scoring model each in the paper.

    With the paper's model among the profile's mask runs, that model's run is used (MATH target first). The
    offline profiles have one real model: Figure 8 is its target-task data, and Figures 9-10 are the same analysis
    on other tasks' ground truth (02_mask_tokens `category_tasks`), labelled as substitutes.
    """
    title = TITLES[ident]
    runs = ctx.by_stage("mask")
    if not runs:
        return missing(ident, title, NEEDS[ident])
    own = {n: r for n, r in runs.items() if model_of(r) == registry_name}
    if own:
        name, rec = sorted(own.items(), key=lambda kv: target_of(kv[1]) != "math")[0]
        df = pd.DataFrame(rec.results.categories)
        files = ctx.gather_figure(name, "fig08_token_categories", f"{ident}_token_categories")
        note = f"*Kit ({ctx.scale(rec)}):*"
    elif ident == "fig08":
        name, rec = next(iter(runs.items()))
        df = pd.DataFrame(rec.results.categories)
        files = ctx.gather_figure(name, "fig08_token_categories")
        note = f"*Kit ({ctx.scale(rec)}; the paper scores MATH with {paper_model}):*"
    else:
        name, rec = next(iter(runs.items()))
        extra = rec.results.categories_by_task
        if len(extra) < substitute:
            return missing(ident, title, f"mask runs of {paper_model} (profile `paper`), or, as an offline "
                           f"substitute, a 02_mask_tokens run with at least {substitute} `category_tasks`")
        task = list(extra)[substitute - 1]  # in the order of category_tasks
        df = pd.DataFrame(extra[task])
        files = ctx.gather_figure(name, f"categories_{task}", f"{ident}_token_categories")
        note = (f"*Kit substitute ({ctx.scale(rec)}): the paper repeats Figure 8 with {paper_model} as the scoring "
                f"model; offline there is one real model, so this is the same analysis on the `{task}` ground truth "
                "(training split) under that model.*")
    cols = [c for c in ("source", "category") if c in df]
    pivot = df.pivot_table(index=cols, columns="tokens", values="share").reset_index()
    return Section(ident, title, "made", note + "\n\n" + to_markdown(pivot), files,
                   category_claim(df) + ". The paper prints no numbers for these figures.")


for _ident, _model, _reg, _sub in [("fig08", "Llama 3 8B", LLAMA, 0), ("fig09", "Mistral 7B", MISTRAL, 1),
                                   ("fig10", "Gemma 2 2B", GEMMA2B, 2)]:
    GENERATORS[_ident] = (lambda i, m, r, k: (lambda ctx: _category_section(ctx, i, m, r, k)))(_ident, _model, _reg, _sub)


@generator("table17")
def table17(ctx: Context) -> Section:
    title = TITLES["table17"]
    gen = ctx.by_stage("generate")
    if not gen:
        return missing("table17", title, NEEDS["table17"])
    name, rec = next(iter(gen.items()))
    stats = rec.results.stats
    score = next(iter(ctx.by_stage("score").values()), None)
    problems = next(iter(stats.values()))["problems"]
    rows = [{"method": "Baseline Fine-tuning", "samples": problems, "correctness_%": 100.0, "wall_s": 0.0,
             "generated_tokens": 0}]
    if score:
        t = score.costs_s.get("score_ground_truth")
        rows.append({"method": "STM", "samples": problems, "correctness_%": 100.0, "wall_s": t,
                     "generated_tokens": 0})
    for label, st in stats.items():
        rows.append({"method": label, "samples": st["kept"], "correctness_%": 100 * st["samples_correct_share"],
                     "wall_s": st["wall_s"], "generated_tokens": st["generated_tokens"]})
    df = pd.DataFrame(rows)
    files = save_table(df, "table17_data_cost", ctx.tables_dir,
                       f"Table 17 (kit, {ctx.scale(rec)}; wall time on this machine, CPU).")
    so = stats.get("Self-Output", {})
    t_stm = score.costs_s.get("score_ground_truth") if score else None
    verdict = "not measured" if not so or t_stm is None else "yes" if t_stm < so["wall_s"] else "no"
    claim = (f"STM's data preparation (one scoring pass) is cheaper than Self-Output's sampling: {verdict}; "
             f"Self-Output kept {so.get('kept', 0)} of {problems} problems here "
             f"({100 * so.get('samples_correct_share', 0):.1f}% of samples correct).")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + paper_md(17, ["method", "metric",
                                                                                          "value", "unit"])
    return Section("table17", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)
