"""Figures: one seaborn style, a fixed colour per method, PNG + PDF named after the paper's figures."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg") if not hasattr(matplotlib, "_called_from_notebook") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

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
}


def color(method: str) -> str:
    """The fixed colour of a method (grey for unknown ones)."""
    return METHOD_COLORS.get(method, "#555555")


def use_style() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig: Any, name: str, figures_dir: Path) -> list[Path]:
    """Write figures_dir/name.png and .pdf (each via a temp file and rename)."""
    import os

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


def tokens_html(scored: Scored, tokenizer: Any, tau: float = 2.5) -> str:
    """Figure 1 as HTML: response tokens shaded by PPL; tokens above tau (masked by STM) underlined and bold."""
    parts = [
        f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>"
        f"<div style='font-family:sans-serif;font-size:90%;margin-bottom:4px'>tau = {tau:g} "
        f"(masks tokens with p &lt; {1 / tau:.2f}); <b><u>underlined</u></b> = masked</div>"
    ]
    for tid, p in zip(scored.response_ids, scored.ppl, strict=True):
        text = html.escape(tokenizer.decode([tid]))
        style = f"background:{_ppl_color(p, tau)}"
        if p > tau:
            style += ";font-weight:bold;text-decoration:underline"
        parts.append(f"<span title='ppl {p:.2f}' style='{style}'>{text}</span>")
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
    return fig


def ppl_histogram(sources: Mapping[str, Sequence[Scored]], tau: float = 2.5) -> Any:
    """Histogram of token log-PPL per source, with tau marked."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, 10, 41)
    for source, scored in sources.items():
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
