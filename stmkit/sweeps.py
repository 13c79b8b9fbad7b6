"""Sweeps: the runs a profile's `make reproduce` executes (configs/sweeps/<name>.yaml, validated), and the wall time
each run took as the pipeline recorded it, which the report and the README map quote."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalogue
from .config import CONFIG_DIR, ConfigError, load_profile, load_yaml, replace
from .experiment import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SWEEPS_DIR = CONFIG_DIR / "sweeps"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a notebook executed with a profile, overrides and parameters."""

    name: str
    notebook: str
    overrides: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()  # paper tables/figures this run's results feed (`for:` in the sweep)


def sweep_path(profile: str) -> Path:
    return SWEEPS_DIR / f"{profile}.yaml"


def resolve_sweep(sweep: str | None) -> Path | None:
    """A sweep given by name (configs/sweeps/<name>.yaml) or by path; None for the profile's own sweep."""
    if not sweep:
        return None
    if "/" not in sweep and not sweep.endswith((".yaml", ".yml")):
        return SWEEPS_DIR / f"{sweep}.yaml"
    return Path(sweep)


def load_sweep(profile: str, path: Path | None = None) -> list[RunSpec]:
    """The validated runs of a profile's sweep (configs/sweeps/<profile>.yaml or `path`), in pipeline order."""
    path = Path(path) if path else sweep_path(profile)
    if not path.is_file():
        with_sweeps = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise ConfigError(f"profile '{profile}' has no sweep file {path}; add one listing its runs "
                          f"(sweeps: {with_sweeps})")
    data = load_yaml(path)
    unknown = set(data) - {"runs", "description", "profile", "derive"}
    if unknown:
        raise ConfigError(f"{path.name}: unknown key '{sorted(unknown)[0]}' "
                          "(valid keys: description, profile, runs, derive)")
    if "derive" in data:
        if "runs" in data:
            raise ConfigError(f"{path.name}: a derived sweep lists no runs of its own (remove 'runs' or 'derive')")
        data = {**data, "runs": derive_runs(path.name, data["derive"])}
    if data.get("profile", profile) != profile:
        raise ConfigError(f"{path.name} is a sweep of profile '{data['profile']}', not '{profile}': "
                          f"run it with PROFILE={data['profile']}")
    base = load_profile(profile)
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("runs") or []):
        where = f"{path.name} runs[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with name and notebook")
        bad = set(raw) - {"name", "notebook", "overrides", "params", "after", "for"}
        if bad:
            raise ConfigError(f"{where}: unknown key '{sorted(bad)[0]}' (valid: name, notebook, overrides, params, after, for)")
        name, nb = raw.get("name"), raw.get("notebook")
        if not name or not nb:
            raise ConfigError(f"{where}: every run needs a name and a notebook")
        if name in seen:
            raise ConfigError(f"{where}: duplicate run name '{name}'")
        if not (NOTEBOOKS_DIR / f"{nb}.ipynb").is_file():
            raise ConfigError(f"{where} ({name}): no notebook notebooks/{nb}.ipynb")
        after = tuple(raw.get("after") or ())
        for dep in after:
            if dep not in seen:
                raise ConfigError(f"{where} ({name}): 'after' names '{dep}', which is not an earlier run")
        overrides = dict(raw.get("overrides") or {})
        try:
            replace(base, overrides)  # catch typos before anything runs
        except ConfigError as exc:
            raise ConfigError(f"{where} ({name}): {exc}") from exc
        params = dict(raw.get("params") or {})
        for k, v in params.items():
            if not isinstance(v, str | int | float | bool):
                raise ConfigError(f"{where} ({name}): parameter '{k}' must be a scalar (notebook parameters are)")
        feeds = tuple(raw.get("for") or ())
        unknown = [f for f in feeds if f not in catalogue.BY_ID and f not in catalogue.KIT_OUTPUTS
                   and f != catalogue.FEEDS_ALL]
        if unknown:
            raise ConfigError(f"{where} ({name}): 'for' names '{unknown[0]}', which is not an output the kit knows "
                              f"(paper outputs table01-table21, fig01-fig14; {', '.join(catalogue.KIT_OUTPUTS)}; all)")
        runs.append(RunSpec(name, nb, overrides, params, after, feeds))
        seen.add(name)
    if not runs:
        raise ConfigError(f"{path.name}: no runs listed")
    return runs


def derive_runs(where: str, spec: Any) -> list[dict[str, Any]]:
    """The runs of another sweep, one to one and in order: each model replaced (`models`: every model the source
    sweep names must be mapped, and the run records the model it stands in for), `overrides` added to every run,
    notebook parameters replaced where a run has them (`params`), and only the chosen runs kept (`runs`: names, with
    the runs their `after` and parameters name; omitted = all)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("from"), str):
        raise ConfigError(f"{where}: 'derive' needs 'from: <sweep name>' (and optionally models, runs, params, "
                          "overrides)")
    bad = set(spec) - {"from", "models", "runs", "params", "overrides"}
    if bad:
        raise ConfigError(f"{where}: 'derive' has unknown key '{sorted(bad)[0]}' "
                          "(valid: from, models, runs, params, overrides)")
    source = SWEEPS_DIR / f"{spec['from']}.yaml"
    if not source.is_file():
        raise ConfigError(f"{where}: derives from '{spec['from']}', but there is no sweep {source}")
    source_runs = load_yaml(source).get("runs") or []
    models, params, added = (dict(spec.get(k) or {}) for k in ("models", "params", "overrides"))
    out = []
    for raw in source_runs:
        raw = dict(raw)
        overrides = dict(raw.get("overrides") or {})
        model = overrides.get("model.name")
        if model is not None and models:
            if model not in models:
                raise ConfigError(f"{where}: run '{raw.get('name')}' of {source.name} uses model '{model}', which "
                                  f"'derive: models' does not map; add '{model}: <replacement>'")
            overrides["model.name"] = models[model]
            overrides["model.stands_in_for"] = model
        raw["overrides"] = {**overrides, **added}
        raw["params"] = {k: params.get(k, v) for k, v in (raw.get("params") or {}).items()}
        out.append(raw)
    chosen = spec.get("runs")
    if chosen is None:
        return out
    by_name = {r["name"]: r for r in out}
    missing = [n for n in chosen if n not in by_name]
    if missing:
        raise ConfigError(f"{where}: 'derive: runs' names '{missing[0]}', which is not a run of {source.name}")
    keep, stack = set(chosen), list(chosen)
    while stack:  # a kept run keeps the runs it needs: its `after` and the runs its parameters name
        run = by_name[stack.pop()]
        named = [part.strip() for v in run["params"].values() if isinstance(v, str) for part in v.split(",")]
        for dep in [*(run.get("after") or ()), *(n for n in named if n in by_name)]:
            if dep not in keep:
                keep.add(dep)
                stack.append(dep)
    return [r for r in out if r["name"] in keep]


def timings_path(root: Path) -> Path:
    """{run: seconds} of each run's last execution (what the progress estimate uses)."""
    return root / "pipeline_timings.json"


def computed_timings_path(root: Path) -> Path:
    """{run: seconds} of each run's last execution that made new cache artifacts, i.e. did its work rather than
    reading it back: the figure the report and the README map quote, which a warm rerun does not overwrite."""
    return root / "pipeline_timings_computed.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wall_times(root: Path) -> tuple[dict[str, float], dict[str, float]]:
    """({run: s} at the last execution, {run: s} at the last execution that computed artifacts) from the pipeline."""
    return read_json(timings_path(root)), read_json(computed_timings_path(root))
