"""What every notebook does first and last: resolve the profile, seed, find its run folder, record run.json."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .cache import Cache, atomic_write_json, atomic_write_text
from .config import Profile, load_profile
from .models import fingerprint, load_model
from .records import RunRecord, StageResults, results_type
from .runinfo import RunLog
from .scoring import score_examples
from .tables import save_table
from .tasks import Example, load

REPO_ROOT = Path(__file__).resolve().parent.parent


def results_root(profile_name: str, results_dir: str | os.PathLike | None = None) -> Path:
    """results/<profile> (or $STMKIT_RESULTS/<profile>, or an explicit folder)."""
    if results_dir:
        return Path(results_dir)
    base = os.environ.get("STMKIT_RESULTS")
    root = Path(base) if base else (REPO_ROOT / "results" if (REPO_ROOT / "pyproject.toml").is_file() else Path("results"))
    return root / profile_name


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (transformers.set_seed does all three)."""
    from transformers import set_seed

    set_seed(seed)


@dataclass
class Run:
    """One executed stage of one configuration: its profile, folder, record and lazily loaded model."""

    profile: Profile
    name: str
    stage: str
    root: Path  # results/<profile>
    key: str = ""
    started: float = field(default_factory=time.perf_counter)
    # Run by hand (no pipeline key, default results folder): written under results/<profile>/interactive/, so it
    # never replaces or invalidates the pipeline's run of the same name; upstream runs are read from there first.
    interactive: bool = False

    @property
    def dir(self) -> Path:
        return self._runs(self.interactive) / self.name

    def _runs(self, interactive: bool) -> Path:
        return (self.root / "interactive" if interactive else self.root) / "runs"

    def _upstream(self, name: str) -> Path:
        """The folder of another run: this session's own interactive one if there is, else the pipeline's."""
        if self.interactive and (self._runs(True) / name / "run.json").is_file():
            return self._runs(True) / name
        return self._runs(False) / name

    @cached_property
    def log(self) -> RunLog:
        return RunLog(self.dir, self.profile, self.stage, self.name, {"seed": self.profile.seed})

    @cached_property
    def model_and_tokenizer(self) -> tuple[Any, Any]:
        m = self.profile.model
        with self.log.timed("load_model"):
            return load_model(m.name, m.device, m.dtype, m.revision)

    @property
    def model(self) -> Any:
        model = self.model_and_tokenizer[0]
        if model is None:
            raise RuntimeError(f"run '{self.name}' released its model (release_model) to make room for training; "
                               "score before training, or start another run to score after it")
        return model

    def release_model(self) -> None:
        """Free the loaded model, keep its tokenizer: training loads its own copy, and on a GPU the scoring copy of a
        7-9B model would hold 15-18 GB through training (Llama 3 8B peaked at 67 GiB with it, H200)."""
        if "model_and_tokenizer" in self.__dict__:
            self.__dict__["model_and_tokenizer"] = (None, self.__dict__["model_and_tokenizer"][1])
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def tokenizer(self) -> Any:
        return self.model_and_tokenizer[1]

    @cached_property
    def model_fingerprint(self) -> str:
        return fingerprint(self.profile.model.name)

    def describe(self) -> str:
        return json.dumps(
            {"run": self.name, "stage": self.stage, "folder": str(self.dir), "config": self.profile.to_dict()},
            indent=2,
            default=str,
        )

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        atomic_write_json(path, obj, allow_nan=True)  # results may say "undefined" (NaN); not a cache entry
        return path

    def save_text(self, name: str, text: str) -> Path:
        path = self.dir / name
        atomic_write_text(path, text)
        return path

    def save_figure(self, fig: Any, name: str) -> list[Path]:
        """PNG + PDF under the run folder's figures/ (the figures notebook gathers them for the profile)."""
        from .plots import save_figure  # lazy: matplotlib (about 1 s) only for a run that saves a figure

        return save_figure(fig, name, self.dir / "figures")

    def save_table(self, df: Any, name: str, caption: str = "") -> list[Path]:
        """CSV + Markdown under the run folder's tables/."""
        return save_table(df, name, self.dir / "tables", caption)

    def target_examples(self, split: str = "train", n: int | None = None, task: str | None = None) -> list[Any]:
        """Items of the profile's target task (or of `task`): data.n_train for train, data.n_val for validation."""
        d = self.profile.data
        if n is None:
            n = {"train": d.n_train, "validation": d.n_val}.get(split, self.profile.eval.n_items)
        return load(task or d.target, split, n, d.source)

    def score(self, examples: list[Any], label: str = "ground_truth", max_length: int | None = None) -> list[Any]:
        """Token log-probs of the examples' responses under the profile's model (cached by content).

        max_length: default data.max_length (what training sees); analyses of other tasks' data may need more.
        """
        c = self.profile.scoring
        with self.log.timed(f"score_{label}"):
            scored, key = score_examples(
                self.model, self.tokenizer, examples, model_fingerprint=self.model_fingerprint,
                max_length=max_length or self.profile.data.max_length, batch_size=c.batch_size,
                max_tokens_per_batch=c.max_tokens_per_batch,
            )
        self.log.key(f"scores_{label}", key)

        # compute cost of these scores when they were made (cache hits cost nothing now)
        self.log.cost(f"score_{label}", Cache().meta("scores", key).get("wall_s"))
        return scored

    def generated_sets(self, run_name: str = "generate") -> dict[str, list[Any]]:
        """Self-Output and Rephrase training sets made by 03_generate_data for this profile, if it has run."""
        path = self._upstream(run_name) / "run.json"
        if not path.is_file():
            print(f"(no generated data yet: {path} is missing; run 03_generate_data for Self-Output/Rephrase rows)")
            return {}
        sets = RunRecord.load(path).results.sets
        out = {}
        for label, file in sets.items():
            with open(file) as f:
                out[label] = [Example.from_dict(json.loads(line)) for line in f if line.strip()]
        return out

    def load_run(self, name: str) -> RunRecord:
        """run.json of another run of the same profile (an upstream stage); a clear error if it has not run."""
        path = self._upstream(name) / "run.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"run '{name}' has no {path}; run its notebook first (or `make reproduce PROFILE={self.profile.name}`)"
            )
        return RunRecord.load(path)

    def finish(self, results: StageResults | None = None, **fields: Any) -> Path:
        """Write run.json (the run's completion marker) atomically: its stage's typed results (records.py), built
        from `fields` or given, with `fields` added to them; and the total time."""
        cls = results_type(self.stage)
        results = cls(**fields) if results is None else dataclasses.replace(results, **fields)
        self.log.record.run_key = self.key
        self.log.record.timings_s["total"] = round(time.perf_counter() - self.started, 3)
        return self.log.write(results)


def start(
    stage: str,
    profile: str = "cpu-demo",
    overrides: str = "",
    run_name: str = "",
    results_dir: str = "",
    run_key: str = "",
) -> Run:
    """Resolve and validate the profile, seed everything, and prepare the run folder."""
    prof = load_profile(profile, overrides or None)
    seed_everything(prof.seed)
    interactive = not run_key and not results_dir  # the pipeline always passes both
    run = Run(prof, run_name or stage, stage, results_root(prof.name, results_dir), run_key, interactive=interactive)
    # what the report holds ablation runs to: the profile's own setting, before this run's overrides
    base = load_profile(profile) if overrides else prof
    run.log.record.profile_setting = {"learning_rate": base.training.learning_rate,
                                          "finetune": base.training.finetune}
    run.dir.mkdir(parents=True, exist_ok=True)
    stale = run.dir / "run.json"
    if stale.exists():  # the completion marker is rewritten only when this run finishes
        stale.unlink()
    return run
