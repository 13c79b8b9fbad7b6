"""Claims at this scale: two intervals compared, and the claim sentences several outputs share."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .runs import Context, evaluations, model_of, runs_by_method, sft_runs, target_of


def interval(rep: dict[str, Any], key: str) -> tuple[float, float] | None:
    lo, hi = rep.get(f"{key}_low"), rep.get(f"{key}_high")
    return None if lo is None or hi is None else (lo, hi)


def compare(a: tuple[float, float] | None, b: tuple[float, float] | None, higher_better: bool = True) -> str:
    """'yes' if a's interval lies above b's, 'no' if below, else 'not distinguishable from noise'."""
    if a is None or b is None:
        return "not measured"
    if a[0] > b[1]:
        return "yes" if higher_better else "no"
    if a[1] < b[0]:
        return "no" if higher_better else "yes"
    return "not distinguishable from noise"


def stm_vs_gt_claim(ctx: Context) -> str:
    """STM vs ground truth on BWT (intervals) and drift, per model and target when the profile has several."""
    groups = sorted({(model_of(i["record"]), target_of(i["record"])) for i in sft_runs(ctx).values()}, key=str)
    claims = []
    for model, target in groups:
        sub = ctx.scope(model, target)
        _, transfer, drift, _ = evaluations(sub)
        gt = next((n for n in runs_by_method(sub, "gt") if n in transfer), None)
        stm = next((n for n in runs_by_method(sub, "stm") if n in transfer), None)
        if not gt or not stm:
            continue
        bwt = compare(interval(transfer[stm], "bwt"), interval(transfer[gt], "bwt"))
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


def category_claim(df: pd.DataFrame) -> str:
    """Which category is over-represented among high-PPL tokens (per source when there are several)."""
    parts = []
    for source, g in df.groupby(df["source"] if "source" in df else pd.Series("GT", index=df.index)):
        pivot = g.pivot_table(index="category", columns="tokens", values="share")
        if {"all", "masked"} <= set(pivot.columns):
            more = (pivot["masked"] - pivot["all"]).to_dict()
            top = max(more, key=more.get)
            parts.append(f"{source}: {top} ({100 * more[top]:+.1f} points vs all tokens)")
    return "Over-represented among high-PPL tokens: " + "; ".join(parts)
