"""Interactive token explorer: a tau slider that shows which tokens STM masks, live (static HTML in batch runs)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .plots import tokens_html
from .scoring import Scored


def in_batch() -> bool:
    """True under `make reproduce` (the pipeline sets STMKIT_BATCH=1), where no one can move a slider."""
    return os.environ.get("STMKIT_BATCH") == "1"


def summary_html(scored: Sequence[Scored], index: int, tau: float) -> str:
    """Share of tokens masked at tau for one example and for the whole dataset."""
    flat = np.concatenate([s.ppl for s in scored])
    one = scored[index].ppl
    return (
        f"<p style='font-family:sans-serif'>tau = <b>{tau:.2f}</b>: STM masks tokens with probability below "
        f"<b>{1 / tau:.2f}</b> &mdash; {int((one > tau).sum())} of {len(one)} tokens in this example "
        f"({100 * (one > tau).mean():.1f}%), <b>{100 * (flat > tau).mean():.1f}%</b> of the "
        f"{len(flat)} response tokens in the dataset.</p>"
    )


def explorer(scored: Sequence[Scored], tokenizer: Any, tau: float = 2.5, index: int = 0) -> Any:
    """A widget with a tau slider (log scale) and an example picker; falls back to static HTML in batch runs."""
    from IPython.display import HTML

    static = HTML(summary_html(scored, index, tau) + tokens_html(scored[index], tokenizer, tau))
    if in_batch():
        return static
    try:
        import ipywidgets as w
    except ImportError:
        return static
    slider = w.FloatLogSlider(value=tau, base=10, min=math.log10(1.05), max=3, step=0.01, description="tau",
                              continuous_update=True, readout_format=".2f")
    picker = w.BoundedIntText(value=index, min=0, max=len(scored) - 1, description="example")
    out = w.HTML()

    def update(*_: Any) -> None:
        s = scored[picker.value]
        out.value = summary_html(scored, picker.value, slider.value) + tokens_html(s, tokenizer, slider.value)

    slider.observe(update, "value")
    picker.observe(update, "value")
    update()
    return w.VBox([w.HBox([slider, picker]), out])
