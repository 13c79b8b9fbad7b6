"""Every paper table and figure, built from the runs a profile recorded, and REPORT.md beside the paper's numbers.

Each generator reads run.json records (never retrains) and returns a Section: what the kit measured, the paper's
printed numbers next to it (from stmkit/data/paper, labelled as the paper's), the scale of the run, and a plain
sentence on whether the paper's claim holds here. A generator whose inputs the profile did not produce says so.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import atomic_write_text
from .catalogue import BY_ID, NEEDS, ORDER, TITLES
from .paper import paper_table
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
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # see _per_context

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

    def scope(self, model: str | None = None, target: str | None = None) -> Context:
        """The runs of one model and/or one target task (the paper's per-model tables), same output folders."""
        runs = {n: r for n, r in self.runs.items()
                if (model is None or model_of(r) == model) and (target is None or target_of(r) == target)}
        return Context(self.root, self.profile, runs)

    def models(self) -> list[str]:
        return sorted({m for r in self.runs.values() if (m := model_of(r))})

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
        trained = record.get("results", {}).get("training", {}).get("examples")  # what the run saw (n_train 0 = all)
        n = trained if trained is not None else data.get("n_train") or "all"
        return (f"model {cfg.get('model', {}).get('name')}, target {data.get('target')}, "
                f"{n} training examples, seed {cfg.get('seed')}")


def model_of(record: dict[str, Any]) -> str | None:
    """The model a run's results belong to: the paper model a rehearsal's stand-in takes the place of, or its own."""
    model = record.get("config", {}).get("model", {})
    return model.get("stands_in_for") or model.get("name")


def paper_scale(ctx: Context) -> bool:
    """Whether the runs are (or rehearse) the paper's models: then tables follow the paper's per-model layout."""
    return bool(set(ctx.models()) & {LLAMA, GEMMA2B, MISTRAL, OLMO, GEMMA9B})


def target_of(record: dict[str, Any]) -> str | None:
    return record.get("config", {}).get("data", {}).get("target")


# The paper's models as the kit's registry names them (configs/sweeps/paper.yaml).
LLAMA, GEMMA2B, MISTRAL, OLMO, GEMMA9B = ("llama-3-8b-instruct", "gemma-2-2b-it", "mistral-7b-instruct",
                                          "olmo-2-7b-instruct", "gemma-2-9b-it")

GENERATORS: dict[str, Callable[[Context], Section]] = {}


def generator(ident: str) -> Callable:
    def wrap(fn: Callable[[Context], Section]) -> Callable[[Context], Section]:
        GENERATORS[ident] = fn
        return fn

    return wrap


def _rel(ctx: Context, files: list[Any]) -> list[str]:
    return [str(Path(f).relative_to(ctx.root)) for f in files]


def _main(ctx: Context, paper_model: str | None = None, target: str | None = None) -> Context:
    """The runs a single-model table reads: the paper's model for it when the profile has that model's runs,
    otherwise every run (the offline profiles have one model); narrowed to `target` when runs for it exist."""
    sub = ctx.scope(paper_model) if paper_model and ctx.scope(paper_model).runs else ctx
    if target and sub.scope(target=target).runs:
        sub = sub.scope(target=target)
    return sub


def _paper_model(ctx: Context, ident: str, model: str, target: str | None, own: str,
                 make: Callable[[Context], Section]) -> Section:
    """An output the paper makes for one of its models: built from that model's runs, else 'missing' with a
    pointer to the output that holds this profile's own version."""
    sub = ctx.scope(model, target)
    if not sub.runs:
        return _missing(ident, TITLES[ident], f"{NEEDS[ident]}; this profile's own version is {own}")
    return make(sub)


def _missing(ident: str, title: str, needs: str) -> Section:
    return Section(ident, title, "missing", f"Not produced by this profile: needs {needs}.")


def _unavailable(ident: str) -> Section:
    return Section(ident, TITLES[ident], "unavailable", f"Not available in this kit: {BY_ID[ident].unavailable}.")


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
    title = TITLES["table01"]
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("table01", title, NEEDS["table01"])
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
    title = TITLES["fig01"]
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("fig01", title, NEEDS["fig01"])
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig01_ppl_tokens")
    body = (f"Kit: training response `{rec['results'].get('example_id')}` of the target task under "
            f"{ctx.scale(rec)}; the paper shows a MATH answer under Llama 3 8B Instruct. Interactive HTML: "
            f"`runs/{name}/fig01_tokens.html`.")
    return Section("fig01", title, "made", body, files, "Illustration; no claim to test.")


@generator("fig03")
def fig03(ctx: Context) -> Section:
    title = TITLES["fig03"]
    runs = ctx.by_stage("score")
    if not runs:
        return _missing("fig03", title, NEEDS["fig03"])
    name, rec = next(iter(runs.items()))
    files = ctx.gather_figure(name, "fig03_ppl_trace")
    n_sources = len(rec["results"].get("table01", []))
    claim = ("Ground truth is spikier than the model's own answers: see the figure "
             + ("(only ground truth was scored; no generated sets yet)." if n_sources < 2 else "(panels compared)."))
    return Section("fig03", title, "made", f"Kit: {ctx.scale(rec)}.", files, claim)


def _category_claim(df: pd.DataFrame) -> str:
    """Which category is over-represented among high-PPL tokens (per source when there are several)."""
    parts = []
    for source, g in df.groupby(df["source"] if "source" in df else pd.Series("GT", index=df.index)):
        pivot = g.pivot_table(index="category", columns="tokens", values="share")
        if {"all", "masked"} <= set(pivot.columns):
            more = (pivot["masked"] - pivot["all"]).to_dict()
            top = max(more, key=more.get)
            parts.append(f"{source}: {top} ({100 * more[top]:+.1f} points vs all tokens)")
    return "Over-represented among high-PPL tokens: " + "; ".join(parts)


def _category_section(ctx: Context, ident: str, paper_model: str, registry_name: str, substitute: int) -> Section:
    """Figures 8-10: token categories of all vs high-PPL tokens, one scoring model each in the paper.

    With the paper's model among the profile's mask runs, that model's run is used (MATH target first). The
    offline profiles have one real model: Figure 8 is its target-task data, and Figures 9-10 are the same analysis
    on other tasks' ground truth (02_mask_tokens `category_tasks`), labelled as substitutes.
    """
    title = TITLES[ident]
    runs = ctx.by_stage("mask")
    if not runs:
        return _missing(ident, title, NEEDS[ident])
    own = {n: r for n, r in runs.items() if model_of(r) == registry_name}
    if own:
        name, rec = sorted(own.items(), key=lambda kv: target_of(kv[1]) != "math")[0]
        df = pd.DataFrame(rec["results"]["categories"])
        files = ctx.gather_figure(name, "fig08_token_categories", f"{ident}_token_categories")
        note = f"*Kit ({ctx.scale(rec)}):*"
    elif ident == "fig08":
        name, rec = next(iter(runs.items()))
        df = pd.DataFrame(rec["results"]["categories"])
        files = ctx.gather_figure(name, "fig08_token_categories")
        note = f"*Kit ({ctx.scale(rec)}; the paper scores MATH with {paper_model}):*"
    else:
        name, rec = next(iter(runs.items()))
        extra = rec["results"].get("categories_by_task") or {}
        if len(extra) < substitute:
            return _missing(ident, title, f"mask runs of {paper_model} (profile `paper`), or, as an offline "
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
                   _category_claim(df) + ". The paper prints no numbers for these figures.")


for _ident, _model, _reg, _sub in [("fig08", "Llama 3 8B", LLAMA, 0), ("fig09", "Mistral 7B", MISTRAL, 1),
                                   ("fig10", "Gemma 2 2B", GEMMA2B, 2)]:
    GENERATORS[_ident] = (lambda i, m, r, k: (lambda ctx: _category_section(ctx, i, m, r, k)))(_ident, _model, _reg, _sub)


@generator("table17")
def table17(ctx: Context) -> Section:
    title = TITLES["table17"]
    gen = ctx.by_stage("generate")
    if not gen:
        return _missing("table17", title, NEEDS["table17"])
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


def _per_context(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
    """Compute once per Context what every generator reads (the run index, the merged evaluations, the profile):
    generators call these helpers many times each, inside loops. Callers must not mutate the result."""

    @functools.wraps(fn)
    def once(ctx: Context) -> Any:
        if fn.__name__ not in ctx.memo:
            ctx.memo[fn.__name__] = fn(ctx)
        return ctx.memo[fn.__name__]

    return once


@_per_context
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
            "weight_decay": cfg.get("training", {}).get("weight_decay", 0.0),
            "kl_coef": cfg.get("training", {}).get("kl_coef", 0.0),
            "label_ppl": res.get("label_ppl"), "final_train_loss": res.get("final_train_loss"),
            "masked_%": 100 * res.get("masking", {}).get("masked_share", 0.0),
            "trained_tokens": res.get("masking", {}).get("trained_tokens"),
            "delta_w": res.get("delta_w"), "record": rec,
        }
    return out


@_per_context
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


def _checkpoint_curves(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """{trained model label: [{step, epoch, task, accuracy, ci_low, ci_high, n}]} over the evaluate runs
    (05_evaluate with checkpoint_tasks); step 0 is the original model."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in ctx.by_stage("evaluate").values():
        out.update(rec["results"].get("checkpoint_accuracy") or {})
    return out


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
            "run": name, "method": info.get("label", name), "target": target_of(info.get("record", {})),
            "masked_%": info.get("masked_%"),
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


def _plain(info: dict[str, Any], tau: float = 2.5) -> bool:
    """A run with the paper's defaults apart from what a table varies: no weight decay or KL term, STM at tau."""
    res = info.get("record", {}).get("results", {})
    return (not info.get("weight_decay") and not info.get("kl_coef")
            and (info["method"] != "stm" or info.get("tau") == tau)
            and not res.get("init_run") and res.get("correctness") is None)


@_per_context
def main_setting(ctx: Context) -> tuple[float | None, str]:
    """(learning rate, fine-tuning type) of the profile the runs were made with: the main setting that the ablation
    tables vary. Read from the run records (`profile_setting`, the profile before each run's overrides), so editing
    the YAML after the runs changes nothing; records older than that field fall back to the profile as it is now."""
    recorded = {(s["learning_rate"], s["finetune"]) for r in ctx.runs.values() if (s := r.get("profile_setting"))}
    if len(recorded) == 1:
        return next(iter(recorded))
    if len(recorded) > 1:
        raise ValueError(f"results in {ctx.root} come from differently configured profiles {sorted(recorded)}; "
                         "rerun them with one profile (make reproduce) or report them from separate folders")
    from .config import load_profile

    try:
        prof = load_profile(ctx.profile)
    except Exception:  # a results folder of a profile that is not in configs/: no default to hold runs to
        return None, "lora"
    return prof.training.learning_rate, prof.training.finetune


def _main_setting(ctx: Context, info: dict[str, Any]) -> bool:
    """A plain run at the profile's learning rate and fine-tuning type (what Tables 2, 11, 14 and Figure 4 use)."""
    lr, finetune = main_setting(ctx)
    return _plain(info) and info["finetune"] == finetune and (lr is None or info["learning_rate"] == lr)


def _runs_by_method(ctx: Context, method: str) -> list[str]:
    """Training runs of a method, the plain LoRA ones (the paper's main setting) first."""
    sft = _sft(ctx)
    runs = [n for n, i in sft.items() if i["method"] == method]
    return sorted(runs, key=lambda n: (not _main_setting(ctx, sft[n]), n))


def _stm_vs_gt_claim(ctx: Context) -> str:
    """STM vs ground truth on BWT (intervals) and drift, per model and target when the profile has several."""
    groups = sorted({(model_of(i["record"]), target_of(i["record"])) for i in _sft(ctx).values()}, key=str)
    claims = []
    for model, target in groups:
        sub = ctx.scope(model, target)
        _, transfer, drift, _ = _evals(sub)
        gt = next((n for n in _runs_by_method(sub, "gt") if n in transfer), None)
        stm = next((n for n in _runs_by_method(sub, "stm") if n in transfer), None)
        if not gt or not stm:
            continue
        bwt = _compare(_interval(transfer[stm], "bwt"), _interval(transfer[gt], "bwt"))
        kl_s, kl_g = drift.get(stm, {}).get("all", {}).get("kl"), drift.get(gt, {}).get("all", {}).get("kl")
        order = "not measured" if kl_s is None or kl_g is None else (
            "smaller" if kl_s < kl_g else "larger" if kl_s > kl_g else "the same")
        kl = ("not measured" if kl_s is None or kl_g is None else
              f"STM {kl_s:.4f} vs ground truth {kl_g:.4f} nats/token ({order} for STM; no interval across runs, "
              "one seed)")
        where = f"{model}, {target}: " if len(groups) > 1 else ""
        claims.append(f"{where}STM forgets less than ground truth (BWT, paired-bootstrap 95% CIs): {bwt}. "
                      f"Drift KL(base||tuned): {kl}.")
    return " ".join(claims) or "STM vs ground truth: not measured (needs both runs evaluated)."


@generator("table02")
def table02(ctx: Context) -> Section:
    title = TITLES["table02"]
    sft = _sft(ctx)
    df = _transfer_rows(ctx, [n for n, i in sft.items() if i["method"] in ("gt", "stm", "self_output", "rephrase")
                              and _main_setting(ctx, i)])
    if df.empty:
        return _missing("table02", title, NEEDS["table02"])
    df["end_of_turn_masked_%"] = [100 * sft[r]["record"]["results"].get("masking", {}).get(
        "end_of_turn_masked_share", float("nan")) for r in df["run"]]
    df["target_answers_unfinished"] = [_unfinished(ctx, r) for r in df["run"]]
    _, _, _, rec = _evals(ctx)
    files = save_table(df, "table02_main", ctx.tables_dir,
                       f"Table 2 (kit, {ctx.scale(rec)}; {rec['results'].get('n_items')} items per task). TI/BWT in %, "
                       "95% paired-bootstrap CIs over items; BWT averages the non-target tasks with a non-zero "
                       "original accuracy; drift = mean per-token KL(p_base || p_tuned) on the base's own answers.")
    body = (f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n"
            + _paper_md(2, ["model", "target_task", "method", "metric", "value"], "metric != 'data_cost'"))
    claim = _stm_vs_gt_claim(ctx)
    stm = df[df["run"].isin(_runs_by_method(ctx, "stm")[:1])]
    if not stm.empty and stm["end_of_turn_masked_%"].iloc[0] > 50:
        claim += (f" Note: STM masked the end-of-turn token in {stm['end_of_turn_masked_%'].iloc[0]:.0f}% of the "
                  "training answers (the model finds the end of a bare ground-truth answer surprising), so it trains "
                  f"little on where to stop; its target answers left unfinished: {stm['target_answers_unfinished'].iloc[0]}"
                  " (see the column for the others).")
    return Section("table02", title, "made", body, _rel(ctx, files), claim)


def _unfinished(ctx: Context, run: str) -> str:
    """'k/n' target-task answers of a trained model that hit max_new_tokens (from 05_evaluate's item files)."""
    acc, _, _, _ = _evals(ctx)
    target = target_of(_sft(ctx).get(run, {}).get("record", {}))
    summary = next((sm for t, sm in acc.get(run, {}).items() if t.split(":")[0] == target), None)
    try:
        rows = [json.loads(line) for line in Path(summary["items_path"]).read_text().splitlines() if line.strip()]
    except (TypeError, KeyError, OSError, json.JSONDecodeError):
        return "n/a"
    flags = [r.get("finished") for r in rows if "finished" in r]
    return f"{flags.count(False)}/{len(flags)}" if flags else "n/a"


def _ablation(ctx: Context, ident: str, paper_n: int, paper_cols: list[str]) -> Section:
    """Tables 3 and 15: masking high vs random vs low-PPL tokens, and the tau sweep, as TI/BWT rows."""
    title = TITLES[ident]
    sft = _sft(ctx)
    names = [n for n, i in sft.items() if i["method"] in ("stm", "random", "low", "gt", "quantile")]
    df = _transfer_rows(ctx, names)
    if df.empty or not {"random", "low"} & {sft[n]["method"] for n in df["run"]}:
        return _missing(ident, title, NEEDS[ident])
    df.insert(2, "tau", [sft[n]["tau"] if sft[n]["method"] in ("stm", "low", "random") else None for n in df["run"]])
    _, transfer, _, rec = _evals(ctx)
    files = save_table(df, f"{ident}_masking_ablation", ctx.tables_dir, f"Table {paper_n} (kit, {ctx.scale(rec)}).")
    stm = next((n for n in _runs_by_method(ctx, "stm") if n in transfer and sft[n]["tau"] == 2.5), None)
    parts = []
    for other in ("random", "low"):
        o = next((n for n in _runs_by_method(ctx, other) if n in transfer), None)
        if stm and o:
            verdict = _compare(_interval(transfer[stm], "bwt"), _interval(transfer[o], "bwt"))
            parts.append(f"masking high-PPL tokens forgets less than masking {other} ones (BWT): {verdict}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(paper_n, paper_cols)
    return Section(ident, title, "made", body, _rel(ctx, files), "; ".join(parts) or "not measured")


@generator("table03")
def table03(ctx: Context) -> Section:
    return _ablation(_main(ctx, GEMMA2B, "mbpp"), "table03", 3,
                     ["config_as_printed", "pct_masked", "metric", "value_pct"])


@generator("table15")
def table15(ctx: Context) -> Section:
    return _paper_model(ctx, "table15", LLAMA, None, "Table 3", lambda sub: _ablation(
        sub, "table15", 15, ["config_as_printed", "target_task_inferred", "pct_masked", "metric", "value_pct"]))


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
    gt = df.set_index("run").loc[_runs_by_method(ctx, "gt"), "delta_w"] if _runs_by_method(ctx, "gt") else df[:0]
    stm = df.set_index("run").loc[_runs_by_method(ctx, "stm"), "delta_w"] if _runs_by_method(ctx, "stm") else df[:0]
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


def _convergence(ctx: Context, ident: str) -> Section:
    """Figures 4 and 7: per-epoch target accuracy (checkpoint evaluations), validation and training loss."""
    from .plots import convergence, save_figure

    title = TITLES[ident]
    sft = {n: i for n, i in _sft(ctx).items() if i["method"] in ("gt", "stm", "self_output") and _main_setting(ctx, i)}
    if not sft:
        return _missing(ident, title, NEEDS[ident])
    curves = {i["label"]: (pd.DataFrame(i["record"]["results"].get("train_losses", [])),
                           pd.DataFrame(i["record"]["results"].get("eval_losses", []))) for i in sft.values()}
    ckpt = _checkpoint_curves(ctx)
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
        files += _rel(ctx, save_table(data, f"{ident}_accuracy_per_checkpoint", ctx.tables_dir,
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
    return _convergence(_main(ctx, LLAMA, "mbpp"), "fig04")


@generator("fig07")
def fig07(ctx: Context) -> Section:
    return _paper_model(ctx, "fig07", GEMMA2B, "mbpp", "Figure 4", lambda sub: _convergence(sub, "fig07"))


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
    """Ground-truth and STM runs (evaluated) grouped by one config field: fine-tuning type or learning rate."""
    title = TITLES[ident]
    sft = _sft(ctx)
    lr, finetune = main_setting(ctx)
    plain = [n for n, i in sft.items() if i["method"] in ("gt", "stm") and _plain(i) and (
        i["finetune"] == finetune if key == "learning_rate" else (i["finetune"] != finetune or i["learning_rate"] == lr))]
    df = _transfer_rows(ctx, plain)
    if df.empty:
        return _missing(ident, title, NEEDS[ident])
    df.insert(2, key, [sft.get(r, {}).get(key) for r in df["run"]])
    df.insert(3, "delta_w", [sft.get(r, {}).get("delta_w") for r in df["run"]])
    if df[key].nunique() < 2:
        return _missing(ident, title, NEEDS[ident])
    df = df.sort_values([key, "method"], key=lambda c: c.astype(str)).reset_index(drop=True)
    _, transfer, drift, rec = _evals(ctx)
    files = save_table(df, f"{ident}_{key}", ctx.tables_dir, f"{caption} (kit, {ctx.scale(rec)}).")
    verdicts = []
    for value, group in df.groupby(key, sort=False):
        gt = next((r for r in group["run"] if sft[r]["method"] == "gt"), None)
        stm = next((r for r in group["run"] if sft[r]["method"] == "stm"), None)
        if gt and stm:
            bwt = _compare(_interval(transfer[stm], "bwt"), _interval(transfer[gt], "bwt"))
            kl_s, kl_g = (drift.get(r, {}).get("all", {}).get("kl") for r in (stm, gt))
            kl = "" if kl_s is None or kl_g is None else f", drift KL {kl_s:.3f} vs {kl_g:.3f}"
            verdicts.append(f"{key} {value}: STM forgets less (BWT) {bwt}{kl}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(int(ident[5:]), paper_cols)
    return Section(ident, title, "made", body, _rel(ctx, files),
                   "; ".join(verdicts) + " (one seed per row)" if verdicts else "no ground-truth/STM pair per setting")


@generator("table04")
def table04(ctx: Context) -> Section:
    return _variant_table(_main(ctx, GEMMA2B, "mbpp"), "table04", "finetune",
                          "Table 4: fine-tuning types with and without STM",
                          ["finetuning", "method", "metric", "value_pct"])


@generator("table16")
def table16(ctx: Context) -> Section:
    return _paper_model(ctx, "table16", LLAMA, "mbpp", "Table 4", lambda sub: _variant_table(
        sub, "table16", "finetune", "Table 16: LoRA and DoRA with and without STM (Llama 3 8B)",
        ["finetuning", "method", "metric", "value_pct"]))


@generator("table05")
def table05(ctx: Context) -> Section:
    return _variant_table(_main(ctx, None, "mbpp"), "table05", "learning_rate", "Table 5: learning-rate sweep",
                          ["model", "learning_rate", "method", "metric", "value_pct"])


def _regularization(ctx: Context) -> tuple[str, dict[str, Any], pd.DataFrame] | None:
    """(run name, record, Table 8 rows joined with each adapter's TI/BWT/drift and accuracy) of the first
    06_regularization run, or None. Adapters are evaluated by 05_evaluate as "<run>/<label>"."""
    reg = ctx.by_stage("regularization")
    if not reg:
        return None
    name, rec = next(iter(reg.items()))
    df = pd.DataFrame(rec["results"]["table08"]).drop(columns=["adapter_key"], errors="ignore")
    acc, transfer, drift, _ = _evals(ctx)
    labels = [f"{name}/{r}" for r in df["run"]]
    df["TI_%"] = [transfer.get(lab, {}).get("ti") for lab in labels]
    df["TI_95CI"] = [_fmt_ci(*(transfer.get(lab, {}).get(k) for k in ("ti", "ti_low", "ti_high"))) for lab in labels]
    df["BWT_%"] = [transfer.get(lab, {}).get("bwt") for lab in labels]
    df["BWT_95CI"] = [_fmt_ci(*(transfer.get(lab, {}).get(k) for k in ("bwt", "bwt_low", "bwt_high")))
                      for lab in labels]
    df["drift_KL"] = [drift.get(lab, {}).get("all", {}).get("kl") for lab in labels]
    df["evaluated"] = [lab in acc for lab in labels]
    # the paper's reading order first (config, ||ΔW||, TI/BWT, drift), then the training diagnostics
    first = ["run", "method", "weight_decay", "dropout", "kl_coef", "delta_w", "TI_%", "TI_95CI", "BWT_%", "BWT_95CI",
             "drift_KL"]
    head = [c for c in first if c in df.columns]
    return name, rec, df[head + [c for c in df.columns if c not in head]]


@generator("table08")
def table08(ctx: Context) -> Section:
    title = TITLES["table08"]
    found = _regularization(ctx)
    if found is None:
        return _missing("table08", title, NEEDS["table08"])
    name, rec, df = found
    files = save_table(df, "table08_regularization", ctx.tables_dir,
                       f"Table 8 (kit, {ctx.scale(rec)}). {rec['results'].get('delta_w_definition', '')} TI/BWT in %, "
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
            transfer = _evals(ctx)[1]
            s_int = _interval(transfer.get(f"{name}/{stm['run'].iloc[0]}", {}), "bwt")
            verdicts = {r: _compare(s_int, _interval(transfer.get(f"{name}/{r}", {}), "bwt")) for r in others["run"]}
            parts.append("STM forgets less than each regularised run (BWT): "
                         + "; ".join(f"{r}: {v}" for r, v in verdicts.items()))
        else:
            parts.append("BWT/TI of these adapters: not evaluated (add the run to a 05_evaluate train_run)")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(
        8, ["config_as_printed", "metric", "value"])
    return Section("table08", title, "made", body, _rel(ctx, files), ". ".join(parts) or "not measured")


def _reg_accuracy(ctx: Context, name: str, df: pd.DataFrame, which: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per (regularised run, step) with the accuracy on the target (which="target") or the mean over the
    non-target tasks (which="non-target"); reference levels for Original and STM."""
    acc, transfer, _, _ = _evals(ctx)
    curves = _checkpoint_curves(ctx)

    def value(tasks: dict[str, Any], target: str) -> float | None:
        keys = [t for t in tasks if (t.split(":")[0] == target) == (which == "target")]
        return float(sum(tasks[t]["accuracy"] for t in keys) / len(keys)) if keys else None

    target = target_of(next(iter(ctx.by_stage("regularization").values())))
    rows = []
    for _, r in df.iterrows():
        lab = f"{name}/{r['run']}"
        if lab not in acc:
            continue
        by_step: dict[Any, dict[str, Any]] = {}
        for c in curves.get(lab, []):
            by_step.setdefault(c["step"], {})[c["task"]] = c
        points = sorted(by_step.items(), key=lambda kv: kv[0])
        if not any(value(tasks, target) is not None for _, tasks in points):  # curves cover other tasks only
            points = [(None, acc[lab])]
        for step, tasks in points:
            v = value(tasks, target)
            if v is not None:
                rows.append({"run": r["run"], "method": r["method"], "weight_decay": r["weight_decay"],
                             "dropout": r["dropout"], "kl_coef": r["kl_coef"], "step": step, "accuracy": v})
    refs = {}
    if "Original" in acc and (v := value(acc["Original"], target)) is not None:
        refs["Original"] = v
    return pd.DataFrame(rows), refs


def _parallel(ident: str, ctx: Context, which: str) -> Section:
    """Figures 11-12: one line per regularised setting across weight decay, dropout, step and accuracy."""
    import matplotlib.pyplot as plt

    from .plots import color, save_figure, use_style

    title = TITLES[ident]
    found = _regularization(ctx)
    if found is None:
        return _missing(ident, title, NEEDS[ident])
    name, rec, df = found
    pts, refs = _reg_accuracy(ctx, name, df, which)
    if pts.empty:
        evaluated = any(f"{name}/{r}" in _evals(ctx)[0] for r in df["run"])
        return _missing(ident, title, NEEDS[ident] + (f" (run `{name}` has not been evaluated: add it to a 05_evaluate "
                        "train_run)" if not evaluated else " (its evaluation has no such task)"))
    if pts["step"].isna().all():
        pts["step"] = rec["config"].get("training", {}).get("max_steps") or "final"
    axes_cols = ["weight_decay", "dropout", "step", "accuracy"]
    use_style()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    num = pts[axes_cols].apply(pd.to_numeric, errors="coerce")
    lo, hi = num.min(), num.max()
    span = (hi - lo).replace(0, 1.0)
    norm = (num - lo) / span
    seen: set[str] = set()
    for i, row in pts.iterrows():  # one line per setting and checkpoint; one legend entry per setting
        ys = [0.5 if pd.isna(v) else v for v in norm.loc[i]]
        ax.plot(range(len(axes_cols)), ys, marker="o", color=color(row["method"]), alpha=0.8,
                label=None if row["run"] in seen else f"{row['run']}")
        seen.add(row["run"])
    for lab, v in refs.items():
        ax.axhline((v - lo["accuracy"]) / span["accuracy"], color=color(lab), ls="--", lw=1, label=f"{lab} ({v:.3f})")
    ax.set_xticks(range(len(axes_cols)), [f"{c}\n[{lo[c]:g}, {hi[c]:g}]" if not pd.isna(lo[c]) else c
                                          for c in axes_cols])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    what = "target-task accuracy" if which == "target" else "mean non-target accuracy"
    ax.set_title(f"Regularisation grid: {what} (each axis scaled to its range)", fontsize=10)
    fig.tight_layout()
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, f"{ident}_regularization_{which}", ctx.figures_dir)]
    table = save_table(pts, f"{ident}_regularization_{which}", ctx.tables_dir, f"Figure {int(ident[3:])} data (kit).")
    best = pts.loc[pts["accuracy"].idxmax()]
    steps = "per checkpoint" if pts["step"].nunique() > 1 else "at the final step only (no checkpoints evaluated)"
    claim = (f"Highest {what}: {best['run']} ({best['accuracy']:.3f}); Original {refs.get('Original', float('nan')):.3f}. "
             f"Accuracy {steps}; at this scale read the intervals in Table 8/12 before ranking.")
    return Section(ident, title, "made", f"Kit: {ctx.scale(rec)}.", files + _rel(ctx, table), claim)


@generator("fig11")
def fig11(ctx: Context) -> Section:
    return _parallel("fig11", ctx, "target")


@generator("fig12")
def fig12(ctx: Context) -> Section:
    return _parallel("fig12", ctx, "non-target")


def _tau_points(ctx: Context) -> list[dict[str, Any]]:
    """Evaluated STM runs (and ground truth as 0% masked) on the tau axis: one row per run and task."""
    sft = {n: i for n, i in _sft(ctx).items() if i["method"] in ("stm", "gt") and i["finetune"] == "lora"
           and not i.get("weight_decay") and not i.get("kl_coef")}
    acc, _, _, _ = _evals(ctx)
    return [{"run": n, "model": model_of(i["record"]), "target": target_of(i["record"]),
             "tau": i["tau"] if i["method"] == "stm" else None, "masked_%": i["masked_%"], "task": t,
             "accuracy": sm["accuracy"], "ci_low": sm["ci_low"], "ci_high": sm["ci_high"]}
            for n, i in sft.items() if n in acc for t, sm in acc[n].items()]


def _tau_panels(ctx: Context, ident: str) -> Section:
    """Figures 5 and 6: accuracy on each task against the share of tokens STM masked (the tau sweep)."""
    import matplotlib.pyplot as plt

    from .plots import color, save_figure, use_style

    title = TITLES[ident]
    pts = _tau_points(ctx)
    if len({p["masked_%"] for p in pts}) < 3:
        return _missing(ident, title, NEEDS[ident])
    df = pd.DataFrame(pts)
    use_style()
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        xs = df[df["task"] == t].sort_values("masked_%")
        ax.errorbar(xs["masked_%"], xs["accuracy"], yerr=[xs["accuracy"] - xs["ci_low"], xs["ci_high"] - xs["accuracy"]],
                    marker="o", color=color("STM"), capsize=2)
        ax.set_title(t + (" (target)" if t.split(":")[0] == xs["target"].iloc[0] else ""))
        ax.set_xlabel("% tokens masked")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, f"{ident}_tau_sweep", ctx.figures_dir)]
    files += _rel(ctx, save_table(df, f"{ident}_tau_sweep", ctx.tables_dir, f"Figure {int(ident[3:])} data (kit)."))
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
    return _tau_panels(_main(ctx, LLAMA, "math" if paper_scale(ctx) else None), "fig05")


@generator("fig06")
def fig06(ctx: Context) -> Section:
    return _paper_model(ctx, "fig06", GEMMA2B, "math", "Figure 5", lambda sub: _tau_panels(sub, "fig06"))


@generator("table13")
def table13(ctx: Context) -> Section:
    title = TITLES["table13"]
    df = pd.DataFrame(_tau_points(ctx.scope(target="math")))
    if df.empty or df["masked_%"].nunique() < 2:
        return _missing("table13", title, NEEDS["table13"])
    df["cell"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(df["accuracy"], df["ci_low"], df["ci_high"],
                                                                         strict=True)]
    wide = df.pivot_table(index=["model", "run", "tau", "masked_%"], columns="task", values="cell", aggfunc="first",
                          dropna=False).reset_index().sort_values(["model", "masked_%"])
    files = save_table(wide, "table13_math_tau_sweep", ctx.tables_dir,
                       "Table 13 (kit): MATH target, tau sweep; accuracy [95% CI] per task (tau empty = ground truth).")
    body = "*Kit:*\n\n" + to_markdown(wide) + "\n" + _paper_md(13, ["model", "method", "tau", "pct_masked",
                                                                       "eval_task", "accuracy_pct"])
    return Section("table13", title, "made", body, _rel(ctx, files),
                   "Accuracy per tau on every task; compare the target column with the non-target ones.")


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


# ---------------------------------------------------------------- more models, DPF, continual, correctness, diversity


def _accuracy_rows(ctx: Context, names: list[str], extra: Callable[[str], dict[str, Any]] | None = None,
                   original: bool = True) -> pd.DataFrame:
    """One row per trained model (and the original): accuracy [95% CI] per task, plus extra columns."""
    acc, _, _, _ = _evals(ctx)
    sft = _sft(ctx)
    rows = []
    for name in (["Original"] if original else []) + names:
        if name not in acc:
            continue
        info = sft.get(name, {})
        row: dict[str, Any] = {"run": name, "method": info.get("label", name),
                               **(extra(name) if extra and name in sft else {})}
        for spec, sm in acc[name].items():
            row[spec] = f"{sm['accuracy']:.3f} [{sm['ci_low']:.3f}, {sm['ci_high']:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


@generator("table11")
def table11(ctx: Context) -> Section:
    title = TITLES["table11"]
    frames = []
    for model in (OLMO, GEMMA9B):
        sub = ctx.scope(model, "mbpp")
        sft = _sft(sub)
        df = _transfer_rows(sub, [n for n, i in sft.items() if i["method"] in ("gt", "stm") and _main_setting(sub, i)])
        if not df.empty:
            frames.append(df.assign(model=model))
    if not frames:
        return _missing("table11", title, NEEDS["table11"])
    df = pd.concat(frames, ignore_index=True)
    files = save_table(df, "table11_more_models", ctx.tables_dir, "Table 11 (kit): TI/BWT in %, 95% paired-bootstrap CIs.")
    claims = []
    for model in df["model"].unique():
        sub = ctx.scope(model, "mbpp")
        claims.append(f"{model}: " + _stm_vs_gt_claim(sub).split(" Drift")[0])
    body = "*Kit:*\n\n" + to_markdown(df) + "\n" + _paper_md(11, ["model", "method", "tau", "metric", "value_pct"])
    return Section("table11", title, "made", body, _rel(ctx, files), " ".join(claims))


def _dpf_table(ctx: Context, ident: str, model: str, paper_n: int) -> Section:
    """Tables 14 and 18: MATH target, STM vs DPF vs STM+DPF (share of tokens filtered, accuracy per task)."""
    title = TITLES[ident]
    sub = ctx.scope(model, "math") if ctx.scope(model).runs else _main(ctx)
    sft = _sft(sub)
    names = [n for n, i in sft.items() if i["method"] in ("gt", "stm", "dpf", "stm+dpf") and _main_setting(sub, i)]
    if not any(sft[n]["method"] in ("dpf", "stm+dpf") for n in names):
        return _missing(ident, title, NEEDS[ident])
    df = _accuracy_rows(sub, names, lambda n: {"tau": sft[n]["tau"], "filtered_%": sft[n]["masked_%"]})
    if df.empty:
        return _missing(ident, title, NEEDS[ident] + " (the DPF runs are not evaluated yet)")
    _, transfer, _, rec = _evals(sub)
    df["BWT_95CI"] = [_fmt_ci(*(transfer.get(r, {}).get(k) for k in ("bwt", "bwt_low", "bwt_high"))) for r in df["run"]]
    files = save_table(df, f"{ident}_dpf", ctx.tables_dir,
                       f"Table {paper_n} (kit, {sub.scale(rec)}): accuracy [95% CI]; filtered_% = share of response "
                       "tokens masked; DPF masks tokens whose PPL rose under the ground-truth adapter.")
    stm = next((n for n in _runs_by_method(sub, "stm") if n in transfer), None)
    parts = []
    for other in ("dpf", "stm+dpf"):
        o = next((n for n in _runs_by_method(sub, other) if n in transfer), None)
        if stm and o:
            parts.append(f"STM forgets less than {other.upper()} (BWT): "
                         f"{_compare(_interval(transfer[stm], 'bwt'), _interval(transfer[o], 'bwt'))}")
    scope = "" if model in sub.models() else f" The paper's table is {model}; this profile's model stands in."
    body = (f"*Kit ({sub.scale(rec)}):*{scope}\n\n" + to_markdown(df) + "\n"
            + _paper_md(paper_n, ["method", "tau", "pct_filtered", "eval_task", "accuracy_pct"]))
    return Section(ident, title, "made", body, _rel(ctx, files), "; ".join(parts) or "no STM/DPF pair evaluated")


@generator("table14")
def table14(ctx: Context) -> Section:
    return _dpf_table(ctx, "table14", LLAMA, 14)


@generator("table18")
def table18(ctx: Context) -> Section:
    return _paper_model(ctx, "table18", GEMMA2B, None, "Table 14", lambda _: _dpf_table(ctx, "table18", GEMMA2B, 18))


@generator("table19")
def table19(ctx: Context) -> Section:
    title = TITLES["table19"]
    sft = _sft(ctx)
    acc, _, _, rec = _evals(ctx)
    chains = [(i["record"]["results"]["init_run"], n) for n, i in sft.items() if i["record"]["results"].get("init_run")]
    chains = [(a, b) for a, b in chains if a in acc and b in acc and "Original" in acc]
    if not chains:
        return _missing("table19", title, NEEDS["table19"])
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
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(
        19, ["step", "training_task", "eval_task", "accuracy"])
    return Section("table19", title, "made", body, _rel(ctx, files), claim)


def _correctness(ctx: Context, ident: str, paper_n: int) -> Section:
    """Tables 20-21: Self-Output training sets at several correctness levels, accuracy on every task."""
    title = TITLES[ident]
    sft = _sft(ctx)
    names = [n for n, i in sft.items() if i["record"]["results"].get("correctness") is not None] + \
        [n for n in _runs_by_method(ctx, "gt")[:1]]
    if not any(sft[n]["record"]["results"].get("correctness") is not None for n in names):
        return _missing(ident, title, NEEDS[ident])
    df = _accuracy_rows(ctx, names, lambda n: {
        "correctness_%": (None if sft[n]["record"]["results"].get("correctness") is None
                          else 100 * sft[n]["record"]["results"]["correctness"]),
        "trained_tokens": sft[n]["trained_tokens"]})
    if len(df) <= 1:
        return _missing(ident, title, NEEDS[ident] + " (the correctness runs are not evaluated yet)")
    _, transfer, _, rec = _evals(ctx)
    df["BWT_95CI"] = [_fmt_ci(*(transfer.get(r, {}).get(k) for k in ("bwt", "bwt_low", "bwt_high"))) for r in df["run"]]
    files = save_table(df, f"{ident}_correctness", ctx.tables_dir,
                       f"Table {paper_n} (kit, {ctx.scale(rec)}): accuracy [95% CI] after training on Self-Output "
                       "sets with the given share of correct answers.")
    levels = sorted((sft[n]["record"]["results"]["correctness"], n) for n in names if n in transfer
                    and sft[n]["record"]["results"].get("correctness") is not None)
    claim = "not measured"
    if len(levels) >= 2:
        lo_n, hi_n = levels[0][1], levels[-1][1]
        claim = (f"Self-Output data forgets little whatever its correctness (BWT, {levels[0][0]:.0%} vs "
                 f"{levels[-1][0]:.0%} correct): "
                 f"{_compare(_interval(transfer[lo_n], 'bwt'), _interval(transfer[hi_n], 'bwt'))}")
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(
        paper_n, ["method", "rate_as_printed", "trained_tokens", "eval_task", "accuracy"])
    return Section(ident, title, "made", body, _rel(ctx, files), claim)


@generator("table20")
def table20(ctx: Context) -> Section:
    return _correctness(_main(ctx, LLAMA, "mbpp"), "table20", 20)


@generator("table21")
def table21(ctx: Context) -> Section:
    return _paper_model(ctx, "table21", GEMMA2B, "mbpp", "Table 20", lambda sub: _correctness(sub, "table21", 21))


@generator("table06")
def table06(ctx: Context) -> Section:
    title = TITLES["table06"]
    rows = {}
    for rec in ctx.by_stage("evaluate").values():
        rows.update(rec["results"].get("self_bleu") or {})
    if not rows:
        return _missing("table06", title, NEEDS["table06"])
    _, transfer, _, rec = _evals(ctx)
    sft = _sft(ctx)
    df = pd.DataFrame([{"run": lab, "method": sft.get(lab, {}).get("label", lab), "task": r.get("task"),
                        "questions": r.get("n_items"), "samples_each": r.get("n_samples"),
                        "self_bleu": r.get("self_bleu"), "self_bleu_sd": r.get("self_bleu_sd"),
                        "sample_accuracy": r.get("accuracy"),
                        "BWT_95CI": _fmt_ci(*(transfer.get(lab, {}).get(k) for k in ("bwt", "bwt_low", "bwt_high")))}
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
    body = f"*Kit ({ctx.scale(rec)}):*\n\n" + to_markdown(df) + "\n" + _paper_md(6, ["method", "learning_rate",
                                                                                        "metric", "value"])
    return Section("table06", title, "made", body, _rel(ctx, files), claim)


@generator("fig02")
def fig02(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from .plots import save_figure, use_style

    title = TITLES["fig02"]
    sft = _sft(ctx)
    _, transfer, _, rec = _evals(ctx)
    pts = [{"run": n, "model": model_of(i["record"]), "method": i["label"], "label_ppl": i["label_ppl"],
            "bwt": transfer[n].get("bwt"), "bwt_low": transfer[n].get("bwt_low"),
            "bwt_high": transfer[n].get("bwt_high"), "final_train_loss": i["final_train_loss"]}
           for n, i in sft.items() if i["method"] in ("gt", "self_output", "rephrase") and n in transfer
           and i.get("label_ppl") is not None
           and _main_setting(ctx, {**i, "record": {"results": {
               k: v for k, v in i["record"]["results"].items() if k != "correctness"}}})]
    if len({p["method"].split(" ")[0] for p in pts}) < 2:  # label sources, not one source's fine-tuning variants
        return _missing("fig02", title, NEEDS["fig02"])
    pts = [p for p in pts if p["bwt"] is not None]
    if len({p["method"].split(" ")[0] for p in pts}) < 2:
        return _missing("fig02", title, "a defined BWT: it is a change relative to the base model's accuracy on the "
                                        "non-target tasks, and the base model scored 0 on all of them (stand-ins do)")
    df = pd.DataFrame(pts)
    use_style()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(df["label_ppl"], df["bwt"], yerr=[df["bwt"] - df["bwt_low"], df["bwt_high"] - df["bwt"]], fmt="none",
                ecolor="#bbbbbb", zorder=1)
    sc = ax.scatter(df["label_ppl"], df["bwt"], c=df["final_train_loss"], cmap="viridis", zorder=2, s=40)
    for _, r in df.iterrows():
        ax.annotate(r["method"], (r["label_ppl"], r["bwt"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="final training loss")
    ax.set_xlabel("mean sequence PPL of the training labels (base model)")
    ax.set_ylabel("BWT (%)")
    fig.tight_layout()
    files = [str(p.relative_to(ctx.root)) for p in save_figure(fig, "fig02_ppl_vs_bwt", ctx.figures_dir)]
    files += _rel(ctx, save_table(df, "fig02_ppl_vs_bwt", ctx.tables_dir, "Figure 2 data (kit)."))
    rho = df["label_ppl"].rank().corr(df["bwt"].rank()) if len(df) >= 3 else None  # Spearman
    claim = ("Lower-PPL labels forget less (Spearman correlation of label PPL with BWT, negative = the paper's "
             f"trend): {'n/a (fewer than 3 points)' if rho is None else 'undefined (no variation)' if pd.isna(rho) else f'{rho:+.2f} over {len(df)} runs'}; "
             "the BWT intervals overlap at this scale, so treat the trend as illustrative.")
    return Section("fig02", title, "made", f"Kit: {ctx.scale(rec)}.", files, claim)


# ---------------------------------------------------------------- outputs this kit cannot make


@generator("table09")
def table09(ctx: Context) -> Section:
    return _unavailable("table09")


@generator("table10")
def table10(ctx: Context) -> Section:
    return _unavailable("table10")




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
    stand_ins = sorted({f"{m['name']} for {m['stands_in_for']}" for r in runs.values()
                        if (m := r.get("config", {}).get("model", {})).get("stands_in_for")})
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
    lines += [_verdict_markdown(ctx, ", ".join(models) or "no model"), ""]
    curve = _forgetting_curve_markdown(ctx)
    if curve:
        lines += [curve, ""]
    lines += [
        f"{len(made)} of {len(sections)} paper tables and figures made; the rest say what they need.",
        "",
        "| output | status | claim at this scale |",
        "|---|---|---|",
    ]
    lines += [f"| [{s.id}](#{s.id}) | {s.status} | {_cell(s.claim or s.body.split(chr(10))[0])} |" for s in sections]
    wall, computed = _wall_times(ctx.root)  # as the pipeline measured them (kernel start included)
    if runs:
        lines += ["", "## Wall time per run", "",
                  "Notebook wall time as `make reproduce` measured it: at the last execution that computed the run's "
                  "artifacts (made new cache entries), and at its last execution (a rerun reads the cache back).", "",
                  "| run | stage | computing (s) | last execution (s) | inside the notebook, last (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {r.get('stage')} | {computed.get(n, '-')} | {wall.get(n, '-')} | "
                  f"{r.get('timings_s', {}).get('total', '-')} |" for n, r in runs.items()]
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


def _forgetting_curve_markdown(ctx: Context) -> str:
    """"Where forgetting appears" when an evaluation scored training checkpoints (profile cpu-curve), else ""."""
    import matplotlib.pyplot as plt

    from . import forgetting_curve
    from .plots import forgetting_curve as curve_figure
    from .plots import save_figure

    evaluate = list(ctx.by_stage("evaluate").values())
    if not forgetting_curve.has_checkpoints(evaluate):  # the usual case: nothing to read
        return ""
    final_steps = {name: info["record"]["results"].get("training", {}).get("steps") for name, info in _sft(ctx).items()}
    try:
        rows = forgetting_curve.curve_rows(evaluate, {k: v for k, v in final_steps.items() if v})
    except Exception as exc:  # a bug or a moved results folder: say so in its place, never lose the report
        return f"## Where forgetting appears\n\nNot computed: `{type(exc).__name__}: {exc}`."
    table = pd.DataFrame(rows)
    save_table(table, "forgetting_curve", ctx.tables_dir, "Measures over training steps (profile cpu-curve).")
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


def _verdict_markdown(ctx: Context, model: str) -> str:
    """"Verdict at this scale" (stmkit.report_verdict); a failure is reported in its place, never hides the rest."""
    from . import report_verdict

    try:
        evaluate = list(ctx.by_stage("evaluate").values())
        score = next(iter(ctx.by_stage("score").values()), {})
        generate = next(iter(ctx.by_stage("generate").values()), {})
        data = report_verdict.collect(_sft(ctx), evaluate, score, lambda info: _main_setting(ctx, info), generate)
        text = report_verdict.section(data, ctx.tables_dir, model)
    except Exception as exc:  # a bug to report, not a reason to lose the report
        return f"## Verdict at this scale\n\nThe verdict could not be computed: `{type(exc).__name__}: {exc}`."
    try:
        mask_runs = ctx.by_stage("mask")
        mask_run = next(iter(sorted(mask_runs)), None)
        plane = ctx.gather_figure(mask_run, "probability_entropy_plane") if mask_run else []
        cats = ctx.gather_figure(mask_run, "categories_confident_conflicts") if mask_run else []
        quadrants = mask_runs[mask_run].get("results", {}).get("entropy_quadrants") if mask_run else None
        siblings = report_verdict.siblings_section(data, ctx.tables_dir, ctx.figures_dir,
                                                   plane[0] if plane else None, quadrants,
                                                   cats[0] if cats else None)
    except Exception as exc:
        siblings = f"## Beyond the paper: STM and its siblings\n\nNot computed: `{type(exc).__name__}: {exc}`."
    return text + ("\n\n" + siblings if siblings else "")


def build_report(root: Path, profile: str) -> list[Section]:
    """Build every table and figure from the recorded runs and write the report."""
    ctx = Context.load(root, profile)
    sections = build_sections(ctx)
    write_report(ctx, sections)
    return sections


MAP_START, MAP_END = "<!-- paper-map:start -->", "<!-- paper-map:end -->"


def _wall_times(root: Path) -> tuple[dict[str, float], dict[str, float]]:
    """({run: s} at the last execution, {run: s} at the last execution that computed artifacts) from the pipeline."""
    from .pipeline import computed_timings_path, read_json, timings_path

    return read_json(timings_path(root)), read_json(computed_timings_path(root))


def paper_map(root: Path, profile: str = "cpu-demo") -> str:
    """The README's map: each paper table/figure -> notebooks, make target, output file, runtime on the profile."""
    from .pipeline import load_sweep, resolve_sweep

    # (profile, sweep): the first that feeds an output is where the map sends the reader.
    feeders = [(p, sw, load_sweep(p, resolve_sweep(sw))) for p, sw in
               (("cpu-demo", None), ("cpu-demo", "cpu-demo-extra"), ("cpu-full", None), ("paper", None))]
    last, computed = _wall_times(Path(root))
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
        lines.append(f"| {_cell(title)} | {nbs} | {cmd} | {out} | {t} |")
    return "\n".join(lines)


VERDICT_START, VERDICT_END = "<!-- verdict:start -->", "<!-- verdict:end -->"
SIBLINGS_START, SIBLINGS_END = "<!-- siblings:start -->", "<!-- siblings:end -->"


def _between(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{where} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + body + "\n" + end + tail


def update_readme(readme: Path, root: Path, profile: str = "cpu-demo", paper_map_too: bool = True) -> None:
    """Rewrite the paper map, and the verdict and siblings tables where README.md has their markers, from the
    recorded runs. paper_map_too=False leaves the map (and its cold wall times) alone: after a warm or partial run."""
    text = readme.read_text()
    if paper_map_too:
        text = _between(text, MAP_START, MAP_END, paper_map(root, profile), readme)
    for start, end, name in ((VERDICT_START, VERDICT_END, "verdict"), (SIBLINGS_START, SIBLINGS_END, "siblings")):
        table_md = Path(root) / "tables" / f"{name}.md"
        if start in text and table_md.is_file():
            text = _between(text, start, end, table_md.read_text().strip(), readme)
    atomic_write_text(readme, text)


if __name__ == "__main__":
    import argparse

    from .experiment import REPO_ROOT, results_root

    parser = argparse.ArgumentParser(prog="python -m stmkit.report",
                                     description="Rebuild REPORT.md and update README.md from the recorded runs.")
    parser.add_argument("profile", nargs="?", default="cpu-demo")
    parser.add_argument("--tables-only", action="store_true",
                        help="update only README's verdict and siblings tables, not the paper map's wall times "
                             "(after a warm or partial run, whose times are not the cold ones the map quotes)")
    args = parser.parse_args()
    root = results_root(args.profile)
    build_report(root, args.profile)
    update_readme(REPO_ROOT / "README.md", root, args.profile, paper_map_too=not args.tables_only)
    print("REPORT.md rebuilt; README.md " + ("tables" if args.tables_only else "map and tables") + " updated")
