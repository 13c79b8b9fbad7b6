"""`train`: fine-tune a model on prepared data (input_ids + labels, -100 = not trained), cached.

Every method (ground truth, STM, random, low, quantile, DPF and STM+DPF masking; Self-Output, its correctness
ablation and Rephrase data) goes through the one entry point `train`: methods differ only in their dataset, which
`sft.prepare_sft_data` builds for the 04_sft notebook and the command line. The trainer itself (TRL's SFTTrainer
with stmkit's loss) is `stmkit.trainer`. What this module guarantees, and why:

- Labels are used as given. TRL 1.16 treats a dataset with an `input_ids` column as already processed and a
  `labels` column as final ("left as is", `SFTTrainer._prepare_dataset`); its `DataCollatorForLanguageModeling`
  pads `input_ids` with the pad token and `labels` with -100 on the right. The trainer passes `max_length=None` so
  TRL neither truncates (our rendering already did, and counted it) nor runs its filter that silently drops examples
  whose labels are all -100. Such examples are refused here instead (`check_dataset`), and the number of examples
  the trainer holds is checked against what we passed.
- Same examples, same order: the sampler is seeded by the training seed only, so ground truth and STM runs of one
  dataset see the same examples in the same order for the same number of steps; the order is recorded.
- Adapters are standard PEFT folders. `adapter_config.json`'s `base_model_name_or_path` is portable: the Hugging Face
  id for hub models, the stmkit registry name for the embedded and tiny models (resolve it with
  `adapters.load_trained`, or pass the resolved folder as lm-evaluation-harness's `pretrained=`), or the path given
  for local folders. `AutoPeftModelForCausalLM.from_pretrained(dir)` works whenever that reference resolves in
  transformers (hub ids, paths); `adapters.lm_eval_model_args(dir)` prints the `--model_args` string for
  lm-evaluation-harness.
- Cached: a trained model is keyed by the training config, the data (input_ids + labels, in order), the model
  fingerprint, seed, precision and world size (and the starting adapter's fingerprint for continual fine-tuning);
  a rerun with nothing changed trains nothing.
- Continual fine-tuning (paper Table 19): `train(init_adapter=...)` merges an earlier run's adapter into the freshly
  loaded base and trains a new adapter on top; the folder records the starting adapter (`stmkit_model.json`) and
  `adapters.load_trained` / `adapters.trained_model` merge it again before the new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import lm
from .adapters import adapter_fingerprint, base_reference, write_model_info
from .cache import Cache, atomic_write_json, content_key, verify_entry_of
from .config import TrainingConfig
from .models import fingerprint, pick_device, pick_dtype
from .progress import bar as progress_bar

# torch, datasets, pandas, accelerate and the trainer (TRL, PEFT) are imported where they are used: the readers of
# TrainResult and RESULT_FILE (curves, the report) should not pay their seconds of import time.

TRAINING_VERSION = 1
RESULT_FILE = "train_result.json"


class TrainingDataError(ValueError):
    """A training dataset that would train wrongly or silently lose examples; the message names the row."""


# ---------------------------------------------------------------------------------------------------------------
# Data


def as_dataset(data: Any, name: str = "train_dataset") -> Any:
    """A datasets.Dataset with input_ids and labels from a MaskResult, a Dataset or a list of dicts."""
    import datasets

    if hasattr(data, "to_dataset"):  # stmkit.masking.MaskResult
        return data.to_dataset()
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, Sequence):
        if not data:
            raise TrainingDataError(f"{name} is empty; nothing to train on")
        return datasets.Dataset.from_list([dict(r) for r in data])
    raise TrainingDataError(
        f"{name} is a {type(data).__name__}; pass a MaskResult (stmkit.masking), a datasets.Dataset or a list of "
        "dicts with input_ids and labels"
    )


def check_dataset(ds: Any, name: str = "train_dataset") -> dict[str, int]:
    """Refuse data TRL would mistrain or drop; return counts of examples and tokens.

    Each row needs input_ids and labels of equal length, labels either -100 or the input token at that position,
    and at least one trained token after the first position (a causal LM never predicts position 0).
    """
    missing = {"input_ids", "labels"} - set(ds.column_names)
    if missing:
        raise TrainingDataError(
            f"{name} has no {sorted(missing)} column(s) (columns: {ds.column_names}); build it with "
            "stmkit.masking.mask_dataset(...).to_dataset()"
        )
    if len(ds) == 0:
        raise TrainingDataError(f"{name} is empty; nothing to train on")
    ids_col = ds["id"] if "id" in ds.column_names else None
    n_tokens = n_trained = 0
    for i, (ids, labels) in enumerate(zip(ds["input_ids"], ds["labels"], strict=True)):
        where = f"{name} row {i}" + (f" (id {ids_col[i]!r})" if ids_col is not None else "")
        if len(ids) != len(labels):
            raise TrainingDataError(f"{where}: {len(ids)} input_ids but {len(labels)} labels; they must align")
        trained = counts_trained(labels)
        if trained == 0:
            raise TrainingDataError(
                f"{where}: every label is -100, so TRL would drop the example silently. Mask with "
                "masking.fully_masked='keep_eos' (keeps the end-of-turn token trainable) or 'drop' (removes and "
                "counts it) before training"
            )
        bad = next((t for t, (a, b) in enumerate(zip(ids, labels, strict=True)) if b != lm.IGNORE and a != b), None)
        if bad is not None:
            raise TrainingDataError(
                f"{where}: label {labels[bad]} at position {bad} differs from the input token {ids[bad]}; labels "
                "must be the input_ids with untrained positions set to -100 (TRL shifts them itself)"
            )
        n_tokens += len(ids)
        n_trained += trained
    return {"examples": len(ds), "tokens": n_tokens, "trained_tokens": n_trained}


def dataset_fingerprint(ds: Any) -> str:
    """Hash of the rows' input_ids and labels, in order (what training sees)."""
    return content_key("train-data", 1, input_ids=ds["input_ids"], labels=ds["labels"])


def counts_trained(labels: Sequence[int]) -> int:
    """Trained (predicted) tokens of one row: labels after the first position that are not -100."""
    return sum(1 for lab in labels[1:] if lab != lm.IGNORE)



# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class TrainResult:
    """A trained adapter (or full model) and what happened while training it."""

    dir: Path  # the cache entry (or out_dir): adapter/, checkpoints/, train_result.json
    key: str
    finetune: str
    base_model: str  # portable base reference (registry name, hub id or path)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "dir"} (dir relative)
    order: list[list[int]] = field(default_factory=list)  # dataset rows of each micro-batch (main rank's shard)
    cached: bool = False

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    def checkpoint_dirs(self) -> list[Path]:
        return [self.dir / c["dir"] for c in self.checkpoints]

    def train_losses(self) -> Any:
        """Per-step training loss: DataFrame with step, epoch, loss (and kl/ce for KL runs)."""
        import pandas as pd

        rows = [
            {k: h[k] for k in ("step", "epoch", "loss", "learning_rate", "kl_to_base", "ce") if k in h}
            for h in self.log_history
            if "loss" in h and "train_runtime" not in h
        ]
        return pd.DataFrame(rows, columns=None if rows else ["step", "epoch", "loss"])

    def eval_losses(self) -> Any:
        """Validation loss at step 0 (the base model), each checkpoint and each epoch end: step, epoch, eval_loss."""
        import pandas as pd

        rows = [{"step": h["step"], "epoch": h.get("epoch", 0.0), "eval_loss": h["eval_loss"]}
                for h in self.log_history if "eval_loss" in h]
        return pd.DataFrame(rows, columns=["step", "epoch", "eval_loss"])

    def summary(self) -> dict[str, Any]:
        """The scalar results a notebook records in run.json."""
        ev = self.eval_losses()
        return {
            "key": self.key,
            "cached": self.cached,
            "finetune": self.finetune,
            "adapter_dir": str(self.adapter_dir),
            **{k: v for k, v in self.record.items() if not isinstance(v, list | dict)},
            "final_eval_loss": float(ev["eval_loss"].iloc[-1]) if len(ev) else None,
            "checkpoints": [str(p) for p in self.checkpoint_dirs()],
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dir")
        d.pop("cached")
        return d

    @classmethod
    def load(cls, folder: Path, cached: bool = True) -> TrainResult:
        data = json.loads((Path(folder) / RESULT_FILE).read_text())
        return cls(dir=Path(folder), cached=cached, **data)


# ---------------------------------------------------------------------------------------------------------------
# What a run trains with: precision, cache key, the resolved run


@dataclass(frozen=True)
class Precision:
    """How a run trains: the dtype its weights load in, and bf16 or fp16 autocast."""

    load_dtype: Any  # a torch.dtype
    bf16: bool = False
    fp16: bool = False
    mixed: str = "no"  # TrainingConfig.mixed_precision

    @property
    def name(self) -> str:
        """As the run's record and cache key say it: 'float32', 'bf16' (bf16 autocast with the model loaded per
        model.dtype, the GPU default), 'fp16', or 'float32+bf16-autocast' (TrainingConfig.mixed_precision)."""
        if self.mixed == "bf16":
            return "float32+bf16-autocast"
        return "bf16" if self.bf16 else "fp16" if self.fp16 else str(self.load_dtype).replace("torch.", "")


def choose_precision(finetune: str, device: str, dtype: str, mixed: str = "no") -> Precision:
    """fp32 on CPU and bf16 on GPU under dtype 'auto'; bf16 weights on CPU only when asked for (the rehearsal runs
    the paper's precision there). mixed 'bf16': fp32 weights under bf16 autocast (TrainingConfig.mixed_precision)."""
    import torch

    want = pick_dtype(dtype, device)
    if device == "cpu" and want == torch.float16:
        raise ValueError(f"training on CPU cannot use float16 (model.dtype {dtype}); use 'auto', 'float32' or 'bfloat16'")
    if mixed == "bf16":
        if want == torch.float16:
            raise ValueError(f"training.mixed_precision bf16 with model.dtype {dtype}: use float32, bfloat16 or auto")
        return Precision(torch.float32, bf16=True, mixed=mixed)
    # Full fine-tuning keeps fp32 master weights (AdamW on bf16 weights loses small updates) and autocasts.
    load = torch.float32 if finetune == "full" else want
    return Precision(load, bf16=want == torch.bfloat16, fp16=want == torch.float16, mixed=mixed)


def training_key(cfg: TrainingConfig, data_fp: str, eval_fp: str | None, model_fp: str, seed: int,
                 precision: str, world_size: int = 1, init_adapter_fp: str | None = None) -> str:
    """Cache key of a trained model: exactly what determines it (plus the starting adapter, when continual)."""
    extra = {} if init_adapter_fp is None else {"init_adapter": init_adapter_fp}  # earlier keys stay valid
    config = asdict(cfg)
    # the loss settings joined the config later: at their defaults they stay out, so earlier keys stay valid
    if cfg.loss != "eaft":
        config.pop("eaft_top_k")
        config.pop("eaft_alpha")
    if cfg.loss == "nll":
        config.pop("loss")
    if cfg.mixed_precision == "no":  # joined later too; the precision string carries it otherwise
        config.pop("mixed_precision")
    if not cfg.save_at_steps:
        config.pop("save_at_steps")
    return content_key(
        "adapter", TRAINING_VERSION, config=config, data=data_fp, eval=eval_fp, model=model_fp, seed=seed,
        precision=precision, world_size=world_size, **extra,
    )


@dataclass(frozen=True)
class TrainSpec:
    """One training run, resolved: what `trainer.build` makes a trainer from."""

    model_name: str
    train_ds: Any  # a datasets.Dataset that passed check_dataset
    cfg: TrainingConfig
    device: str  # resolved: cpu, cuda, mps, xpu
    precision: Precision
    tokenizer: Any = None  # None: the model's own
    eval_ds: Any = None
    seed: int = 0
    revision: str | None = None
    progress: bool = True
    init_adapter: str | os.PathLike | None = None  # merged into the base before training (continual fine-tuning)


@dataclass(frozen=True)
class _Job:
    """A training run and what its result records: cache key, base reference, counts, the starting adapter."""

    spec: TrainSpec
    key: str
    base_ref: str
    model_fp: str
    counts: dict[str, int]
    init: tuple[str, str] | None  # (folder, fingerprint) of the adapter merged into the base first


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def train(
    model_name_or_path: str,
    train_dataset: Any,
    cfg: TrainingConfig,
    *,
    tokenizer: Any = None,
    eval_dataset: Any = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    cache: Cache | None | bool = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    init_adapter: str | os.PathLike | None = None,
) -> TrainResult:
    """Fine-tune a model on prepared data with TRL's SFTTrainer; cached by everything that determines the result.

    train_dataset: a MaskResult, Dataset or list of dicts with input_ids and labels (-100 = not trained).
    eval_dataset: the same kind, for the validation-loss curve (usually ground-truth labels for every method).
    cache: a Cache (default: the user's), or False to train into out_dir without caching.
    init_adapter: continual fine-tuning (paper Table 19): a PEFT adapter folder (an earlier run's adapter_dir) merged
    into the freshly loaded base before the new LoRA/DoRA adapter (or full fine-tuning) starts; its fingerprint is
    part of the cache key.
    """
    import torch

    seed = cfg.seed if seed is None else seed
    ds = as_dataset(train_dataset, "train_dataset")
    counts = check_dataset(ds, "train_dataset")
    eval_ds = as_dataset(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    if eval_ds is not None:
        check_dataset(eval_ds, "eval_dataset")
    dev = pick_device(device)
    precision = choose_precision(cfg.finetune, dev, dtype, cfg.mixed_precision)
    model_fp = fingerprint(model_name_or_path)
    init = None
    if init_adapter is not None:
        init_dir = Path(init_adapter).resolve()
        verify_entry_of(init_dir)
        try:
            init = (str(init_dir), adapter_fingerprint(init_dir))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"init_adapter: {exc} (continual fine-tuning starts from a LoRA/DoRA adapter; "
                                    "a fully fine-tuned model folder cannot be merged)") from exc
    key = training_key(
        cfg, dataset_fingerprint(ds), dataset_fingerprint(eval_ds) if eval_ds is not None else None, model_fp,
        seed, f"{dev}:{precision.name}", _world_size(), init[1] if init else None,
    )
    base_ref = base_reference(model_name_or_path)
    spec = TrainSpec(model_name_or_path, ds, cfg, dev, precision, tokenizer=tokenizer, eval_ds=eval_ds, seed=seed,
                     revision=revision, progress=progress, init_adapter=init[0] if init else None)
    job = _Job(spec, key, base_ref, model_fp, counts, init)
    if cache is False:
        if out_dir is None:
            raise ValueError("train(cache=False) needs out_dir: where to write the adapter")
        folder = Path(out_dir)
        if not _is_main():
            return _train_other_rank(folder, job)
        folder.mkdir(parents=True, exist_ok=True)
        return _train_into(folder, job)
    cache = cache if isinstance(cache, Cache) else Cache()
    hit = cache.get("adapters", key)  # content-verified: a corrupted adapter is refused, never reused
    if hit is not None:
        return TrainResult.load(hit)
    if not _is_main():
        return _train_other_rank(cache.path("adapters", key), job)
    meta = {"model": base_ref, "finetune": cfg.finetune, "examples": counts["examples"], "torch": torch.__version__}
    if init is not None:
        meta["init_adapter"] = init[0]
    with cache.put("adapters", key, meta=meta) as tmp:
        _train_into(tmp, job)
    return TrainResult.load(cache.path("adapters", key), cached=False)


def _train_other_rank(final: Path, job: _Job) -> TrainResult:
    """A non-main rank trains alongside the main one in a scratch folder; only the main rank writes results."""
    with tempfile.TemporaryDirectory(prefix="stmkit-rank-") as tmp:
        _train_into(Path(tmp), job)
    return TrainResult(final, job.key, job.spec.cfg.finetune, job.base_ref)


def _train_into(folder: Path, job: _Job) -> TrainResult:
    """Build the trainer, train, save adapter + checkpoints + train_result.json into folder."""
    import torch

    # lazy: the trainer module loads torch, TRL and PEFT (~4 s), which planning and the report never need
    from .trainer import Checkpoints, build, save_weights, time_evaluations

    spec, cfg, counts, init = job.spec, job.spec.cfg, job.counts, job.init
    trainer = build(spec, folder)
    collator = trainer.data_collator
    eval_rows = trainer.eval_dataset
    ckpt = Checkpoints(trainer, folder, cfg, eval_rows is not None)
    trainer.add_callback(ckpt)
    initial = []
    if eval_rows is not None:  # epoch 0: the base model's validation loss (Figures 4 and 7 start there)
        initial = [{"eval_loss": trainer.evaluate()["eval_loss"], "epoch": 0.0, "step": 0}]
    eval_time = time_evaluations(trainer)
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0 - eval_time[0]  # training only, for tokens/s and s/step
    save_weights(trainer, folder / "adapter")
    for c in ckpt.saved + [{"dir": "adapter"}]:
        (folder / c["dir"] / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing loads it
    for c in ckpt.saved:
        write_model_info(folder / c["dir"], job.base_ref, cfg.finetune, job.model_fp, init)
    write_model_info(folder / "adapter", job.base_ref, cfg.finetune, job.model_fp, init)
    shutil.rmtree(folder / "_trainer", ignore_errors=True)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    per_epoch = ckpt.per_epoch
    last_epoch = losses[-min(per_epoch, len(losses)):] if losses else []
    seen = [r for mb in collator.order for r in mb]
    tokens_seen = collator.tokens
    if _world_size() > 1:  # each rank saw its shard; count what all ranks saw together
        from accelerate.utils import gather_object

        seen = gather_object(seen)
        tokens_seen = sum(gather_object([tokens_seen]))
    trained_seen = sum(counts_trained(spec.train_ds["labels"][r]) for r in seen)
    record = {
        "examples": counts["examples"],
        "tokens": counts["tokens"],
        "trained_tokens": counts["trained_tokens"],
        "examples_seen": len(seen),
        "distinct_examples_seen": len(set(seen)),
        "steps": trainer.state.global_step,
        "steps_per_epoch": per_epoch,
        "epochs": float(trainer.state.epoch or 0.0),
        "train_wall_s": round(wall, 3),
        "tokens_per_s": round(tokens_seen / wall, 1) if wall else None,
        "trained_tokens_per_s": round(trained_seen / wall, 1) if wall else None,
        "s_per_step": round(wall / max(trainer.state.global_step, 1), 4),
        "step_times_s": [round(t, 4) for t in ckpt.step_times],
        "compact_lm_head": trainer.compact_head,
        "final_train_loss": losses[-1] if losses else None,
        "last_epoch_train_loss": sum(last_epoch) / len(last_epoch) if last_epoch else None,
        "mean_train_loss": out.training_loss,
        "world_size": _world_size(),
        "device": spec.device,
        "precision": spec.precision.name,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "seed": spec.seed,
        "init_adapter": init[0] if init else None,
        "init_adapter_fingerprint": init[1] if init else None,
        "config": asdict(cfg),
    }
    if record["distinct_examples_seen"] != counts["examples"] and record["epochs"] >= 1:
        raise RuntimeError(
            f"training saw {record['distinct_examples_seen']} distinct examples of {counts['examples']} in "
            f"{record['epochs']:.2f} epochs; some examples were skipped"
        )
    # fp16's loss scaler skips steps whose gradients overflowed, and logs their grad_norm as inf/NaN: by design,
    # recorded as None (train_result.json, like every cached file, holds no non-finite number).
    history = [{**h, "grad_norm": None} if isinstance(h.get("grad_norm"), float) and not math.isfinite(h["grad_norm"])
               else h for h in initial + trainer.state.log_history]
    result = TrainResult(folder, job.key, cfg.finetune, job.base_ref, history, record,
                         ckpt.saved, collator.order, cached=False)
    atomic_write_json(folder / RESULT_FILE, result.to_json())
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------------------------
# Measurements on trained models


def _trained_batches(ds: Any, batch_size: int, device: Any, desc: str = "", progress: bool = False) -> Any:
    """(input_ids, attention_mask, labels, keep) per batch; keep marks positions whose next token is trained."""
    rows = list(zip(ds["input_ids"], ds["labels"], strict=True))
    for start in progress_bar(range(0, len(rows), batch_size), desc=desc, disable=not progress):
        chunk = rows[start : start + batch_size]
        ids, mask = lm.pad([r[0] for r in chunk], 0)
        labels, _ = lm.pad([r[1] for r in chunk], lm.IGNORE)
        keep, _ = lm.trained_positions(labels)
        yield ids.to(device), mask.to(device), labels.to(device), keep.to(device)


def kl_to_base(model: Any, data: Any, base_model: Any = None, batch_size: int = 8, progress: bool = False) -> float:
    """Mean KL(p_base || p_tuned) per trained token of data; base = adapter disabled (or base_model if given)."""
    import torch

    ds = as_dataset(data, "data")
    if base_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError("kl_to_base: model has no adapter to disable; pass base_model for a fully fine-tuned model")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for ids, mask, _, keep in _trained_batches(ds, batch_size, device, "KL to base", progress):
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float(), -1)
            ctx = model.disable_adapter() if base_model is None else contextlib.nullcontext()
            ref = model if base_model is None else base_model
            with ctx:
                logp0 = torch.log_softmax(ref(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float(), -1)
            total += float((logp0.exp() * (logp0 - logp)).sum())
            count += int(keep.sum())
    model.train(was_training)
    return total / max(count, 1)


def loss_on(model: Any, data: Any, batch_size: int = 8) -> float:
    """Mean NLL per trained token of data under model (teacher-forced)."""
    import torch

    ds = as_dataset(data, "data")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask, labels, keep in _trained_batches(ds, batch_size, device):
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
            tgt = lm.trained_positions(labels)[1]
            total += float(-lm.chosen_logprobs(logits, tgt)[0].sum())
            count += int(tgt.numel())
    return total / max(count, 1)
