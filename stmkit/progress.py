"""Progress bars: tqdm's (a widget in a notebook, text in a terminal), kept when done in a notebook.

A finished bar that tqdm removes (leave=False) closes its widget, but the notebook keeps the output that shows it:
a saved or executed notebook (JupyterLab, papermill) then reopens with "Error displaying widget: model not found"
where the bar was. In a notebook a finished bar therefore stays (its widget is saved with the notebook); in a
terminal it is cleared, so nested loops do not fill the screen.
"""

from __future__ import annotations

from typing import Any


def bar(iterable: Any = None, **kwargs: Any) -> Any:
    """tqdm.auto's bar with `leave` set for where it draws (kept in a notebook, cleared in a terminal)."""
    # lazy: tqdm.notebook imports ipywidgets, which nothing that merely imports stmkit needs
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    kwargs.setdefault("leave", issubclass(tqdm, notebook_tqdm))
    return tqdm(iterable, **kwargs)
