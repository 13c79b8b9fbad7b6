"""Interactive token explorer: a tau slider that shows which tokens STM masks, live (static HTML in batch runs); with
per-token entropies, an entropy gate shows conflict masking (only the confident conflicts among STM's tokens)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from .masking import stm_or_conflict_masks
from .plots import tokens_html
from .scoring import Scored


def in_batch() -> bool:
    """True under `make reproduce` (the pipeline sets STMKIT_BATCH=1), where no one can move a slider."""
    return os.environ.get("STMKIT_BATCH") == "1"


# The slider's stops: the paper's and the kit's values exactly (1.5, 2, 2.5, 3, 5, 10, ...), then "no masking".
TAU_STOPS = (1.05, 1.1, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 25.0, 100.0, 1000.0, math.inf)


# confident-conflict masking (rule `conflict`): top-20 entropy / log 20 below the stop counts as confident
ENTROPY_STOPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def masked_counts(scored: Sequence[Scored], tau: float, conflict_entropy: float | None = None) -> tuple[int, int]:
    """(masked, response tokens) at tau by the same rule training uses (stmkit.masking), so the shares agree;
    with conflict_entropy, by the `conflict` rule (confident conflicts only)."""
    masks = stm_or_conflict_masks(scored, tau, conflict_entropy)
    return int(sum(int(m.sum()) for m in masks)), int(sum(len(m) for m in masks))


def summary_html(scored: Sequence[Scored], index: int, tau: float, conflict_entropy: float | None = None) -> str:
    """Share of tokens masked at tau (and the entropy gate, for confident conflicts) for one example and overall."""
    masked, total = masked_counts(scored, tau, conflict_entropy)
    one_masked, one_total = masked_counts([scored[index]], tau, conflict_entropy)
    if math.isinf(tau):
        rule = "tau = <b>&infin;</b>: no token is masked (plain fine-tuning on every answer token)"
    elif conflict_entropy is not None:
        rule = (f"tau = <b>{tau:g}</b>, entropy below <b>{conflict_entropy:g}</b>: conflict masking masks tokens with "
                f"probability below <b>{1 / tau:.3g}</b> that the model predicted confidently")
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
    controls = [slider, picker]
    gate = None
    if all(len(s.topk_entropy) == len(s.logprobs) for s in scored):  # scored with entropies: conflict masking too
        # 0 stands for "no gate" (a slider value cannot be None): plain STM
        gate = w.SelectionSlider(options=[("off (STM)", 0.0)] + [(f"{h:g}", h) for h in ENTROPY_STOPS],
                                 value=0.0, description="entropy <", continuous_update=True)
        controls.append(gate)
    out = w.HTML()

    def update(*_: Any) -> None:
        s, h = scored[picker.value], (gate.value or None) if gate is not None else None
        out.value = summary_html(scored, picker.value, slider.value, h) + tokens_html(s, tokenizer, slider.value, h)

    for c in controls:
        c.observe(update, "value")
    update()
    return w.VBox([w.HBox(controls), out])
