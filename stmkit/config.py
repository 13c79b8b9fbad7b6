"""YAML profiles -> frozen, validated dataclasses. Unknown keys, wrong types and impossible values are errors."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .lm import MIXED_PRECISIONS
from .tasks.registry import task_names

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A profile, sweep or override is invalid; the message names the file and key."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # registry name, Hugging Face id or local folder
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    revision: str | None = None
    # rehearsals: the paper model this stand-in takes the place of (a derived sweep sets it); the report files the
    # run's results under that model, labelled as a stand-in's
    stands_in_for: str | None = None


@dataclass(frozen=True)
class DataConfig:
    target: str = "mbpp"  # target task of fine-tuning
    source: Literal["embedded", "hf", "hub-fixture"] = "embedded"  # embedded: PyPI test sets, carved; hf: the hub; hub-fixture: hub-schema rows (rehearsal)
    n_train: int = 120  # training examples taken from the train split (0 = all)
    n_val: int = 20  # validation examples for the validation-loss curve (0 = none)
    max_length: int = 384  # prompt+response tokens; longer examples are truncated from the right and counted

    def validate(self, where: str) -> None:
        _check(self.n_train >= 0, where, "n_train", "must be >= 0")
        _check(self.n_val >= 0, where, "n_val", "must be >= 0")
        _check(self.max_length >= 16, where, "max_length", "must be >= 16")


@dataclass(frozen=True)
class ScoringConfig:
    batch_size: int = 8
    max_tokens_per_batch: int = 8192  # length-sorted batches are capped by padded tokens too

    def validate(self, where: str) -> None:
        _check(self.batch_size >= 1, where, "batch_size", "must be >= 1")
        _check(self.max_tokens_per_batch >= 16, where, "max_tokens_per_batch", "must be >= 16")


@dataclass(frozen=True)
class MaskingConfig:
    rule: Literal["none", "threshold", "quantile", "random", "low", "dpf", "stm+dpf", "conflict"] = "threshold"
    tau: float = 2.5  # PPL threshold; inf = no masking
    quantile: float = 0.2  # share of response tokens masked by the `quantile` rule
    dpf_delta: float = 0.0  # dpf, stm+dpf: mask tokens whose PPL rose by more than this under the adapter
    fully_masked: Literal["keep_eos", "drop"] = "keep_eos"  # what happens to an example with nothing left
    # never mask the end-of-turn token, so the model still learns where answers stop (not in the paper)
    train_end_of_turn: bool = False
    seed: int = 0
    # conflict: mask tokens with ppl > tau only where the top-20 predictive entropy / log 20 is below this (the
    # model was confident and contradicted: EAFT's "confident conflicts"); 0.5 = the middle of the scale
    conflict_entropy: float = 0.5

    def validate(self, where: str) -> None:
        _check(self.tau > 1.0, where, "tau", "must be > 1 (token perplexity is always >= 1); use inf for none")
        _check(0.0 < self.conflict_entropy <= 1.0, where, "conflict_entropy",
               "must be in (0, 1] (top-K entropy divided by log K)")
        _check(0.0 <= self.quantile <= 1.0, where, "quantile", "must be in [0, 1]")


# transformers' SchedulerType values that need no extra arguments
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


@dataclass(frozen=True)
class TrainingConfig:
    finetune: Literal["lora", "dora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    kl_coef: float = 0.0  # KL-to-base regulariser (paper Table 8); penalises divergence from the base
    # penalty: loss = CE + kl_coef * KL(base || tuned), the paper's intent. reference: CE - kl_coef * KL, what the
    # reference implementation computes (it rewards divergence); offered only to reproduce that code.
    kl_mode: Literal["penalty", "reference"] = "penalty"
    # per-token loss weight: nll (every trained token 1), dft (its own detached probability: Dynamic Fine-Tuning,
    # arXiv 2508.05629, TRL's loss_type="dft"), eaft (its detached top-K entropy / log K, to the power eaft_alpha:
    # Entropy-Adaptive Fine-Tuning, arXiv 2601.02151)
    loss: Literal["nll", "dft", "eaft"] = "nll"
    eaft_top_k: int = 20
    eaft_alpha: float = 1.0
    save_every_epochs: float = 0.0  # checkpoint (and validation loss) every this many epochs; 0 = per epoch only
    save_every_steps: int = 0  # the same in optimizer steps (overrides save_every_epochs when > 0)
    # checkpoints at these optimizer steps as well (e.g. log-spaced 5, 10, 20, 40, 80 for a forgetting curve)
    save_at_steps: tuple[int, ...] = ()
    optim: Literal["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = "adamw_torch"
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    gradient_checkpointing: bool = False  # saves GPU memory on large models; slower, and pointless at 135M on CPU
    # Batches of similar length (transformers' LengthGroupedSampler: random groups of ~5 batches, sorted inside):
    # less padding, a different example order. cpu-demo's MBPP batches: 1.30x padded/real tokens at random, 1.07x
    # grouped. Off by default (the paper's trainer samples at random).
    group_by_length: bool = False
    # bf16: matmuls of training run in bfloat16 under autocast, weights and optimizer stay fp32 (mixed precision,
    # the usual GPU recipe). On this kit's AMX reference machine a step takes 0.74x the fp32 time (make bench,
    # bench_training); the adapters match fp32 training far inside seed-to-seed noise (bench_precision). Scoring
    # and evaluation stay in model.dtype. "no": training in model.dtype.
    mixed_precision: Literal["no", "bf16"] = "no"
    seed: int = 0

    def validate(self, where: str) -> None:
        _check(self.lora_r >= 1, where, "lora_r", "must be >= 1")
        _check(0.0 <= self.lora_dropout < 1.0, where, "lora_dropout", "must be in [0, 1)")
        _check(self.learning_rate > 0, where, "learning_rate", "must be > 0")
        _check(self.epochs > 0 or self.max_steps > 0, where, "epochs", "must be > 0 (or set max_steps)")
        _check(self.batch_size >= 1, where, "batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, where, "grad_accum", "must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, where, "warmup_ratio", "must be in [0, 1)")
        _check(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        _check(self.kl_coef >= 0, where, "kl_coef", "must be >= 0 (it penalises divergence from the base)")
        _check(
            self.kl_coef == 0 or self.finetune != "full", where, "kl_coef",
            "needs finetune lora or dora (the frozen base is the model with its adapter disabled)",
        )
        _check(self.lora_alpha > 0, where, "lora_alpha", "must be > 0")
        _check(self.eaft_top_k >= 2, where, "eaft_top_k", "must be >= 2 (the entropy of the top K tokens)")
        _check(self.eaft_alpha > 0, where, "eaft_alpha", "must be > 0")
        _check(self.scheduler in SCHEDULERS, where, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        _check(self.save_every_epochs >= 0, where, "save_every_epochs", "must be >= 0 (0 = once per epoch)")
        _check(self.save_every_steps >= 0, where, "save_every_steps", "must be >= 0 (0 = use save_every_epochs)")
        _check(self.max_grad_norm >= 0, where, "max_grad_norm", "must be >= 0 (0 = no clipping)")
        _check(all(isinstance(s, int) and s >= 1 for s in self.save_at_steps), where, "save_at_steps",
               "must be a list of optimizer steps >= 1")
        _check(self.max_steps == -1 or self.max_steps > 0, where, "max_steps", "must be -1 (use epochs) or > 0")
        _check(self.mixed_precision in MIXED_PRECISIONS, where, "mixed_precision", f"must be one of {MIXED_PRECISIONS}")


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("mbpp", "gsm8k", "arc_challenge", "arc_easy", "piqa", "sciq")
    n_items: int = 100  # items per task from its test split (0 = all)
    max_new_tokens: int = 256
    batch_size: int = 8
    drift_prompts: int = 20  # prompts per non-target task for the KL drift signal
    # tasks whose prompts drift is measured on; () = the non-target tasks of `tasks`. Set it when evaluations with
    # different task lists must measure drift on the same prompts (the verdict pairs seeds prompt by prompt).
    drift_tasks: tuple[str, ...] = ()
    drift_max_new_tokens: int = 96  # length cap of the base model's greedy answers that drift is measured on
    bootstrap: int = 1000  # bootstrap resamples for confidence intervals
    sandbox_timeout_s: float = 10.0
    bird_dir: str = ""  # BIRD dev folder (dev.json + dev_databases/); "" = $STMKIT_BIRD_DIR, else the stand-in
    ifeval_path: str = ""  # IFEval's input_data.jsonl; "" = $STMKIT_IFEVAL_PATH, else the stand-in (tasks/ifeval.py)
    # Gold-answer NLL (stmkit.gold_nll), the powered forgetting measure: non-target tasks and the target task
    gold_tasks: tuple[str, ...] = ()  # non-target tasks; () = none (the target is measured when gold_target_items)
    gold_items: int = 200  # first test items per non-target task
    gold_target_items: int = 0  # first test items of the target task (0 = not measured)
    # "bf16": the forward passes of the forgetting measures (gold-answer NLL, KL drift) under bf16 autocast, fp32
    # weights: 2.5-3.5x faster on a CPU with AMX; gold NLL means equal to fp32 within 0.001, KL 2-5% lower (make
    # bench, bench_precision): well inside seed-to-seed variation.
    # Accuracy and generated answers stay in model.dtype.
    measures_mixed_precision: Literal["no", "bf16"] = "no"

    @property
    def task_data(self) -> dict[str, str]:
        """A local copy of a task's data by task name (the loaders of BIRD and IFEval read them)."""
        return {name: path for name, path in (("bird", self.bird_dir), ("ifeval", self.ifeval_path)) if path}

    def validate(self, where: str) -> None:
        _check(self.n_items >= 0, where, "n_items", "must be >= 0")
        _check(self.max_new_tokens >= 1, where, "max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, where, "batch_size", "must be >= 1")
        _check(self.sandbox_timeout_s > 0, where, "sandbox_timeout_s", "must be > 0")
        _check(self.drift_prompts >= 0, where, "drift_prompts", "must be >= 0 (0 = no drift measurement)")
        _check(self.drift_max_new_tokens >= 1, where, "drift_max_new_tokens", "must be >= 1")
        _check(self.bootstrap >= 1, where, "bootstrap", "must be >= 1")
        for i, spec in enumerate(self.tasks):
            _check_task_spec(spec, where, f"tasks[{i}]")
        for i, spec in enumerate(self.drift_tasks):
            _check_task_spec(spec, where, f"drift_tasks[{i}]")
        for i, spec in enumerate(self.gold_tasks):
            _check_task_spec(spec, where, f"gold_tasks[{i}]")
        _check(self.gold_items >= 2, where, "gold_items", "must be >= 2 (intervals resample items)")
        _check(self.gold_target_items >= 0, where, "gold_target_items", "must be >= 0 (0 = not measured)")
        _check(self.measures_mixed_precision in MIXED_PRECISIONS, where, "measures_mixed_precision",
               f"must be one of {MIXED_PRECISIONS}")
        if self.bird_dir:
            _check(Path(self.bird_dir).expanduser().is_dir(), where, "bird_dir",
                   f"is {self.bird_dir!r}, which is not a folder; point it at the unpacked BIRD dev set")
        if self.ifeval_path:
            _check(Path(self.ifeval_path).expanduser().is_file(), where, "ifeval_path",
                   f"is {self.ifeval_path!r}, which is not a file; point it at IFEval's input_data.jsonl")


def _check_task_spec(spec: str, where: str, key: str) -> None:
    """A task list entry is a registered task name, optionally ':generate' or ':loglik'."""
    name, _, mode = spec.partition(":")
    names = task_names()
    _check(name.lower().replace("-", "_") in names, where, key,
           f"unknown task '{name}' (tasks: {', '.join(sorted(names))})")
    _check(mode in ("", "generate", "loglik"), where, key, f"has mode {mode!r}; use ':generate' or ':loglik'")


@dataclass(frozen=True)
class GenerationConfig:
    n_samples: int = 8  # Self-Output samples per prompt (paper: 32)
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    generator: str | None = None  # model that writes the labels (None = the base model)
    # rehearsals only: keep Self-Output/Rephrase answers that fail their check (stand-ins never answer correctly,
    # and an empty set would stop the runs downstream); the sets say "unverified"
    keep_unverified: bool = False

    def validate(self, where: str) -> None:
        _check(self.n_samples >= 1, where, "n_samples", "must be >= 1")
        _check(self.temperature > 0, where, "temperature", "must be > 0 (sampling)")
        _check(0 < self.top_p <= 1, where, "top_p", "must be in (0, 1]")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    covers: tuple[str, ...] = ()  # paper tables/figures this profile produces, e.g. table02, fig03

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, where: str, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: '{key}' {what}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check value against a type hint (with the few coercions YAML needs); raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: must not be empty")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
            return math.inf
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 2e-5 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (valid keys: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _split_top_level(text: str) -> list[str]:
    """Split "a=1, b=[x, y]" at the commas outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "parse error"
        raise ConfigError(f"{where}: not valid YAML ({problem}); write lists as [a, b] and mappings as "
                          "{k: v}") from None


def parse_overrides(overrides: str | dict[str, Any] | None) -> dict[str, Any]:
    """Overrides as a mapping with dotted keys, or a string "a.b=1, c=[x, y]" / YAML mapping -> nested dict."""
    if not overrides:
        return {}
    if isinstance(overrides, str):
        text = overrides.strip()
        if text.startswith("{"):
            flat = _yaml_value(text, f"overrides {text!r}")
        else:
            flat = {}
            for part in _split_top_level(text):
                if "=" not in part:
                    raise ConfigError(f"override {part!r}: expected key=value (e.g. training.learning_rate=1e-4; "
                                      "a list is key=[a, b])")
                k, v = part.split("=", 1)
                flat[k.strip()] = _yaml_value(v.strip(), f"override {part!r}")
    else:
        flat = dict(overrides)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return nested


def profile_names() -> list[str]:
    """The shipped profiles: configs/<name>.yaml."""
    return sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))


def profile_path(name: str | Path) -> Path:
    """configs/<name>.yaml, or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist (profiles: {', '.join(profile_names())})")
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(f"unknown profile '{name}': no {p} (profiles: {', '.join(profile_names())})")
    return p


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_profile(name: str | Path = "cpu-demo", overrides: str | dict[str, Any] | None = None) -> Profile:
    """Resolve a profile and overrides into a validated, frozen Profile."""
    return _load_profile(profile_path(name), overrides, ())


def _load_profile(path: Path, overrides: str | dict[str, Any] | None, chain: tuple[Path, ...]) -> Profile:
    """load_profile; `chain` holds the files whose `extends:` led here, so that a cycle is named, not recursed."""
    chain = (*chain, path)
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    extends = data.pop("extends", None)
    if extends:
        parent_path = profile_path(extends)
        if parent_path.resolve() in {p.resolve() for p in chain}:
            cycle = " -> ".join(p.name for p in (*chain, parent_path))
            raise ConfigError(f"{chain[0]}: 'extends' makes a cycle: {cycle}; remove one of these 'extends:' lines")
        data = _deep_merge(_load_profile(parent_path, None, chain).to_dict(), data)
    merged = _deep_merge(data, parse_overrides(overrides))
    label = f"{path.name}" + (" (with overrides)" if overrides else "")
    return _build(Profile, merged, label)


def replace(profile: Profile, overrides: str | dict[str, Any]) -> Profile:
    """A copy of profile with overrides applied and re-validated."""
    merged = _deep_merge(profile.to_dict(), parse_overrides(overrides))
    return _build(Profile, merged, f"{profile.name} (with overrides)")
