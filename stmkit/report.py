"""Every paper table and figure, built from the runs a profile recorded, and REPORT.md beside the paper's numbers.

Each generator reads run.json records (never retrains) and returns a Section: what the kit measured, the paper's
printed numbers next to it (from stmkit/data/paper, labelled as the paper's), the scale of the run, and a plain
sentence on whether the paper's claim holds here. A generator whose inputs the profile did not produce says so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import atomic_write_text
from .paper import PAPER_FIGURES, paper_table
from .tables import save_table, to_markdown


@dataclass
class Section:
    """One paper table or figure in the report."""

    id: str  # table01 ... fig14
    title: str
    status: str = "missing"  # "made" | "missing" | "unavailable"
    body: str = ""  # Markdown
    files: list[str] = field(default_factory=list)
    claim: str = ""


@dataclass
class Context:
    """The recorded runs of one profile and where to write."""

    root: Path
    profile: str
    runs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, root: Path, profile: str) -> Context:
        runs = {}
        for path in sorted(Path(root).glob("runs/*/run.json")):
            try:
                runs[path.parent.name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
        return cls(Path(root), profile, runs)

    def by_stage(self, stage: str) -> dict[str, dict[str, Any]]:
        return {n: r for n, r in self.runs.items() if r.get("stage") == stage}

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def gather_figure(self, run: str, name: str, as_name: str | None = None) -> list[str]:
        """Copy a run's figure (png + pdf) into results/<profile>/figures/, returning the new paths."""
        out = []
        for ext in ("png", "pdf"):
            src = self.root / "runs" / run / "figures" / f"{name}.{ext}"
            if src.is_file():
                dst = self.figures_dir / f"{as_name or name}.{ext}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                out.append(str(dst.relative_to(self.root)))
        return out

    def scale(self, record: dict[str, Any]) -> str:
        cfg = record.get("config", {})
        data = cfg.get("data", {})
        return (f"model {cfg.get('model', {}).get('name')}, target {data.get('target')}, "
                f"{data.get('n_train')} training examples, seed {cfg.get('seed')}")


GENERATORS: dict[str, Callable[[Context], Section]] = {}


def generator(ident: str) -> Callable:
    def wrap(fn: Callable[[Context], Section]) -> Callable[[Context], Section]:
        GENERATORS[ident] = fn
        return fn

    return wrap


def _missing(ident: str, title: str, needs: str) -> Section:
    return Section(ident, title, "missing", f"Not produced by this profile: needs {needs}.")


def _unavailable(ident: str, title: str, why: str) -> Section:
    return Section(ident, title, "unavailable", f"Not available in this kit: {why}.")


def _paper_md(n: int, columns: list[str] | None = None, query: str | None = None) -> str:
    df = paper_table(n)
    if query:
        df = df.query(query)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    return f"*Paper (Table {n}, as printed):*\n\n" + to_markdown(df.reset_index(drop=True))


# ---------------------------------------------------------------- token statistics (score / mask runs)


@generator("table01")
def table01(ctx: Context) -> Section:
    title = "Table 1. Sequence PPL of training data by source"
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("table01", title, "a 01_score_tokens run")
    name, rec = next(iter(runs.items()))
    cols = ["training_data", "examples", "avg_ppl", "ppl_variance", "response_tokens", "share_tokens_ppl_gt_2.5"]
    df = pd.DataFrame(rec["results"]["table01"])[cols]
    files = save_table(df, "table01_ppl_stats", ctx.tables_dir, f"Table 1 (kit, {ctx.scale(rec)}).")
    body = (f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n"
            + _paper_md(1, ["scoring_model", "dataset", "training_data", "metric", "value"]))
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
    title = "Figure 1. A response with high-PPL tokens highlighted"
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("fig01", title, "a 01_score_tokens run")
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig01_ppl_tokens")
    body = (f"Kit: training response `{rec['results'].get('example_id')}` of the target task under "
            f"{ctx.scale(rec)}; the paper shows a MATH answer under Llama 3 8B Instruct. Interactive HTML: "
            f"`runs/{name}/fig01_tokens.html`.")
    return Section("fig01", title, "made", body, files, "Illustration; no claim to test.")


@generator("fig03")
def fig03(ctx: Context) -> Section:
    title = "Figure 3. Token PPL along one answer per data source"
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("fig03", title, "a 01_score_tokens run")
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig03_ppl_trace")
    n_sources = len(rec["results"].get("table01", []))
    claim = ("Ground truth is spikier than the model's own answers: see the figure "
             + ("(only ground truth was scored; no generated sets yet)." if n_sources < 2 else "(panels compared)."))
    return Section("fig03", title, "made", f"Kit: {ctx.scale(rec)}.", files, claim)


def _category_section(ctx: Context, ident: str, paper_model: str) -> Section:
    title = f"Figure {int(ident[3:])}. Token categories of all vs high-PPL tokens ({paper_model} in the paper)"
    runs = ctx.by_stage("mask")
    if not runs:
        return _missing(ident, title, "a 02_mask_tokens run")
    if ident != "fig08":
        return _missing(ident, title, f"mask runs on the paper's {paper_model} (profile `paper`); the offline "
                        "profiles score with one model, shown in fig08")
    name, rec = next(iter(runs.items()))
    df = pd.DataFrame(rec["results"]["categories"])
    files = ctx.gather_figure(name, "fig08_token_categories")
    pivot = df.pivot_table(index="category", columns="tokens", values="share").reset_index()
    more = {r["category"]: r["masked"] - r["all"] for _, r in pivot.iterrows()}
    top = max(more, key=more.get)
    claim = (f"Which category is over-represented among high-PPL tokens here: {top} "
             f"({100 * more[top]:+.1f} points vs all tokens). The paper's figures show the categories' shares "
             "for MATH under Llama 3 8B, Mistral 7B and Gemma 2 2B; no numbers are printed.")
    return Section(ident, title, "made", f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(pivot), files, claim)


for _ident, _model in [("fig08", "Llama 3 8B"), ("fig09", "Mistral 7B"), ("fig10", "Gemma 2 2B")]:
    GENERATORS[_ident] = (lambda i, m: (lambda ctx: _category_section(ctx, i, m)))(_ident, _model)


@generator("table17")
def table17(ctx: Context) -> Section:
    title = "Table 17. Data-preparation cost per method"
    gen = ctx.by_stage("generate")
    if not gen:
        return _missing("table17", title, "a 03_generate_data run")
    name, rec = next(iter(gen.items()))
    stats = rec["results"]["stats"]
    score = next(iter(ctx.by_stage("score").values()), None)
    problems = next(iter(stats.values()))["problems"]
    rows = [{"method": "Baseline Fine-tuning", "samples": problems, "correctness_%": 100.0, "wall_s": 0.0,
             "generated_tokens": 0}]
    if score:
        t = score.get("costs_s", {}).get("score_ground_truth")
        rows.append({"method": "STM", "samples": problems, "correctness_%": 100.0, "wall_s": t,
                     "generated_tokens": 0})
    for label, st in stats.items():
        rows.append({"method": label, "samples": st["kept"], "correctness_%": 100 * st["samples_correct_share"],
                     "wall_s": st["wall_s"], "generated_tokens": st["generated_tokens"]})
    df = pd.DataFrame(rows)
    files = save_table(df, "table17_data_cost", ctx.tables_dir,
                       f"Table 17 (kit, {ctx.scale(rec)}; wall time on this machine, CPU).")
    so = stats.get("Self-Output", {})
    t_stm = (score or {}).get("costs_s", {}).get("score_ground_truth")
    verdict = "not measured" if not so or t_stm is None else "yes" if t_stm < so["wall_s"] else "no"
    claim = (f"STM's data preparation (one scoring pass) is cheaper than Self-Output's sampling: {verdict}; "
             f"Self-Output kept {so.get('kept', 0)} of {problems} problems here "
             f"({100 * so.get('samples_correct_share', 0):.1f}% of samples correct).")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(17, ["method", "metric",
                                                                                          "value", "unit"])
    return Section("table17", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)


# ---------------------------------------------------------------- fine-tuning and evaluation (sft / evaluate runs)


def _sft(ctx: Context) -> dict[str, dict[str, Any]]:
    """Training runs by name with what the report needs: label, method, share masked, ||ΔW||, losses."""
    out = {}
    for name, rec in ctx.by_stage("sft").items():
        res = rec["results"]
        cfg = rec.get("config", {})
        out[name] = {
            "run": name, "label": res.get("label", name), "method": res.get("method"),
            "tau": cfg.get("masking", {}).get("tau"), "finetune": cfg.get("training", {}).get("finetune"),
            "learning_rate": cfg.get("training", {}).get("learning_rate"),
            "masked_%": 100 * res.get("masking", {}).get("masked_share", 0.0),
            "trained_tokens": res.get("masking", {}).get("trained_tokens"),
            "delta_w": res.get("delta_w"), "record": rec,
        }
    return out


def _evals(ctx: Context) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(accuracy by label, transfer by training run, drift by training run, one evaluate record) over all
    evaluate runs of the profile."""
    acc, transfer, drift, rec0 = {}, {}, {}, {}
    for _, rec in ctx.by_stage("evaluate").items():
        res = rec["results"]
        acc.update(res.get("accuracy", {}))
        transfer.update(res.get("transfer", {}))
        drift.update(res.get("drift", {}))
        rec0 = rec0 or rec
    return acc, transfer, drift, rec0


def _fmt_ci(v: Any, lo: Any, hi: Any) -> str:
    return "n/a" if v is None else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _transfer_rows(ctx: Context, names: list[str] | None = None) -> pd.DataFrame:
    sft = _sft(ctx)
    _, transfer, drift, _ = _evals(ctx)
    rows = []
    for name, rep in transfer.items():
        if names is not None and name not in names:
            continue
        info = sft.get(name, {})
        d = drift.get(name, {}).get("all", {})
        rows.append({
            "run": name, "method": info.get("label", name), "masked_%": info.get("masked_%"),
            "TI_%": rep.get("ti"), "TI_95CI": _fmt_ci(rep.get("ti"), rep.get("ti_low"), rep.get("ti_high")),
            "BWT_%": rep.get("bwt"), "BWT_95CI": _fmt_ci(rep.get("bwt"), rep.get("bwt_low"), rep.get("bwt_high")),
            "drift_KL": d.get("kl"), "delta_nll_base_answers": d.get("delta_nll"),
            "bwt_tasks": ", ".join(rep.get("bwt_tasks", [])),
        })
    return pd.DataFrame(rows)


def _interval(rep: dict[str, Any], key: str) -> tuple[float, float] | None:
    lo, hi = rep.get(f"{key}_low"), rep.get(f"{key}_high")
    return None if lo is None or hi is None else (lo, hi)


def _compare(a: tuple[float, float] | None, b: tuple[float, float] | None, higher_better: bool = True) -> str:
    """'yes' if a's interval lies above b's, 'no' if below, else 'not distinguishable from noise'."""
    if a is None or b is None:
        return "not measured"
    if a[0] > b[1]:
        return "yes" if higher_better else "no"
    if a[1] < b[0]:
        return "no" if higher_better else "yes"
    return "not distinguishable from noise"


def _runs_by_method(ctx: Context, method: str) -> list[str]:
    return [n for n, i in _sft(ctx).items() if i["method"] == method]


def _stm_vs_gt_claim(ctx: Context) -> str:
    _, transfer, drift, _ = _evals(ctx)
    gt = next((n for n in _runs_by_method(ctx, "gt") if n in transfer), None)
    stm = next((n for n in _runs_by_method(ctx, "stm") if n in transfer), None)
    if not gt or not stm:
        return "STM vs ground truth: not measured (needs both runs evaluated)."
    bwt = _compare(_interval(transfer[stm], "bwt"), _interval(transfer[gt], "bwt"))
    kl_s, kl_g = drift.get(stm, {}).get("all", {}).get("kl"), drift.get(gt, {}).get("all", {}).get("kl")
    kl = ("not measured" if kl_s is None or kl_g is None else
          f"STM {kl_s:.4f} vs ground truth {kl_g:.4f} nats/token ({'smaller' if kl_s < kl_g else 'larger'} for STM; "
          "no interval across runs, one seed)")
    return (f"STM forgets less than ground truth (BWT, paired-bootstrap 95% CIs): {bwt}. Drift KL(base||tuned): {kl}.")


@generator("table02")
def table02(ctx: Context) -> Section:
    title = TITLES["table02"]
    df = _transfer_rows(ctx)
    if df.empty:
        return _missing("table02", title, NEEDS["table02"])
    _, _, _, rec = _evals(ctx)
    files = save_table(df, "table02_main", ctx.tables_dir,
                       f"Table 2 (kit, {ctx.scale(rec)}; {rec['results'].get('n_items')} items per task). TI/BWT in %, "
                       "95% paired-bootstrap CIs over items; BWT averages the non-target tasks with a non-zero "
                       "original accuracy; drift = mean per-token KL(p_base || p_tuned) on the base's own answers.")
    body = (f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n"
            + _paper_md(2, ["model", "target_task", "method", "metric", "value"], "metric != 'data_cost'"))
    return Section("table02", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files],
                   _stm_vs_gt_claim(ctx))


@generator("table03")
def table03(ctx: Context) -> Section:
    title = TITLES["table03"]
    names = [n for n, i in _sft(ctx).items() if i["method"] in ("stm", "random", "low", "gt", "quantile")]
    df = _transfer_rows(ctx, names)
    if df.empty or not {"random", "low"} & {_sft(ctx)[n]["method"] for n in df["run"]}:
        return _missing("table03", title, NEEDS["table03"])
    _, _, _, rec = _evals(ctx)
    files = save_table(df, "table03_masking_ablation", ctx.tables_dir, f"Table 3 (kit, {ctx.scale(rec)}).")
    _, transfer, drift, _ = _evals(ctx)
    stm = next((n for n in _runs_by_method(ctx, "stm") if n in transfer), None)
    parts = []
    for other in ("random", "low"):
        o = next((n for n in _runs_by_method(ctx, other) if n in transfer), None)
        if stm and o:
            verdict = _compare(_interval(transfer[stm], "bwt"), _interval(transfer[o], "bwt"))
            parts.append(f"masking high-PPL tokens forgets less than masking {other} ones (BWT): {verdict}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(
        3, ["config_as_printed", "pct_masked", "metric", "value_pct"])
    return Section("table03", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files],
                   "; ".join(parts) or "not measured")


@generator("table07")
def table07(ctx: Context) -> Section:
    title = TITLES["table07"]
    sft = _sft(ctx)
    if not sft:
        return _missing("table07", title, NEEDS["table07"])
    df = pd.DataFrame([{"run": n, "training data / method": i["label"], "finetune": i["finetune"],
                        "delta_w": i["delta_w"], "trained_tokens": i["trained_tokens"]} for n, i in sft.items()])
    rec = next(iter(sft.values()))["record"]
    definition = rec["results"].get("delta_w_definition", "")
    files = save_table(df, "table07_weight_norm", ctx.tables_dir, f"Table 7 (kit, {ctx.scale(rec)}). {definition}")
    gt = df[df["run"].isin(_runs_by_method(ctx, "gt"))]["delta_w"]
    stm = df[df["run"].isin(_runs_by_method(ctx, "stm"))]["delta_w"]
    claim = ("STM's update is smaller than ground truth's (||ΔW||): "
             + ("not measured" if gt.empty or stm.empty else
                f"{'yes' if stm.iloc[0] < gt.iloc[0] else 'no'} ({stm.iloc[0]:.3f} vs {gt.iloc[0]:.3f}; one seed)"))
    body = (f"*Kit ({ctx.scale(rec)}):* {definition}\n\n" + to_markdown(df) + "\n"
            + _paper_md(7, ["model", "training_data", "metric", "value"]))
    return Section("table07", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)


@generator("table12")
def table12(ctx: Context) -> Section:
    title = TITLES["table12"]
    acc, _, _, rec = _evals(ctx)
    if not acc:
        return _missing("table12", title, NEEDS["table12"])
    sft = _sft(ctx)
    rows = []
    for label, tasks in acc.items():
        row: dict[str, Any] = {"method": sft.get(label, {}).get("label", label), "run": label}
        for spec, sm in tasks.items():
            row[spec] = f"{sm['accuracy']:.3f} [{sm['ci_low']:.3f}, {sm['ci_high']:.3f}]"
        rows.append(row)
    df = pd.DataFrame(rows)
    files = save_table(df, "table12_raw_accuracy", ctx.tables_dir,
                       f"Table 12 (kit, {ctx.scale(rec)}): accuracy [95% bootstrap CI over items].")
    body = (f"*Kit ({ctx.scale(rec)}; {rec['results'].get('n_items')} items per task):*\n\n" + to_markdown(df)
            + "\n" + _paper_md(12, ["model", "target_task", "method", "eval_task", "accuracy"],
                               "model == 'Llama 3 8B Instruct'"))
    return Section("table12", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files],
                   "Raw accuracies; see Table 2 for the claims.")


@generator("fig04")
def fig04(ctx: Context) -> Section:
    from .plots import loss_curves

    title = TITLES["fig04"]
    sft = {n: i for n, i in _sft(ctx).items() if i["method"] in ("gt", "stm", "self_output")}
    if not sft:
        return _missing("fig04", title, NEEDS["fig04"])
    curves = {i["label"]: (pd.DataFrame(i["record"]["results"].get("train_losses", [])),
                           pd.DataFrame(i["record"]["results"].get("eval_losses", []))) for i in sft.values()}
    fig = loss_curves(curves, "Training and validation loss over epochs (target accuracy per epoch: not measured)")
    from .plots import save_figure

    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig04_convergence", ctx.figures_dir)]
    final = {lab: (float(c[0]["loss"].iloc[-1]) if not c[0].empty and "loss" in c[0] else None)
             for lab, c in curves.items()}
    gt, stm = final.get("Ground Truth"), final.get("STM")
    claim = ("STM's training loss ends far below ground truth's: "
             + ("not measured" if gt is None or stm is None else
                f"{'yes' if stm < 0.5 * gt else 'no'} (final step loss {stm:.3f} vs {gt:.3f})"))
    rec = next(iter(sft.values()))["record"]
    return Section("fig04", title, "made", f"Kit: {ctx.scale(rec)}. Panels: training loss per step, validation "
                   "loss per epoch; the paper's MBPP-accuracy-per-epoch panel needs per-epoch evaluations.",
                   files, claim)


@generator("fig13")
def fig13(ctx: Context) -> Section:
    from .plots import effective_rank_bars, save_figure

    title = TITLES["fig13"]
    sft = _sft(ctx)
    spectra = {i["label"]: pd.DataFrame(i["record"]["results"]["spectra"]) for i in sft.values()
               if i["record"]["results"].get("spectra")}
    if not spectra:
        return _missing("fig13", title, NEEDS["fig13"])
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
    """A table of evaluated sft runs grouped by one config field (finetune type, learning rate, regulariser)."""
    title = TITLES[ident]
    sft = _sft(ctx)
    df = _transfer_rows(ctx)
    if df.empty:
        return _missing(ident, title, NEEDS[ident])
    df.insert(2, key, [sft.get(r, {}).get(key) for r in df["run"]])
    df.insert(3, "delta_w", [sft.get(r, {}).get("delta_w") for r in df["run"]])
    if df[key].nunique() < 2:
        return _missing(ident, title, NEEDS[ident])
    _, _, _, rec = _evals(ctx)
    files = save_table(df, f"{ident}_{key}", ctx.tables_dir, f"{caption} (kit, {ctx.scale(rec)}).")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(int(ident[5:]), paper_cols)
    return Section(ident, title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files],
                   f"STM vs ground truth within each {key}: compare the BWT intervals of matching rows "
                   "(one seed per row).")


@generator("table04")
def table04(ctx: Context) -> Section:
    return _variant_table(ctx, "table04", "finetune", "Table 4: fine-tuning types with and without STM",
                          ["method", "metric", "value"])


@generator("table05")
def table05(ctx: Context) -> Section:
    return _variant_table(ctx, "table05", "learning_rate", "Table 5: learning-rate sweep",
                          ["model", "learning_rate", "method", "metric", "value"])


@generator("table08")
def table08(ctx: Context) -> Section:
    title = TITLES["table08"]
    reg = ctx.by_stage("regularization")
    if not reg:
        return _missing("table08", title, NEEDS["table08"])
    name, rec = next(iter(reg.items()))
    df = pd.DataFrame(rec["results"]["table08"]).drop(columns=["adapter_key"], errors="ignore")
    files = save_table(df, "table08_regularization", ctx.tables_dir,
                       f"Table 8 (kit, {ctx.scale(rec)}). {rec['results'].get('delta_w_definition', '')}")
    stm = df[df["method"] == "STM"]["delta_w"]
    gt = df[df["method"] != "STM"]["delta_w"]
    claim = ("STM changes the weights less than every regularised ground-truth run (||ΔW||): "
             + ("not measured" if stm.empty or gt.empty else
                f"{'yes' if float(stm.iloc[0]) < float(gt.min()) else 'no'} (STM {float(stm.iloc[0]):.3f}, "
                f"regularised runs {float(gt.min()):.3f}-{float(gt.max()):.3f}). BWT/TI of these adapters: see "
                "the evaluate run when the profile evaluates them (cpu-full)."))
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(
        8, ["config_as_printed", "metric", "value"])
    return Section("table08", title, "made", body, [str(Path(f).relative_to(ctx.root)) for f in files], claim)


@generator("fig05")
def fig05(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from .plots import color, save_figure, use_style

    title = TITLES["fig05"]
    sft = {n: i for n, i in _sft(ctx).items() if i["method"] in ("stm", "gt")}
    acc, _, _, rec = _evals(ctx)
    pts = [(i["masked_%"], t, sm["accuracy"], sm["ci_low"], sm["ci_high"]) for n, i in sft.items() if n in acc
           for t, sm in acc[n].items()]
    if len({p[0] for p in pts}) < 3:
        return _missing("fig05", title, NEEDS["fig05"])
    use_style()
    tasks = sorted({p[1] for p in pts})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        xs = sorted((p for p in pts if p[1] == t), key=lambda p: p[0])
        ax.errorbar([p[0] for p in xs], [p[2] for p in xs],
                    yerr=[[p[2] - p[3] for p in xs], [p[4] - p[2] for p in xs]], marker="o", color=color("STM"))
        ax.set_title(t)
        ax.set_xlabel("% tokens masked")
    axes[0][0].set_ylabel("accuracy")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig05_tau_sweep", ctx.figures_dir)]
    return Section("fig05", title, "made", f"Kit: {ctx.scale(rec)}; error bars are 95% bootstrap CIs over items.",
                   files, "Accuracy against the share of masked tokens; at this scale read the error bars first.")


@generator("fig14")
def fig14(ctx: Context) -> Section:
    from .plots import save_figure, singular_value_curves

    title = TITLES["fig14"]
    spectra = {i["label"]: pd.DataFrame(i["record"]["results"]["spectra"]) for i in _sft(ctx).values()
               if i["record"]["results"].get("spectra") and i["method"] in ("gt", "self_output", "rephrase", "stm")}
    if not spectra:
        return _missing("fig14", title, NEEDS["fig14"])
    fig = singular_value_curves(spectra, "q_proj")
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig14_singular_values", ctx.figures_dir)]
    return Section("fig14", title, "made", "Singular values of each layer's LoRA update (q_proj).", files,
                   "Illustration of the update spectra; compare with Figure 13's effective ranks.")


# ---------------------------------------------------------------- outputs this kit cannot make


@generator("table09")
def table09(ctx: Context) -> Section:
    return _unavailable("table09", "Table 9. IFEval after MBPP training",
                        "IFEval's prompts and checker are not shipped by any package the kit installs offline")


@generator("table10")
def table10(ctx: Context) -> Section:
    return _unavailable("table10", "Table 10. AdvBench refusal after MBPP training",
                        "AdvBench and a harmfulness judge are not available offline")


TITLES = {
    "table02": "Table 2. TI, BWT and data cost: Baseline, Self-Output, Rephrase, STM",
    "table03": "Table 3. Masking high/random/low-PPL tokens and the tau sweep (MBPP)",
    "table04": "Table 4. Full fine-tuning, LoRA and DoRA, with and without STM",
    "table05": "Table 5. Learning-rate sweep, Baseline vs STM",
    "table06": "Table 6. Self-BLEU of MATH samples after MBPP training",
    "table07": "Table 7. ||ΔW|| of the LoRA update per training-data source",
    "table08": "Table 8. Regularisation baselines vs STM (||ΔW||, BWT, TI)",
    "table11": "Table 11. OLMo 2 7B and Gemma 2 9B: Baseline vs STM",
    "table12": "Table 12. Raw accuracies on every task",
    "table13": "Table 13. MATH target: tau sweep",
    "table14": "Table 14. MATH target: STM, DPF, STM+DPF (Llama 3 8B)",
    "table15": "Table 15. Masking ablation and tau sweep (Llama 3 8B)",
    "table16": "Table 16. LoRA and DoRA with and without STM (Llama 3 8B)",
    "table17": "Table 17. Data-preparation cost per method",
    "table18": "Table 18. MATH target: STM, DPF, STM+DPF (Gemma 2 2B)",
    "table19": "Table 19. Continual learning: MATH then MBPP with STM",
    "table20": "Table 20. Self-Output correctness ablation (Llama 3 8B)",
    "table21": "Table 21. Self-Output correctness ablation (Gemma 2 2B)",
    **{f"fig{n:02d}": f"Figure {n}. {t}" for n, t in PAPER_FIGURES.items()},
}

NEEDS = {
    "table02": "fine-tuning runs (04_sft: ground truth, STM, Self-Output, Rephrase) evaluated by 05_evaluate",
    "table03": "STM high/random/low and tau-sweep runs evaluated by 05_evaluate",
    "table04": "full/LoRA/DoRA runs with and without STM, evaluated",
    "table05": "a learning-rate sweep of ground truth and STM runs, evaluated",
    "table06": "Self-BLEU of sampled MATH answers after MBPP training (not implemented yet)",
    "table07": "fine-tuning runs per training-data source (04_sft) with their ||ΔW||",
    "table08": "regularisation runs (06_regularization) evaluated beside STM",
    "table11": "the paper profile's OLMo 2 7B and Gemma 2 9B runs",
    "table12": "evaluations (05_evaluate) of the base model and the fine-tuned runs",
    "table13": "MATH-target tau-sweep runs, evaluated",
    "table14": "MATH-target STM, DPF and STM+DPF runs on Llama 3 8B (paper profile)",
    "table15": "the paper profile's Llama 3 8B ablation runs",
    "table16": "the paper profile's Llama 3 8B LoRA/DoRA runs",
    "table17": "data-generation runs (03_generate_data) with their costs",
    "table18": "MATH-target STM, DPF and STM+DPF runs on Gemma 2 2B (paper profile)",
    "table19": "a continual run: STM on MATH, then on MBPP, evaluated after each",
    "table20": "Self-Output correctness-ablation runs (03_generate_data + 04_sft), evaluated",
    "table21": "Self-Output correctness-ablation runs on Gemma 2 2B (paper profile)",
    "fig02": "fine-tuning runs on labels from several generators, evaluated (BWT vs label PPL)",
    "fig04": "ground truth, STM and Self-Output runs with per-epoch checkpoints, evaluated per epoch",
    "fig05": "a tau sweep evaluated on every task",
    "fig06": "a tau sweep on Gemma 2 2B (paper profile)",
    "fig07": "convergence runs on Gemma 2 2B (paper profile)",
    "fig11": "the weight-decay x dropout grid with checkpoints (06_regularization), evaluated on the target",
    "fig12": "the weight-decay x dropout grid, evaluated on a non-target task",
    "fig13": "LoRA runs per training-data source (ground truth, Self-Output, Rephrase) with weight analysis",
    "fig14": "LoRA runs per training-data source with singular values of their updates",
}

ORDER = [f"table{n:02d}" for n in range(1, 22)] + [f"fig{n:02d}" for n in range(1, 15)]


def build_sections(ctx: Context) -> list[Section]:
    """Run every generator; a generator that fails is reported as such, never hides the others."""
    out = []
    for ident in ORDER:
        fn = GENERATORS.get(ident)
        if fn is None:
            out.append(_missing(ident, TITLES[ident], NEEDS[ident]))
            continue
        try:
            out.append(fn(ctx))
        except Exception as exc:  # a broken generator is a bug to report, not a reason to lose the report
            out.append(Section(ident, TITLES.get(ident, ident), "missing",
                               f"The generator failed: `{type(exc).__name__}: {exc}`."))
    return out


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (||ΔW|| and KL(p||q) would split the row)."""
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(ctx: Context, sections: list[Section]) -> tuple[Path, Path]:
    """results/<profile>/REPORT.md and REPORT.html."""
    import mistune

    made = [s for s in sections if s.status == "made"]
    runs = ctx.runs
    models = sorted({r.get("config", {}).get("model", {}).get("name", "?") for r in runs.values()})
    lines = [
        f"# stmkit report: profile `{ctx.profile}`",
        "",
        "Everything below was computed by the kit's own runs (`runs/*/run.json`); numbers labelled *Paper* are "
        "the paper's printed values (arXiv 2501.14315), shipped in `stmkit/data/paper/`.",
        "",
        f"**Scale.** Model(s): {', '.join(models) or 'none'}. "
        + ("These are small-scale results, not comparable in absolute terms with the paper's 2B-9B models. "
           if ctx.profile != "paper" else ""),
        "",
        f"{len(made)} of {len(sections)} paper tables and figures made; the rest say what they need.",
        "",
        "| output | status | claim at this scale |",
        "|---|---|---|",
    ]
    lines += [f"| [{s.id}](#{s.id}) | {s.status} | {_cell(s.claim or s.body.split(chr(10))[0])} |" for s in sections]
    try:  # wall time of each notebook as the pipeline measured it (kernel start included)
        wall = json.loads((ctx.root / "pipeline_timings.json").read_text())
    except (OSError, json.JSONDecodeError):
        wall = {}
    if runs:
        lines += ["", "## Wall time per run", "",
                  "| run | stage | notebook wall time (s) | inside the notebook (s) |", "|---|---|---|---|"]
        lines += [f"| {n} | {r.get('stage')} | {wall.get(n, '-')} | {r.get('timings_s', {}).get('total', '-')} |"
                  for n, r in runs.items()]
        total = sum(float(v) for v in wall.values())
        if total:
            lines += ["", f"Total notebook wall time of the last executions: {total:.0f} s ({total / 60:.1f} min)."]
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


def build_report(root: Path, profile: str) -> list[Section]:
    """Build every table and figure from the recorded runs and write the report."""
    ctx = Context.load(root, profile)
    sections = build_sections(ctx)
    write_report(ctx, sections)
    return sections


MAP_START, MAP_END = "<!-- paper-map:start -->", "<!-- paper-map:end -->"


def paper_map(root: Path, profile: str = "cpu-demo") -> str:
    """The README's map: each paper table/figure -> notebooks, make target, output file, runtime on the profile."""
    from .pipeline import load_sweep

    profiles = ["cpu-demo", "cpu-full", "paper"]
    feeders = {p: load_sweep(p) for p in profiles}
    try:
        wall = json.loads((Path(root) / "pipeline_timings.json").read_text())
    except (OSError, json.JSONDecodeError):
        wall = {}
    sections = {s.id: s for s in build_sections(Context.load(root, profile))}
    lines = ["| paper | notebooks | command | output (results/cpu-demo/...) | cpu-demo wall time |",
             "|---|---|---|---|---|"]
    for ident in ORDER:
        where = next((p for p in profiles if any(ident in r.feeds for r in feeders[p])), None)
        runs = [r for r in feeders[where] if ident in r.feeds] if where else []
        nbs = ", ".join(sorted({f"`{r.notebook}`" for r in runs})) or "—"
        cmd = ("—" if where is None else f"`make reproduce ONLY={ident}`"
               + ("" if where == "cpu-demo" else f" `PROFILE={where}`"))
        sec = sections.get(ident)
        if sec and sec.status == "made":
            out = ", ".join(f"`{f}`" for f in sec.files if f.endswith((".png", ".csv"))) or "REPORT.md"
        elif sec and sec.status == "unavailable":
            out, cmd = "not available offline", "—"
        else:
            out = f"needs profile `{where}`" if where and where != profile else "—"
        secs = sum(wall.get(r.name, 0.0) for r in runs) if where == profile else None
        t = f"{secs / 60:.1f} min" if secs else "—"
        title = sections[ident].title if ident in sections else TITLES.get(ident, ident)
        if where is None and not (sec and sec.status == "unavailable"):
            out = "not built yet (the report says what it needs)"
        lines.append(f"| {_cell(title)} | {nbs} | {cmd} | {out} | {t} |")
    return "\n".join(lines)


def update_readme(readme: Path, root: Path, profile: str = "cpu-demo") -> None:
    """Rewrite the map between the markers in README.md from the recorded runs."""
    text = readme.read_text()
    if MAP_START not in text or MAP_END not in text:
        raise ValueError(f"{readme} has no {MAP_START} ... {MAP_END} markers")
    head, rest = text.split(MAP_START, 1)
    _, tail = rest.split(MAP_END, 1)
    atomic_write_text(readme, head + MAP_START + "\n" + paper_map(root, profile) + "\n" + MAP_END + tail)


if __name__ == "__main__":
    import sys

    from .experiment import REPO_ROOT, results_root

    update_readme(REPO_ROOT / "README.md", results_root(sys.argv[1] if len(sys.argv) > 1 else "cpu-demo"))
    print("README.md map updated")
