"""Interactive token explorer: a tau slider that shows which tokens STM masks, live (static HTML in batch runs)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from .plots import tokens_html
from .scoring import Scored


def in_batch() -> bool:
    """True under `make reproduce` (the pipeline sets STMKIT_BATCH=1), where no one can move a slider."""
    return os.environ.get("STMKIT_BATCH") == "1"


# The slider's stops: the paper's and the kit's values exactly (1.5, 2, 2.5, 3, 5, 10, ...), then "no masking".
TAU_STOPS = (1.05, 1.1, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 25.0, 100.0, 1000.0, math.inf)


def masked_counts(scored: Sequence[Scored], tau: float) -> tuple[int, int]:
    """(masked, response tokens) at tau by the same rule training uses (stmkit.masking), so the shares agree."""
    from .masking import compute_masks

    masks = compute_masks(scored, "threshold", tau)
    return int(sum(int(m.sum()) for m in masks)), int(sum(len(m) for m in masks))


def summary_html(scored: Sequence[Scored], index: int, tau: float) -> str:
    """Share of tokens masked at tau for one example and for the whole dataset."""
    masked, total = masked_counts(scored, tau)
    one_masked, one_total = masked_counts([scored[index]], tau)
    if math.isinf(tau):
        rule = "tau = <b>&infin;</b>: no token is masked (plain fine-tuning on every answer token)"
    else:
        rule = f"tau = <b>{tau:g}</b>: STM masks tokens with probability below <b>{1 / tau:.3g}</b>"
    return (
        f"<p style='font-family:sans-serif'>{rule} &mdash; {one_masked} of {one_total} tokens in this example "
        f"({100 * one_masked / max(one_total, 1):.1f}%), <b>{100 * masked / max(total, 1):.1f}%</b> of the "
        f"{total} response tokens in the dataset.</p>"
    )


def explorer(scored: Sequence[Scored], tokenizer: Any, tau: float = 2.5, index: int = 0) -> Any:
    """A tau slider over exact stops and an example picker, below a static rendering at the starting tau.

    The static view is displayed first and stays in the saved notebook, so a reopened or shared notebook (where
    the live widget cannot be restored) still shows the tokens; under `make reproduce` it is all there is.
    """
    from IPython.display import HTML, display

    static = HTML("<p style='font-family:sans-serif;color:#666'>Static view at the starting tau (saved with the "
                  "notebook); the slider below updates live.</p>" + summary_html(scored, index, tau)
                  + tokens_html(scored[index], tokenizer, tau))
    if in_batch():
        return static
    try:
        import ipywidgets as w
    except ImportError:
        return static
    display(static)
    stops = sorted(set(TAU_STOPS) | {tau})
    slider = w.SelectionSlider(options=[("∞" if math.isinf(t) else f"{t:g}", t) for t in stops], value=tau,
                               description="tau", continuous_update=True)
    picker = w.BoundedIntText(value=index, min=0, max=len(scored) - 1, description="example")
    out = w.HTML()

    def update(*_: Any) -> None:
        s = scored[picker.value]
        out.value = summary_html(scored, picker.value, slider.value) + tokens_html(s, tokenizer, slider.value)

    slider.observe(update, "value")
    picker.observe(update, "value")
    update()
    return w.VBox([w.HBox([slider, picker]), out])
