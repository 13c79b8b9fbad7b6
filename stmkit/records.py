"""Typed run records: what each stage's run.json holds, one dataclass per kind of run.

A notebook's last cell builds its stage's results (`ScoringResults`, `SFTResults`, ...) and `Run.finish` writes them
inside a `RunRecord` (the envelope every run shares: resolved config, seeds, code and package versions, hardware,
timings, cache keys). The report, the verdict and downstream notebooks read run.json back through `RunRecord.load`,
so a field renamed in one place is an error at the next run or test, not a silently missing table row.

The nested values (per-task accuracies, drift summaries, loss curves) stay plain JSON: their shape is owned by the
module that computes them (evaluation, drift, gold_nll, training).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

Rows = list[dict[str, Any]]  # a table as DataFrame.to_dict("records") gives it


class RecordError(ValueError):
    """A run.json that does not match its stage's record type (written by another version of the kit)."""


@dataclass
class StageResults:
    """The results one stage records; subclasses name their stage and list their fields."""

    STAGE: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "run.json") -> StageResults:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise RecordError(f"{where}: results {unknown} are not fields of {cls.__name__} (stage '{cls.STAGE}'); "
                              "it was written by another version of stmkit: rerun it (make reproduce reruns it)")
        return cls(**data)


@dataclass
class TourResults(StageResults):
    """00_tour: the mini fine-tune's masked share, drift and final losses per arm."""

    STAGE: ClassVar[str] = "tour"
    masked_share: float | None = None
    drift_kl: dict[str, float] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoringResults(StageResults):
    """01_score_tokens: Table 1 and every sequence's PPL by data source."""

    STAGE: ClassVar[str] = "score"
    table01: Rows = field(default_factory=list)
    example_id: str | None = None
    share_above_tau: float | None = None
    seq_ppl: dict[str, dict[str, float]] = field(default_factory=dict)  # {source: {example id: PPL}}


@dataclass
class MaskingResults(StageResults):
    """02_mask_tokens: masked share per tau, token categories, the masking rules compared, entropy quadrants."""

    STAGE: ClassVar[str] = "mask"
    tau_share: Rows = field(default_factory=list)
    categories: Rows = field(default_factory=list)
    categories_by_task: dict[str, Rows] = field(default_factory=dict)
    rules: Rows = field(default_factory=list)
    entropy_quadrants: Rows = field(default_factory=list)
    conflict_categories: Rows = field(default_factory=list)


@dataclass
class GenerationResults(StageResults):
    """03_generate_data: the Self-Output/Rephrase training sets (JSONL paths), their statistics, the correctness
    ablation sets, and the mean PPL of every sampled answer per problem."""

    STAGE: ClassVar[str] = "generate"
    sets: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    ablation: dict[str, dict[str, Any]] = field(default_factory=dict)
    sample_ppl: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SFTResults(StageResults):
    """04_sft: the trained model (adapter_dir for LoRA/DoRA, model_dir for full fine-tuning), where its data came
    from, how it was masked and trained, and its weight change."""

    STAGE: ClassVar[str] = "sft"
    method: str = ""
    label: str = ""
    adapter_dir: str | None = None
    model_dir: str | None = None
    # where the data came from (sft.prepare_sft_data)
    reference_run: str | None = None
    init_run: str | None = None
    init_adapter_dir: str | None = None
    correctness: float | None = None
    correct_kept: int | None = None
    incorrect_kept: int | None = None
    ablation_path: str | None = None
    scoring_model: str | None = None
    scoring_fingerprint: str | None = None
    reference_fingerprint: str | None = None
    label_ppl: float | None = None
    # how it was masked and trained
    masking: dict[str, Any] = field(default_factory=dict)  # masking.MaskedDataset.stats
    training: dict[str, Any] = field(default_factory=dict)  # training.TrainResult.summary()
    final_train_loss: float | None = None
    train_losses: Rows = field(default_factory=list)
    eval_losses: Rows = field(default_factory=list)
    delta_w: float | None = None
    delta_w_definition: str = ""
    spectra: Rows = field(default_factory=list)

    def trained_model(self) -> dict[str, Any]:
        """What adapters.trained_model and 05_evaluate load: the model's folder and, when continual, its first
        stage's adapter (only the keys that are set)."""
        keys = ("adapter_dir", "model_dir", "init_adapter_dir", "init_run", "training")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}


@dataclass
class EvaluationResults(StageResults):
    """05_evaluate: per model and task the accuracy summary, transfer (TI/BWT), drift, gold-answer NLL."""

    STAGE: ClassVar[str] = "evaluate"
    tasks: list[str] = field(default_factory=list)
    n_items: int | None = None
    target: str | None = None
    train_runs: list[str] = field(default_factory=list)
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # {model: {task spec: summary}}
    transfer: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift_reference: str | None = None
    self_bleu: dict[str, Any] = field(default_factory=dict)
    checkpoint_accuracy: dict[str, Any] = field(default_factory=dict)
    gold_nll: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegularizationResults(StageResults):
    """06_regularization: Table 8's grid and the adapter each setting trained."""

    STAGE: ClassVar[str] = "regularization"
    table08: Rows = field(default_factory=list)
    delta_w_definition: str = ""
    adapters: dict[str, str] = field(default_factory=dict)


@dataclass
class FiguresResults(StageResults):
    """07_figures: which report outputs were made and which the profile covers but were not."""

    STAGE: ClassVar[str] = "figures"
    made: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    covers_not_made: list[str] = field(default_factory=list)


RESULTS_BY_STAGE: dict[str, type[StageResults]] = {
    cls.STAGE: cls for cls in (TourResults, ScoringResults, MaskingResults, GenerationResults, SFTResults,
                               EvaluationResults, RegularizationResults, FiguresResults)
}


def results_type(stage: str) -> type[StageResults]:
    try:
        return RESULTS_BY_STAGE[stage]
    except KeyError:
        raise RecordError(f"no record type for stage {stage!r}; stages: {', '.join(RESULTS_BY_STAGE)}") from None


@dataclass
class RunRecord:
    """One run.json: what ran (stage, resolved config, seeds, code, packages, hardware), how long, and its results."""

    run: str
    stage: str
    results: StageResults
    config: dict[str, Any] = field(default_factory=dict)  # the resolved profile the run used (Profile.to_dict())
    seeds: dict[str, int] = field(default_factory=dict)
    git_commit: str = "unknown"
    packages: dict[str, str] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    run_key: str = ""  # the pipeline's key for this run ("" when run by hand)
    timings_s: dict[str, float] = field(default_factory=dict)
    cache_keys: dict[str, str] = field(default_factory=dict)
    costs_s: dict[str, float | None] = field(default_factory=dict)  # compute cost of cached inputs when made
    # the profile's own learning rate and fine-tuning mode, before this run's overrides (ablations are held to it)
    profile_setting: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["results"] = self.results.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "run.json") -> RunRecord:
        data = dict(data)
        stage = data.get("stage")
        if not stage:
            raise RecordError(f"{where}: no 'stage'; not a run record")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise RecordError(f"{where}: fields {unknown} are not part of a run record; it was written by another "
                              "version of stmkit: rerun it")
        data.setdefault("run", Path(where).parent.name)
        data["results"] = results_type(stage).from_json(data.get("results") or {}, where)
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        return cls.from_json(json.loads(path.read_text()), str(path))

    # what the report and the verdict ask of every run
    @property
    def model(self) -> dict[str, Any]:
        return self.config.get("model", {})

    @property
    def target(self) -> str | None:
        return self.config.get("data", {}).get("target")

    def with_results(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, results=dataclasses.replace(self.results, **changes))
