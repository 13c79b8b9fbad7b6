"""Which recorded runs each report output reads, and the rows they give.

A Context holds one profile's run.json records. The helpers here pick runs by stage, model, target and method (the
paper's main setting first) and join the training and evaluation records into the rows the tables print.
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

from ..config import load_profile
from ..records import RunRecord


@dataclass
class Context:
    """The recorded runs of one profile and where to write."""

    root: Path
    profile: str
    runs: dict[str, RunRecord]
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # see per_context

    @classmethod
    def load(cls, root: Path, profile: str) -> Context:
        runs = {}
        for path in sorted(Path(root).glob("runs/*/run.json")):
            try:
                runs[path.parent.name] = RunRecord.load(path)
            except json.JSONDecodeError as e:  # written atomically, so a broken one was edited or copied by hand
                print(f"WARNING: {path} is not valid JSON ({e}); the report leaves that run out")
        return cls(Path(root), profile, runs)

    def by_stage(self, stage: str) -> dict[str, RunRecord]:
        return {n: r for n, r in self.runs.items() if r.stage == stage}

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

    def scale(self, record: RunRecord | None) -> str:
        cfg = record.config if record else {}
        data = cfg.get("data", {})
        # what the run saw (n_train 0 = all)
        trained = record.results.training.get("examples") if record and record.stage == "sft" else None
        n = trained if trained is not None else data.get("n_train") or "all"
        return (f"model {cfg.get('model', {}).get('name')}, target {data.get('target')}, "
                f"{n} training examples, seed {cfg.get('seed')}")


def model_of(record: RunRecord | None) -> str | None:
    """The model a run's results belong to: the paper model a rehearsal's stand-in takes the place of, or its own."""
    model = record.model if record else {}
    return model.get("stands_in_for") or model.get("name")


def paper_scale(ctx: Context) -> bool:
    """Whether the runs are (or rehearse) the paper's models: then tables follow the paper's per-model layout."""
    return bool(set(ctx.models()) & {LLAMA, GEMMA2B, MISTRAL, OLMO, GEMMA9B})


def target_of(record: RunRecord | None) -> str | None:
    return record.target if record else None


# The paper's models as the kit's registry names them (configs/sweeps/paper.yaml).
LLAMA, GEMMA2B, MISTRAL, OLMO, GEMMA9B = ("llama-3-8b-instruct", "gemma-2-2b-it", "mistral-7b-instruct",
                                          "olmo-2-7b-instruct", "gemma-2-9b-it")


def main_scope(ctx: Context, paper_model: str | None = None, target: str | None = None) -> Context:
    """The runs a single-model table reads: the paper's model for it when the profile has that model's runs,
    otherwise every run (the offline profiles have one model); narrowed to `target` when runs for it exist."""
    sub = ctx.scope(paper_model) if paper_model and ctx.scope(paper_model).runs else ctx
    if target and sub.scope(target=target).runs:
        sub = sub.scope(target=target)
    return sub


def per_context(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
    """Compute once per Context what every generator reads (the run index, the merged evaluations, the profile):
    generators call these helpers many times each, inside loops. Callers must not mutate the result."""

    @functools.wraps(fn)
    def once(ctx: Context) -> Any:
        if fn.__name__ not in ctx.memo:
            ctx.memo[fn.__name__] = fn(ctx)
        return ctx.memo[fn.__name__]

    return once


@per_context
def sft_runs(ctx: Context) -> dict[str, dict[str, Any]]:
    """Training runs by name with what the report needs: label, method, share masked, ||ΔW||, losses."""
    out = {}
    for name, rec in ctx.by_stage("sft").items():
        res = rec.results
        cfg = rec.config
        out[name] = {
            "run": name, "label": res.label or name, "method": res.method,
            "tau": cfg.get("masking", {}).get("tau"), "finetune": cfg.get("training", {}).get("finetune"),
            "learning_rate": cfg.get("training", {}).get("learning_rate"),
            "weight_decay": cfg.get("training", {}).get("weight_decay", 0.0),
            "kl_coef": cfg.get("training", {}).get("kl_coef", 0.0),
            "label_ppl": res.label_ppl, "final_train_loss": res.final_train_loss,
            "masked_%": 100 * res.masking.get("masked_share", 0.0),
            "trained_tokens": res.masking.get("trained_tokens"),
            "delta_w": res.delta_w, "record": rec,
        }
    return out


@per_context
def evaluations(ctx: Context) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], RunRecord | None]:
    """(accuracy by label, transfer by training run, drift by training run, the first evaluate run) over all
    evaluate runs of the profile."""
    acc: dict[str, Any] = {}
    transfer: dict[str, Any] = {}
    drift: dict[str, Any] = {}
    first = None
    for rec in ctx.by_stage("evaluate").values():
        acc.update(rec.results.accuracy)
        transfer.update(rec.results.transfer)
        drift.update(rec.results.drift)
        first = first or rec
    return acc, transfer, drift, first


def checkpoint_curves(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """{trained model label: [{step, epoch, task, accuracy, ci_low, ci_high, n}]} over the evaluate runs
    (05_evaluate with checkpoint_tasks); step 0 is the original model."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in ctx.by_stage("evaluate").values():
        out.update(rec.results.checkpoint_accuracy)
    return out


def fmt_ci(v: Any, lo: Any, hi: Any) -> str:
    return "n/a" if v is None else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def interval_column(transfer: dict[str, Any], labels: Any, measure: str) -> list[str]:
    """One formatted "estimate [low, high]" per model label for a transfer measure ("ti" or "bwt")."""
    return [fmt_ci(*(transfer.get(lab, {}).get(k) for k in (measure, f"{measure}_low", f"{measure}_high")))
            for lab in labels]


def transfer_rows(ctx: Context, names: list[str] | None = None) -> pd.DataFrame:
    sft = sft_runs(ctx)
    _, transfer, drift, _ = evaluations(ctx)
    rows = []
    for name, rep in transfer.items():
        if names is not None and name not in names:
            continue
        info = sft.get(name, {})
        d = drift.get(name, {}).get("all", {})
        rows.append({
            "run": name, "method": info.get("label", name), "target": target_of(info.get("record")),
            "masked_%": info.get("masked_%"),
            "TI_%": rep.get("ti"), "TI_95CI": fmt_ci(rep.get("ti"), rep.get("ti_low"), rep.get("ti_high")),
            "BWT_%": rep.get("bwt"), "BWT_95CI": fmt_ci(rep.get("bwt"), rep.get("bwt_low"), rep.get("bwt_high")),
            "drift_KL": d.get("kl"), "delta_nll_base_answers": d.get("delta_nll"),
            "bwt_tasks": ", ".join(rep.get("bwt_tasks", [])),
        })
    return pd.DataFrame(rows)


def is_plain(info: dict[str, Any], tau: float = 2.5) -> bool:
    """A run with the paper's defaults apart from what a table varies: no weight decay or KL term, STM at tau."""
    res = info["record"].results
    return (not info.get("weight_decay") and not info.get("kl_coef")
            and (info["method"] != "stm" or info.get("tau") == tau)
            and not res.init_run and res.correctness is None)


@per_context
def main_setting(ctx: Context) -> tuple[float | None, str]:
    """(learning rate, fine-tuning type) of the profile the runs were made with: the main setting that the ablation
    tables vary. Read from the run records (`profile_setting`, the profile before each run's overrides), so editing
    the YAML after the runs changes nothing; records older than that field fall back to the profile as it is now."""
    recorded = {(s["learning_rate"], s["finetune"]) for r in ctx.runs.values() if (s := r.profile_setting)}
    if len(recorded) == 1:
        return next(iter(recorded))
    if len(recorded) > 1:
        raise ValueError(f"results in {ctx.root} come from differently configured profiles {sorted(recorded)}; "
                         "rerun them with one profile (make reproduce) or report them from separate folders")
    try:
        prof = load_profile(ctx.profile)
    except Exception:  # a results folder of a profile that is not in configs/: no default to hold runs to
        return None, "lora"
    return prof.training.learning_rate, prof.training.finetune


def in_main_setting(ctx: Context, info: dict[str, Any]) -> bool:
    """A plain run at the profile's learning rate and fine-tuning type (what Tables 2, 11, 14 and Figure 4 use)."""
    lr, finetune = main_setting(ctx)
    return is_plain(info) and info["finetune"] == finetune and (lr is None or info["learning_rate"] == lr)


def runs_by_method(ctx: Context, method: str) -> list[str]:
    """Training runs of a method, the plain LoRA ones (the paper's main setting) first."""
    sft = sft_runs(ctx)
    runs = [n for n, i in sft.items() if i["method"] == method]
    return sorted(runs, key=lambda n: (not in_main_setting(ctx, sft[n]), n))


def unfinished(ctx: Context, run: str) -> str:
    """'k/n' target-task answers of a trained model that hit max_new_tokens (from 05_evaluate's item files)."""
    acc, _, _, _ = evaluations(ctx)
    target = target_of(sft_runs(ctx).get(run, {}).get("record"))
    summary = next((sm for t, sm in acc.get(run, {}).items() if t.split(":")[0] == target), None)
    try:
        rows = [json.loads(line) for line in Path(summary["items_path"]).read_text().splitlines() if line.strip()]
    except (TypeError, KeyError, OSError, json.JSONDecodeError):
        return "n/a"
    flags = [r.get("finished") for r in rows if "finished" in r]
    return f"{flags.count(False)}/{len(flags)}" if flags else "n/a"


def regularization(ctx: Context) -> tuple[str, RunRecord, pd.DataFrame] | None:
    """(run name, record, Table 8 rows joined with each adapter's TI/BWT/drift and accuracy) of the first
    06_regularization run, or None. Adapters are evaluated by 05_evaluate as "<run>/<label>"."""
    reg = ctx.by_stage("regularization")
    if not reg:
        return None
    name, rec = next(iter(reg.items()))
    df = pd.DataFrame(rec.results.table08).drop(columns=["adapter_key"], errors="ignore")
    acc, transfer, drift, _ = evaluations(ctx)
    labels = [f"{name}/{r}" for r in df["run"]]
    df["TI_%"] = [transfer.get(lab, {}).get("ti") for lab in labels]
    df["TI_95CI"] = interval_column(transfer, labels, "ti")
    df["BWT_%"] = [transfer.get(lab, {}).get("bwt") for lab in labels]
    df["BWT_95CI"] = interval_column(transfer, labels, "bwt")
    df["drift_KL"] = [drift.get(lab, {}).get("all", {}).get("kl") for lab in labels]
    df["evaluated"] = [lab in acc for lab in labels]
    # the paper's reading order first (config, ||ΔW||, TI/BWT, drift), then the training diagnostics
    first = ["run", "method", "weight_decay", "dropout", "kl_coef", "delta_w", "TI_%", "TI_95CI", "BWT_%", "BWT_95CI",
             "drift_KL"]
    head = [c for c in first if c in df.columns]
    return name, rec, df[head + [c for c in df.columns if c not in head]]


def regularization_accuracy(ctx: Context, name: str, df: pd.DataFrame, which: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per (regularised run, step) with the accuracy on the target (which="target") or the mean over the
    non-target tasks (which="non-target"); reference levels for Original and STM."""
    acc, transfer, _, _ = evaluations(ctx)
    curves = checkpoint_curves(ctx)

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


def tau_points(ctx: Context) -> list[dict[str, Any]]:
    """Evaluated STM runs (and ground truth as 0% masked) on the tau axis: one row per run and task."""
    sft = {n: i for n, i in sft_runs(ctx).items() if i["method"] in ("stm", "gt") and i["finetune"] == "lora"
           and not i.get("weight_decay") and not i.get("kl_coef")}
    acc, _, _, _ = evaluations(ctx)
    return [{"run": n, "model": model_of(i["record"]), "target": target_of(i["record"]),
             "tau": i["tau"] if i["method"] == "stm" else None, "masked_%": i["masked_%"], "task": t,
             "accuracy": sm["accuracy"], "ci_low": sm["ci_low"], "ci_high": sm["ci_high"]}
            for n, i in sft.items() if n in acc for t, sm in acc[n].items()]


def accuracy_rows(ctx: Context, names: list[str], extra: Callable[[str], dict[str, Any]] | None = None,
                  original: bool = True) -> pd.DataFrame:
    """One row per trained model (and the original): accuracy [95% CI] per task, plus extra columns."""
    acc, _, _, _ = evaluations(ctx)
    sft = sft_runs(ctx)
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
