"""The one guard against non-finite numbers: NaN or infinity is refused where it appears, naming what held it.

`NaN > tau` is False, so a NaN log-prob would otherwise pass every comparison as "not masked", and a NaN loss or
score would be cached as a valid result. Scoring, masking, training, drift, evaluation and the cache's writers all
call `require_finite` (numbers) or `first_non_finite` (JSON-like records) instead of checking on their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class NonFiniteError(ValueError):
    """A number that must be finite is NaN or infinite; the message names the example, step or field."""


def require_finite(values: Any, what: str, unit: str = "value") -> None:
    """Raise NonFiniteError unless every number in values (scalar, sequence, numpy array, torch tensor) is finite.

    what: the thing being checked, as the message names it ("example 'a' (index 0) log-probs");
    unit: what one entry is ("response token"), for the position of the first bad one.
    """
    if hasattr(values, "detach"):  # a torch tensor: check on its device; copy to the host only to explain
        if bool(values.detach().isfinite().all()):
            return
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if not len(bad):
        return
    first = int(bad[0])
    found = (f"{what} is {arr.item()}" if arr.ndim == 0 else
             f"{what}: {len(bad)} of {arr.size} {unit}s are not finite (first: {unit} {first} is {arr.flat[first]})")
    raise NonFiniteError(
        f"{found}. NaN or infinite numbers mean broken weights or an overflow (a corrupted cached model, too high "
        "a learning rate, the fp16 range); they are never cached or used as results"
    )


def first_non_finite(obj: Any, path: str = "") -> tuple[str, float] | None:
    """(path such as 'scores.b[1]', value) of the first NaN or infinite float in a JSON-like object, else None."""
    if isinstance(obj, float | np.floating):
        return None if math.isfinite(obj) else (path or "(top level)", float(obj))
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = first_non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = first_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None
