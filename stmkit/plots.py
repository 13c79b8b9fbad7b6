"""Figures: one seaborn style, a fixed colour per method, PNG + PDF named after the paper's figures."""

from __future__ import annotations

import html
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and tests: no display; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .analysis import entropy_quadrants  # noqa: E402
from .forgetting_curve import MEASURES  # noqa: E402
from .masking import stm_or_conflict_masks  # noqa: E402
from .scoring import Scored  # noqa: E402

METHOD_COLORS = {
    "Original": "#7f7f7f",
    "Ground Truth": "#d62728",
    "Baseline Fine-tuning": "#d62728",
    "STM": "#1f77b4",
    "Self-Output": "#2ca02c",
    "Rephrase": "#ff7f0e",
    "Random": "#9467bd",
    "Low": "#8c564b",
    "Quantile": "#17becf",
    "DPF": "#bcbd22",
    "STM+DPF": "#e377c2",
    "KL": "#393b79",
    "Weight decay": "#637939",
    "STM, end-of-turn trained": "#6baed6",
    "DFT": "#ff7f0e",
    "EAFT": "#2ca02c",
    "Conflict masking": "#9467bd",
}
_COLOR_BY_LOWER = {k.lower(): v for k, v in METHOD_COLORS.items()}  # the verdict's arms are lower-case labels


def color(method: str) -> str:
    """The fixed colour of a method (grey for unknown ones)."""
    return METHOD_COLORS.get(method) or _COLOR_BY_LOWER.get(method.lower(), "#555555")


def use_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig: Any, name: str, figures_dir: Path) -> list[Path]:
    """Write figures_dir/name.png and .pdf (each via a temp file and rename)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        final = figures_dir / f"{name}.{ext}"
        tmp = figures_dir / f".{name}.{os.getpid()}.tmp.{ext}"
        fig.savefig(tmp, format=ext)
        os.replace(tmp, final)
        out.append(final)
    return out


def _ppl_color(ppl: float, tau: float) -> str:
    """White for confident tokens, deepening red as PPL rises past tau (log scale)."""
    if ppl <= 1.0:
        return "#ffffff"
    x = min(1.0, math.log(ppl) / math.log(max(tau, 1.01) * 8))
    r, g, b = 1.0, 1.0 - 0.75 * x, 1.0 - 0.75 * x
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def tokens_html(scored: Scored, tokenizer: Any, tau: float = 2.5, conflict_entropy: float | None = None) -> str:
    """Figure 1 as HTML: response tokens shaded by PPL; tokens above tau (masked by STM) underlined and bold.

    conflict_entropy: underline only the confident conflicts (PPL > tau and top-20 entropy / log 20 below it), the
    `conflict` masking rule. Hovering a token shows its PPL and, when scored with them, its entropies."""
    mask = stm_or_conflict_masks([scored], tau, conflict_entropy)[0]
    what = (f"masks tokens with p &lt; {1 / tau:.2f}" if conflict_entropy is None else
            f"masks tokens with p &lt; {1 / tau:.2f} and top-20 entropy / log 20 &lt; {conflict_entropy:g}")
    parts = [
        f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>"
        f"<div style='font-family:sans-serif;font-size:90%;margin-bottom:4px'>tau = {tau:g} "
        f"({what}); <b><u>underlined</u></b> = masked</div>"
    ]
    n = len(scored.logprobs)
    topk = scored.topk_entropy if len(scored.topk_entropy) == n else [None] * n
    for tid, p, masked, h in zip(scored.response_ids, scored.ppl, mask, topk, strict=True):
        text = html.escape(tokenizer.decode([tid]))
        style = f"background:{_ppl_color(p, tau)}"
        if masked:
            style += ";font-weight:bold;text-decoration:underline"
        title = f"ppl {p:.2f}" + ("" if h is None else f", top-20 entropy {h:.2f}")
        parts.append(f"<span title='{title}' style='{style}'>{text}</span>")
    parts.append("</div>")
    return "".join(parts)


def fig01_tokens(scored: Scored, tokenizer: Any, tau: float = 2.5, max_tokens: int = 220) -> Any:
    """Figure 1 as an image: the response's tokens laid out as text, shaded by PPL, masked ones outlined."""
    use_style()
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.axis("off")
    renderer = fig.canvas.get_renderer()
    inv = ax.transAxes.inverted()
    x, y, line_h, gap = 0.0, 1.0, 0.06, 0.002
    for tid, p in list(zip(scored.response_ids, scored.ppl, strict=True))[:max_tokens]:
        text = tokenizer.decode([tid]).replace("\t", "    ")
        for k, piece in enumerate(text.split("\n")):
            if k > 0:
                x, y = 0.0, y - line_h
            if not piece:
                continue
            t = ax.text(
                x, y, piece.replace("$", r"\$"), family="monospace", fontsize=9, va="top",
                bbox={"boxstyle": "square,pad=0.1", "fc": _ppl_color(p, tau), "ec": "#1f1f1f" if p > tau else "none",
                      "lw": 0.7},
            )
            bb = inv.transform(t.get_window_extent(renderer))
            width = bb[1][0] - bb[0][0]
            if x > 0 and x + width > 1.0:  # wrap: move this token to the next line
                x, y = 0.0, y - line_h
                t.set_position((x, y))
            x += width + gap
    ax.set_ylim(min(0.0, y - line_h), 1.0)
    ax.set_title(f"Response tokens shaded by perplexity; outlined: PPL > tau = {tau:g} (p < {1 / tau:.2f}), masked "
                 "by STM", fontsize=10)
    return fig


def fig03_traces(traces: Mapping[str, Scored], title: str = "") -> Any:
    """Figure 3: token PPL against position for one problem, one panel per data source."""
    use_style()
    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 2.2 * len(traces)), sharex=True, squeeze=False)
    for ax, (source, s) in zip(axes[:, 0], traces.items(), strict=True):
        p = s.ppl
        ax.bar(np.arange(len(p)), np.log(p), color=color(source), width=0.9)
        ax.set_ylabel("log PPL")
        var20 = np.var(p[:20], ddof=1) if len(p) > 1 else float("nan")
        ax.set_title(f"{source}: sequence PPL {s.seq_ppl:.2f}, variance of first 20 token PPLs {var20:.2f}",
                     fontsize=9)
    axes[-1, 0].set_xlabel("response token position")
    if title:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.96))  # keep the title above the first panel's, not over it
    return fig


def ppl_histogram(sources: Mapping[str, Sequence[Scored]], tau: float = 2.5) -> Any:
    """Histogram of token log-PPL per source, with tau marked."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, 10, 41)
    for source, scored in sources.items():
        if not scored:  # e.g. no Self-Output answer passed the checker
            continue
        flat = np.concatenate([s.ppl for s in scored])
        ax.hist(np.log(flat), bins=bins, alpha=0.55, label=f"{source} ({len(flat)} tokens)", color=color(source),
                density=True)
    ax.axvline(math.log(tau), color="k", ls="--", lw=1)
    ax.text(math.log(tau), ax.get_ylim()[1] * 0.9, f" tau={tau:g} (p<{1 / tau:.2f})", fontsize=8)
    ax.set_xlabel("token log PPL (natural log)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig


def tau_share_plot(curve: pd.DataFrame, marked: Sequence[float] = (1.5, 2.5, 10, 25, 1000)) -> Any:
    """Share of response tokens masked against tau (log scale), the paper's tau values marked."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(curve["tau"], 100 * curve["masked_share"], color=color("STM"))
    pts = curve[curve["tau"].isin(list(marked))]
    ax.scatter(pts["tau"], 100 * pts["masked_share"], color=color("STM"), zorder=3)
    for _, r in pts.iterrows():
        ax.annotate(f"{100 * r['masked_share']:.1f}%", (r["tau"], 100 * r["masked_share"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("tau (log scale); STM masks tokens with PPL > tau, i.e. probability < 1/tau")
    ax.set_ylabel("% response tokens masked")
    secax = ax.secondary_xaxis("top", functions=(lambda t: 1 / np.maximum(t, 1e-9), lambda p: 1 / np.maximum(p, 1e-9)))
    secax.set_xlabel("probability threshold 1/tau")
    return fig


def category_bars(df: pd.DataFrame, title: str = "") -> Any:
    """Figures 8-10: share of token categories among all and among high-PPL (masked) tokens, per source."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=df, x="category", y="share", hue="series", ax=ax)
    ax.set_ylabel("share of token count")
    ax.set_xlabel("")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


# --- training plots ---


def loss_curves(curves: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], title: str = "",
                colors: Mapping[str, str] | None = None) -> Any:
    """Figures 4 and 7 (loss panels): training loss per step and validation loss, against epochs, per method.

    curves maps a label to (train losses with epoch/loss, validation losses with epoch/eval_loss), e.g.
    (TrainResult.train_losses(), TrainResult.eval_losses()); colours follow the method colours unless given.
    """
    use_style()
    fig, (ax_tr, ax_ev) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, (train, val) in curves.items():
        c = (colors or {}).get(label, color(label))
        if len(train):
            ax_tr.plot(train["epoch"], train["loss"], color=c, lw=1.2, label=label)
        if len(val):
            ax_ev.plot(val["epoch"], val["eval_loss"], color=c, marker="o", ms=3, lw=1.2, label=label)
    ax_tr.set_title("training loss (trained tokens of each method)", fontsize=10)
    ax_ev.set_title("validation loss (all ground-truth response tokens)", fontsize=10)
    for ax in (ax_tr, ax_ev):
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean NLL per token")
        if ax.has_data():
            ax.legend(fontsize=8)
    if not ax_ev.has_data():
        ax_ev.text(0.5, 0.5, "no validation set (data.n_val = 0)", ha="center", va="center", transform=ax_ev.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def delta_w_bars(df: pd.DataFrame, x: str = "run", y: str = "delta_w", hue: str | None = "method",
                 title: str = "") -> Any:
    """Tables 7-8 as bars: ||ΔW|| (Frobenius, all adapted matrices) per run, coloured by method."""
    use_style()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(df) + 2), 3.4))
    colors = [color(m) for m in (df[hue] if hue and hue in df else ["" for _ in range(len(df))])]
    ax.bar(df[x].astype(str), df[y], color=colors)
    for i, v in enumerate(df[y]):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("||ΔW|| (Frobenius)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def effective_rank_bars(spectra: Mapping[str, pd.DataFrame], projection: str = "q_proj", title: str = "") -> Any:
    """Figure 13: effective rank of ΔW per layer for one projection, one bar series per method."""
    use_style()
    rows = [r.assign(method=label) for label, r in spectra.items()]
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["layer", "effective_rank", "method"])
    df = df[df["projection"] == projection] if len(df) else df
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * df["layer"].nunique() * max(1, len(spectra)) + 2), 3.4))
    if len(df):
        sns.barplot(data=df, x="layer", y="effective_rank", hue="method", ax=ax,
                    palette={m: color(m) for m in df["method"].unique()})
        ax.legend(fontsize=8)
    ax.set_ylabel(f"effective rank of ΔW ({projection})")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def singular_value_curves(spectra: Mapping[str, pd.DataFrame], projection: str = "q_proj",
                          layers: Sequence[int] | None = None, title: str = "") -> Any:
    """Figure 14: singular values of ΔW against their index, one panel per layer, one line per method."""
    use_style()
    first = next(iter(spectra.values()), pd.DataFrame(columns=["layer", "projection"]))
    all_layers = sorted(int(v) for v in first[first["projection"] == projection]["layer"].dropna().unique())
    layers = list(layers) if layers is not None else all_layers[-min(8, len(all_layers)):]
    n = max(1, len(layers))
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.0 * cols, 2.4 * ((n + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax, layer in zip(axes.flat, layers, strict=False):
        for label, df in spectra.items():
            row = df[(df["projection"] == projection) & (df["layer"] == layer)]
            if len(row):
                sv = row["singular_values"].iloc[0]
                ax.plot(range(len(sv)), sv, color=color(label), lw=1.2, label=label)
        ax.set_title(f"layer {layer} {projection}", fontsize=9)
        ax.set_xlabel("index", fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("singular value of ΔW")
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def convergence(curves: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], accuracy: Mapping[str, pd.DataFrame],
                title: str = "") -> Any:
    """Figures 4 and 7: target-task accuracy, validation loss and training loss against epochs, per method.

    accuracy maps a label to rows with epoch, accuracy, ci_low, ci_high (checkpoint evaluations; epoch 0 is the
    original model); a label without them is left out of the first panel, which says so when empty.
    """
    use_style()
    fig, (ax_acc, ax_ev, ax_tr) = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, (train, val) in curves.items():
        c = color(label)
        acc = accuracy.get(label)
        if acc is not None and len(acc):
            acc = acc.sort_values("epoch")
            ax_acc.errorbar(acc["epoch"], acc["accuracy"], yerr=[acc["accuracy"] - acc["ci_low"],
                            acc["ci_high"] - acc["accuracy"]], color=c, marker="o", ms=3, lw=1.2, capsize=2,
                            label=label)
        if len(val):
            ax_ev.plot(val["epoch"], val["eval_loss"], color=c, marker="o", ms=3, lw=1.2, label=label)
        if len(train):
            ax_tr.plot(train["epoch"], train["loss"], color=c, lw=1.0, label=label)
    ax_acc.set_title("target-task test accuracy (95% CI)", fontsize=10)
    ax_ev.set_title("validation loss (all ground-truth tokens)", fontsize=10)
    ax_tr.set_title("training loss per step (trained tokens)", fontsize=10)
    for ax, ylab in ((ax_acc, "accuracy"), (ax_ev, "mean NLL per token"), (ax_tr, "mean NLL per token")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylab)
        if ax.has_data():
            ax.legend(fontsize=8)
    if not ax_acc.has_data():
        ax_acc.text(0.5, 0.5, "no checkpoint evaluations\n(05_evaluate checkpoint_tasks)", ha="center",
                    va="center", transform=ax_acc.transAxes, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def siblings_plane(points: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]], x_label: str,
                   y_label: str, title: str = "") -> Any:
    """Forgetting (x) against target gain (y): one point per method and training seed, 95% item intervals as bars.

    points: {method: [{"x": {"mean", "low", "high"}, "y": {...}, "seed": s}, ...]}."""
    use_style()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for method, pts in points.items():
        for i, p in enumerate(pts):
            x, y = p["x"], p["y"]
            ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["low"]], [x["high"] - x["mean"]]],
                        yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]], fmt="o", ms=6, capsize=2,
                        color=color(method), alpha=0.85, label=method if i == 0 else None)
    ax.axvline(0, color="#999", lw=0.8)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def probability_entropy_plane(sources: Mapping[str, Sequence[Scored]], tau: float, conflict_entropy: float,
                              title: str = "") -> Any:
    """Each source's response tokens on the probability x entropy plane (2-D density, log colour), with STM's
    threshold (p = 1/tau) and the entropy gate of conflict masking drawn; the lower-left box holds the confident
    conflicts. EAFT's weight is the y axis itself (top-20 entropy / log 20)."""
    quadrants = entropy_quadrants(sources, tau, conflict_entropy).set_index("source")  # checks the entropies exist
    use_style()
    fig, axes = plt.subplots(1, len(sources), figsize=(4.6 * len(sources), 4.0), sharey=True, squeeze=False)
    for ax, (label, scored) in zip(axes[0], sources.items(), strict=True):
        p = np.concatenate([s.probability for s in scored])
        h = np.concatenate([np.asarray(s.topk_entropy, dtype=float) for s in scored])
        ax.hist2d(p, h, bins=40, range=[[0, 1], [0, 1]], norm=LogNorm(), cmap="viridis")
        ax.axvline(1 / tau, color="#d62728", lw=1.2, label=f"STM: p = 1/{tau:g}")
        ax.axhline(conflict_entropy, color="black", lw=1.2, ls="--", label=f"entropy gate {conflict_entropy:g}")
        q = quadrants.loc[label]
        ax.set_title(f"{label}: {q['tokens']} tokens, {100 * q['confident_conflict']:.1f}% confident conflicts",
                     fontsize=9)
        ax.set_xlabel("probability of the label token")
    axes[0][0].set_ylabel("top-20 entropy / log 20 (EAFT's weight)")
    axes[0][0].legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def forgetting_curve(rows: Sequence[Mapping[str, Any]], title: str = "") -> Any:
    """Where forgetting appears (stmkit.forgetting_curve rows): one panel per measure, estimate and 95% interval over
    optimizer steps (log scale), one line per training run."""
    measures = [m for m in MEASURES if any(r["measure"] == m for r in rows)]
    fig, axes = plt.subplots(1, max(len(measures), 1), figsize=(5.5 * max(len(measures), 1), 3.6), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=False):
        for run in sorted({r["run"] for r in rows}):
            pts = [r for r in rows if r["run"] == run and r["measure"] == measure]
            if not pts:
                continue
            steps = [r["step"] for r in pts]
            ax.plot(steps, [r["estimate"] for r in pts], marker="o", label=run)
            ax.fill_between(steps, [r["ci_low"] for r in pts], [r["ci_high"] for r in pts], alpha=0.15)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step (log scale)")
        ax.set_ylabel(MEASURES[measure])
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ppl_vs_bwt(points: pd.DataFrame) -> Any:
    """Figure 2: BWT (95% intervals) against the mean PPL of the training labels, coloured by final training loss."""
    use_style()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(points["label_ppl"], points["bwt"], yerr=[points["bwt"] - points["bwt_low"],
                                                          points["bwt_high"] - points["bwt"]],
                fmt="none", ecolor="#bbbbbb", zorder=1)
    sc = ax.scatter(points["label_ppl"], points["bwt"], c=points["final_train_loss"], cmap="viridis", zorder=2, s=40)
    for _, r in points.iterrows():
        ax.annotate(r["method"], (r["label_ppl"], r["bwt"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="final training loss")
    ax.set_xlabel("mean sequence PPL of the training labels (base model)")
    ax.set_ylabel("BWT (%)")
    fig.tight_layout()
    return fig


def accuracy_vs_masked(points: pd.DataFrame) -> Any:
    """Figures 5-6: accuracy on each task (95% intervals) against the share of tokens STM masked, a panel per task."""
    use_style()
    tasks = list(dict.fromkeys(points["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        xs = points[points["task"] == t].sort_values("masked_%")
        ax.errorbar(xs["masked_%"], xs["accuracy"], yerr=[xs["accuracy"] - xs["ci_low"], xs["ci_high"] - xs["accuracy"]],
                    marker="o", color=color("STM"), capsize=2)
        ax.set_title(t + (" (target)" if t.split(":")[0] == xs["target"].iloc[0] else ""))
        ax.set_xlabel("% tokens masked")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig


def regularization_lines(points: pd.DataFrame, refs: Mapping[str, float], title: str = "") -> Any:
    """Figures 11-12: one line per regularised setting and checkpoint across weight decay, dropout, step and accuracy
    (each axis scaled to its range), and a dashed line at each reference model's accuracy."""
    axes_cols = ["weight_decay", "dropout", "step", "accuracy"]
    use_style()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    num = points[axes_cols].apply(pd.to_numeric, errors="coerce")
    lo, hi = num.min(), num.max()
    span = (hi - lo).replace(0, 1.0)
    norm = (num - lo) / span
    seen: set[str] = set()
    for i, row in points.iterrows():  # one line per setting and checkpoint; one legend entry per setting
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
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
