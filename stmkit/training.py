"""Fine-tuning with TRL's SFTTrainer on prepared data (input_ids + labels, -100 = not trained).

Every method (ground truth, STM, random, low, quantile, DPF and STM+DPF masking; Self-Output, its correctness
ablation and Rephrase data) goes through the one entry point `train`: methods differ only in their dataset, which
`prepare_sft_data` builds for the 04_sft notebook and the command line. What this module guarantees, and why:

- Labels are used as given. TRL 1.16 treats a dataset with an `input_ids` column as already processed and a
  `labels` column as final ("left as is", `SFTTrainer._prepare_dataset`); its `DataCollatorForLanguageModeling`
  pads `input_ids` with the pad token and `labels` with -100 on the right. We pass `max_length=None` so TRL neither
  truncates (our rendering already did, and counted it) nor runs its filter that silently drops examples whose
  labels are all -100. Such examples are refused here instead, and the number of examples the trainer holds is
  checked against what we passed.
- Loss = mean NLL over the trained tokens of the whole accumulated batch. transformers 5 counts the trained tokens
  of all micro-batches of an optimizer step (`num_items_in_batch`, over `labels[..., 1:]`) and TRL divides each
  micro-batch's summed NLL by it, so gradient accumulation 8x1 equals one batch of 8 (tests/test_training.py).
- Off GPU, TRL projects every position through the LM head and masks afterwards (its compact path needs Triton);
  stmkit computes the same loss projecting only the trained positions (`COMPACT_HEAD_OFF_GPU`; tested equal to
  TRL's), which makes CPU steps ~1.6x faster and lets masking cost nothing. On CUDA, TRL's own path is used.
- Same examples, same order: the sampler is seeded by the training seed only, so ground truth and STM runs of one
  dataset see the same examples in the same order for the same number of steps; the order is recorded.
- KL-to-base (paper Table 8): loss = CE + kl_coef * KL(p_base || p_tuned) on the trained tokens, the base being the
  same PEFT model with its adapter disabled (no second copy). The reference implementation adds `-kl_coef * KL`,
  which rewards divergence; the kit follows the paper's intent (`kl_mode="reference"` reproduces the code).
- Adapters are standard PEFT folders. `adapter_config.json`'s `base_model_name_or_path` is portable: the Hugging Face
  id for hub models, the stmkit registry name for the embedded and tiny models (resolve it with `load_trained`, or
  pass the resolved folder as lm-evaluation-harness's `pretrained=`), or the path given for local folders.
  `AutoPeftModelForCausalLM.from_pretrained(dir)` works whenever that reference resolves in transformers (hub ids,
  paths); `lm_eval_model_args(dir)` prints the `--model_args` string for lm-evaluation-harness.
- Cached: a trained model is keyed by the training config, the data (input_ids + labels, in order), the model
  fingerprint, seed, precision and world size (and the starting adapter's fingerprint for continual fine-tuning);
  a rerun with nothing changed trains nothing.
- DPF and STM+DPF (paper Tables 14 and 18) mask by how much each token's PPL rose under a fine-tuned adapter
  (`reference_run`, normally the ground-truth run), scored with that adapter merged into the base.
- Continual fine-tuning (paper Table 19): `train(init_adapter=...)` merges an earlier run's adapter into the freshly
  loaded base and trains a new adapter on top; the folder records the starting adapter (`stmkit_model.json`) and
  `load_trained` / `adapters.trained_model` merge it again before the new one. STM at such a stage scores the
  data under the model after the previous stage (merged), with its own fingerprint.

Multi-GPU: `accelerate launch --config_file configs/accelerate/<ddp|fsdp|deepspeed_zero3>.yaml -m stmkit.training
--profile paper --method stm` runs the 04_sft pipeline (score, mask, train) on every GPU; see `ACCELERATE_HELP`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import lm
from .adapters import (  # noqa: F401  (training's public names since before adapters.py)
    MODEL_INFO,
    base_model_of,
    base_reference,
    init_adapter_of,
    lm_eval_model_args,
    load_trained,
    write_model_info,
)
from .cache import Cache, atomic_write_json, content_key, verify_entry_of
from .config import TrainingConfig
from .numerics import require_finite

TRAINING_VERSION = 1
IGNORE = lm.IGNORE
RESULT_FILE = "train_result.json"
METHODS = {  # notebook `method` -> (masking rule, training data source)
    "gt": ("none", "ground_truth"),
    "stm": ("threshold", "ground_truth"),
    "random": ("random", "ground_truth"),
    "low": ("low", "ground_truth"),
    "quantile": ("quantile", "ground_truth"),
    "dpf": ("dpf", "ground_truth"),  # needs reference_run: the examples scored under a fine-tuned adapter
    "stm+dpf": ("stm+dpf", "ground_truth"),
    "self_output": ("none", "Self-Output"),
    "rephrase": ("none", "Rephrase"),
    # STM's siblings: every token kept, the loss reweighted (training.loss), or only confident conflicts masked
    "dft": ("none", "ground_truth"),
    "eaft": ("none", "ground_truth"),
    "conflict": ("conflict", "ground_truth"),
}
METHOD_LOSS = {"dft": "dft", "eaft": "eaft"}  # methods that set training.loss (every other method: nll)
METHOD_LABELS = {"gt": "Ground Truth", "stm": "STM", "random": "Random", "low": "Low", "quantile": "Quantile",
                 "dpf": "DPF", "stm+dpf": "STM+DPF", "self_output": "Self-Output", "rephrase": "Rephrase",
                 "dft": "DFT", "eaft": "EAFT", "conflict": "Conflict masking"}
DPF_RULES = ("dpf", "stm+dpf")

ACCELERATE_HELP = """\
Multi-GPU training (configs/accelerate/):
  ddp.yaml             data parallel, one full model copy per GPU (LoRA/DoRA on models that fit one GPU)
  fsdp.yaml            FSDP2, parameters/gradients/optimizer sharded (full fine-tuning of 7-9B models)
  deepspeed_zero3.yaml DeepSpeed ZeRO-3 (needs `pip install deepspeed`), the same sharding via DeepSpeed
Set num_processes in the file (or --num_processes N) to the number of GPUs, then e.g.:
  accelerate launch --config_file configs/accelerate/ddp.yaml -m stmkit.training \\
      --profile paper --overrides "model.name=llama-3-8b-instruct" --method stm --run-name sft-stm
training.batch_size is per GPU: the effective batch is batch_size x GPUs x grad_accum, and the world size is
part of the adapter's cache key. Every rank scores (the main rank first, the others read its cache), masks
and trains; only the main rank writes the adapter, run.json and the cache entry.
"""


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
        trained = sum(1 for lab in labels[1:] if lab != IGNORE)
        if trained == 0:
            raise TrainingDataError(
                f"{where}: every label is -100, so TRL would drop the example silently. Mask with "
                "masking.fully_masked='keep_eos' (keeps the end-of-turn token trainable) or 'drop' (removes and "
                "counts it) before training"
            )
        bad = next((t for t, (a, b) in enumerate(zip(ids, labels, strict=True)) if b != IGNORE and a != b), None)
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
# Model references


# ---------------------------------------------------------------------------------------------------------------
# Trainer pieces


# TRL projects only the trained positions through the LM head on CUDA/XPU (its Triton path); elsewhere it projects
# every position and masks afterwards. On those devices stmkit computes the same loss with the LM head applied to the
# trained positions only (transformers' `logits_to_keep` mask), so prompt and masked tokens cost no head compute.
COMPACT_HEAD_OFF_GPU = True


def token_weights(loss: str, logits: Any, token_logp: Any, top_k: int = 20, alpha: float = 1.0) -> Any:
    """Per-token weights of the supervised loss (detached: they scale each token's gradient, never receive one).

    nll: None (every token 1). dft: the token's own probability (Dynamic Fine-Tuning, arXiv 2508.05629; TRL's
    loss_type="dft" computes the same). eaft: (top-K entropy / log K) ** alpha of the predictive distribution
    (Entropy-Adaptive Fine-Tuning, arXiv 2601.02151, K = 20; its code divides by 3.0, about log 20 = 2.996):
    near 0 where the model is confident, so a confidently contradicted token barely trains.
    """
    if loss == "nll":
        return None
    if loss == "dft":
        return token_logp.exp().detach()
    if loss == "eaft":
        import torch

        with torch.no_grad():
            return lm.token_entropies(logits.detach(), top_k)[1].pow(alpha)
    raise ValueError(f"unknown training.loss {loss!r} (nll, dft, eaft)")


def _trainer_class() -> type:
    """SFTTrainer with the KL-to-base regulariser (built lazily: importing TRL takes seconds)."""
    import torch
    from trl import SFTTrainer

    class STMTrainer(SFTTrainer):
        """SFTTrainer + optional KL(p_base || p_tuned) on the trained tokens, base = adapter disabled."""

        kl_coef: float = 0.0
        kl_sign: float = 1.0  # +1 penalises divergence (paper); -1 rewards it (reference implementation)
        compact_head: bool = False
        token_loss: str = "nll"  # TrainingConfig.loss
        eaft_top_k: int = 20
        eaft_alpha: float = 1.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = self._loss(model, inputs, return_outputs, num_items_in_batch)
            # A NaN loss would train on (and cache) garbage: stop at the step it appears. One host sync per
            # micro-batch, which TRL's per-step loss logging makes anyway.
            step = self.state.global_step
            where = f"training step {step + 1}" if model.training else f"evaluation after step {step}"
            require_finite(out[0] if return_outputs else out, f"{where} (epoch {self.state.epoch or 0:.2f}): the loss")
            return out

        def _loss(self, model, inputs, return_outputs, num_items_in_batch):
            training = model.training
            # TRL computes NLL and DFT itself (with its fused LM head on GPU). The kit computes the loss where TRL
            # has no option for it (the KL term, EAFT), where the compact LM head saves compute (off GPU), and for
            # validation under a reweighted loss: validation loss is plain NLL for every method, so the curves of
            # different methods compare (TRL would weight it too).
            own = (self.kl_coef != 0 or self.compact_head or self.token_loss == "eaft") if training \
                else self.token_loss != "nll"
            if not own:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep, targets = lm.trained_positions(inputs["labels"])  # the hidden states whose next label is trained
            fwd = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            # Through the wrapped model (DDP/FSDP/ZeRO hooks run), logits only at the kept positions.
            logits = model(**fwd, logits_to_keep=keep, use_cache=False).logits.float()
            token_logp, logp = lm.chosen_logprobs(logits, targets)
            weight = token_weights(self.token_loss if training else "nll", logits, token_logp,
                                   self.eaft_top_k, self.eaft_alpha)
            nll = -(token_logp if weight is None else token_logp * weight).sum()
            total = nll
            local = max(int(targets.numel()), 1)
            if self.kl_coef and training:
                with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                    logp_base = torch.log_softmax(model(**fwd, logits_to_keep=keep, use_cache=False).logits.float(), -1)
                kl = (logp_base.exp() * (logp_base - logp)).sum()
                total = nll + self.kl_sign * self.kl_coef * kl
                self._metrics["train"]["kl_to_base"].append(kl.item() / local)
                self._metrics["train"]["ce"].append(nll.item() / local)
            n = num_items_in_batch if num_items_in_batch is not None else targets.numel()
            loss = total / torch.as_tensor(n).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL/Trainer: DDP averages gradients over ranks
            mode = "train" if training else "eval"
            with torch.no_grad():  # the metrics TRL logs on its own path
                entropy = -(logp.exp() * logp).sum(-1)
                self._metrics[mode]["entropy"].append(float(entropy.sum()) / local)
                correct = (logits.argmax(-1) == targets).sum()
                self._metrics[mode]["mean_token_accuracy"].append(float(correct) / local)
                if "attention_mask" in inputs and training:
                    self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, None) if return_outputs else loss

    return STMTrainer


class _RowCollator:
    """TRL's collator, recording which dataset rows each training micro-batch holds (eval batches have no _row)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.order: list[list[int]] = []
        self.tokens = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "_row" in examples[0]:
            self.order.append([int(e["_row"]) for e in examples])
            self.tokens += sum(len(e["input_ids"]) for e in examples)
        return self.inner([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])


def _callbacks(trainer: Any, out: Path, cfg: TrainingConfig, has_eval: bool, save: Any) -> Any:
    from transformers import TrainerCallback

    every_steps, every_epochs, at_steps = cfg.save_every_steps, cfg.save_every_epochs, set(cfg.save_at_steps)

    class Checkpoints(TrainerCallback):
        """Save the adapter (not optimizer state) and evaluate at fixed steps and at each epoch end."""

        def __init__(self):
            self.saved: list[dict[str, Any]] = []
            self.step_times: list[float] = []
            self.every = 0
            self.t0 = 0.0

        def on_train_begin(self, args, state, control, **kw):
            per_epoch = max(1, math.ceil(len(kw["train_dataloader"]) / args.gradient_accumulation_steps))
            self.per_epoch = per_epoch
            self.every = every_steps or (max(1, round(every_epochs * per_epoch)) if every_epochs else 0)

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_times.append(time.perf_counter() - self.t0)  # forward, backward and optimizer of one step
            step = state.global_step
            epoch_end = step % self.per_epoch == 0
            scheduled = (self.every and step % self.every == 0) or step in at_steps
            if scheduled or epoch_end or step == state.max_steps:
                if has_eval:
                    control.should_evaluate = True
            if scheduled and step < state.max_steps:
                rel = f"checkpoints/step-{step:06d}"
                save(trainer, out / rel)
                self.saved.append({"step": step, "epoch": round(step / self.per_epoch, 4), "dir": rel})
            return control

    return Checkpoints()


def _time_evaluations(trainer: Any) -> list[float]:
    """Make trainer.evaluate add its wall time to the returned one-element list (to subtract it from training)."""
    spent = [0.0]
    evaluate = trainer.evaluate

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    trainer.evaluate = timed
    return spent


def _precision(finetune: str, device: str, dtype: str, mixed: str = "no") -> tuple[Any, bool, bool]:
    """(dtype to load the model in, bf16 autocast, fp16 autocast): fp32 on CPU and bf16 on GPU under dtype 'auto';
    bf16 weights on CPU only when asked for (the rehearsal runs the paper's precision there). mixed 'bf16': fp32
    weights under bf16 autocast (TrainingConfig.mixed_precision)."""
    import torch

    from .models import pick_dtype

    want = pick_dtype(dtype, device)
    if device == "cpu" and want == torch.float16:
        raise ValueError(f"training on CPU cannot use float16 (model.dtype {dtype}); use 'auto', 'float32' or 'bfloat16'")
    if mixed == "bf16":
        if want == torch.float16:
            raise ValueError(f"training.mixed_precision bf16 with model.dtype {dtype}: use float32, bfloat16 or auto")
        return torch.float32, True, False
    # Full fine-tuning keeps fp32 master weights (AdamW on bf16 weights loses small updates) and autocasts.
    load = torch.float32 if finetune == "full" else want
    return load, want == torch.bfloat16, want == torch.float16


def precision_name(load_dtype: Any, bf16: bool, fp16: bool, mixed: str = "no") -> str:
    """How a run trained, as its record and cache key say it: 'float32', 'bf16' (bf16 autocast with the model
    loaded per model.dtype, the GPU default), 'fp16', or 'float32+bf16-autocast' (TrainingConfig.mixed_precision)."""
    if mixed == "bf16":
        return "float32+bf16-autocast"
    return "bf16" if bf16 else "fp16" if fp16 else str(load_dtype).replace("torch.", "")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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


def _save(trainer: Any, folder: Path) -> None:
    """Save the trained weights, refusing non-finite ones (the last optimizer step is followed by no loss)."""
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            require_finite(p, f"weight {name} to be saved in {folder}", unit="entry")
    trainer.save_model(str(folder))


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

    from .adapters import adapter_fingerprint
    from .models import fingerprint, pick_device

    seed = cfg.seed if seed is None else seed
    ds = as_dataset(train_dataset, "train_dataset")
    counts = check_dataset(ds, "train_dataset")
    eval_ds = as_dataset(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    if eval_ds is not None:
        check_dataset(eval_ds, "eval_dataset")
    dev = pick_device(device)
    load_dtype, bf16, fp16 = _precision(cfg.finetune, dev, dtype, cfg.mixed_precision)
    precision = precision_name(load_dtype, bf16, fp16, cfg.mixed_precision)
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
        seed, f"{dev}:{precision}", _world_size(), init[1] if init else None,
    )
    base_ref = base_reference(model_name_or_path)
    args = (model_name_or_path, tokenizer, ds, eval_ds, cfg, seed, dev, load_dtype, bf16, fp16, revision, progress,
            key, base_ref, model_fp, counts, init)
    if cache is False:
        if out_dir is None:
            raise ValueError("train(cache=False) needs out_dir: where to write the adapter")
        folder = Path(out_dir)
        if not _is_main():
            return _train_other_rank(folder, args)
        folder.mkdir(parents=True, exist_ok=True)
        return _train_into(folder, *args, cached=False)
    cache = cache if isinstance(cache, Cache) else Cache()
    hit = cache.get("adapters", key)  # content-verified: a corrupted adapter is refused, never reused
    if hit is not None:
        return TrainResult.load(hit)
    if not _is_main():
        return _train_other_rank(cache.path("adapters", key), args)
    meta = {"model": base_ref, "finetune": cfg.finetune, "examples": counts["examples"], "torch": torch.__version__}
    if init is not None:
        meta["init_adapter"] = init[0]
    with cache.put("adapters", key, meta=meta) as tmp:
        _train_into(tmp, *args, cached=False)
    return TrainResult.load(cache.path("adapters", key), cached=False)


def _train_other_rank(final: Path, args: tuple) -> TrainResult:
    """A non-main rank trains alongside the main one in a scratch folder; only the main rank writes results."""
    with tempfile.TemporaryDirectory(prefix="stmkit-rank-") as tmp:
        _train_into(Path(tmp), *args, cached=False)
    cfg, key, base_ref = args[4], args[12], args[13]
    return TrainResult(final, key, cfg.finetune, base_ref)


def build_trainer(
    model_name: str, ds: Any, cfg: TrainingConfig, folder: Path, *, tokenizer: Any = None, eval_ds: Any = None,
    seed: int = 0, device: str = "cpu", dtype: str = "auto", revision: str | None = None, progress: bool = True,
    init_adapter: str | os.PathLike | None = None,
) -> Any:
    """The configured STMTrainer (not yet trained) for a checked dataset; `train` is the normal entry point."""
    from .models import pick_device

    ds = as_dataset(ds)
    check_dataset(ds)
    dev = pick_device(device)
    load_dtype, bf16, fp16 = _precision(cfg.finetune, dev, dtype, cfg.mixed_precision)
    return _build(Path(folder), model_name, tokenizer, ds, eval_ds, cfg, seed, dev, load_dtype, bf16, fp16,
                  revision, progress, len(ds), init_adapter)


def _build(
    folder: Path, model_name: str, tokenizer: Any, ds: Any, eval_ds: Any, cfg: TrainingConfig, seed: int, dev: str,
    load_dtype: Any, bf16: bool, fp16: bool, revision: str | None, progress: bool, n_examples: int,
    init_adapter: str | os.PathLike | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig

    from .models import ModelUnavailableError, load_tokenizer, resolve

    tokenizer = tokenizer or load_tokenizer(model_name, revision)
    peft_config = None
    if cfg.finetune in ("lora", "dora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules="all-linear",
            use_dora=cfg.finetune == "dora", bias="none", task_type="CAUSAL_LM",
        )
    if cfg.kl_coef > 0 and peft_config is None:
        raise ValueError("kl_coef > 0 needs finetune lora or dora: the frozen base is the adapter disabled")
    args = SFTConfig(
        output_dir=str(folder / "_trainer"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name (TRL defaults it on)
        seed=seed,
        data_seed=seed,
        use_cpu=dev == "cpu",
        bf16=bf16,
        fp16=fp16,
        max_length=None,  # data are rendered and truncated already; None also disables TRL's silent filter
        packing=False,
        shuffle_dataset=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        remove_unused_columns=False,  # keep _row for the order record; the collator drops it
        dataset_num_proc=None,
        logging_steps=1,
        eval_strategy="no",  # evaluation is triggered by the checkpoint callback
        save_strategy="no",  # adapters only, via the callback; no optimizer states on disk
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        loss_type="dft" if cfg.loss == "dft" else "nll",  # TRL's own DFT; EAFT is the trainer's loss below
    )
    # Load after the config: under DeepSpeed ZeRO-3 / FSDP cpu-efficient loading, the config decides how weights load.
    set_seed(seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(model_name), dtype=load_dtype, revision=revision)
    except OSError as exc:
        raise ModelUnavailableError(f"model '{model_name}' could not be loaded for training: {exc}") from exc
    trainer_cls = _trainer_class()
    train_rows = ds.select_columns(["input_ids", "labels"]).add_column("_row", list(range(len(ds))))
    eval_rows = eval_ds.select_columns(["input_ids", "labels"]) if eval_ds is not None else None
    with warnings.catch_warnings():  # PEFT 0.21 reads a property transformers 5.24 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if init_adapter is not None:  # continual fine-tuning: the previous stage's update becomes part of the base
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(init_adapter)).merge_and_unload()
        trainer = trainer_cls(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                              processing_class=tokenizer, peft_config=peft_config)
    trainer.kl_coef = cfg.kl_coef
    trainer.token_loss = cfg.loss
    trainer.eaft_top_k, trainer.eaft_alpha = cfg.eaft_top_k, cfg.eaft_alpha
    trainer.kl_sign = 1.0 if cfg.kl_mode == "penalty" else -1.0
    trainer.compact_head = COMPACT_HEAD_OFF_GPU and dev not in ("cuda", "xpu")
    if len(trainer.train_dataset) != n_examples:  # TRL must not drop or add examples
        raise RuntimeError(
            f"SFTTrainer holds {len(trainer.train_dataset)} training examples, but {n_examples} were passed; "
            "refusing to train on a silently changed dataset"
        )
    trainer.data_collator = _RowCollator(trainer.data_collator)
    if not progress:  # without a progress bar, transformers prints every log line instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _train_into(
    folder: Path, model_name: str, tokenizer: Any, ds: Any, eval_ds: Any, cfg: TrainingConfig, seed: int, dev: str,
    load_dtype: Any, bf16: bool, fp16: bool, revision: str | None, progress: bool, key: str, base_ref: str,
    model_fp: str, counts: dict[str, int], init: tuple[str, str] | None, cached: bool,
) -> TrainResult:
    """Build the trainer, train, save adapter + checkpoints + train_result.json into folder."""
    import torch

    trainer = _build(folder, model_name, tokenizer, ds, eval_ds, cfg, seed, dev, load_dtype, bf16, fp16, revision,
                     progress, counts["examples"], init[0] if init else None)
    collator = trainer.data_collator
    eval_rows = trainer.eval_dataset
    ckpt = _callbacks(trainer, folder, cfg, eval_rows is not None, _save)
    trainer.add_callback(ckpt)
    initial = []
    if eval_rows is not None:  # epoch 0: the base model's validation loss (Figures 4 and 7 start there)
        initial = [{"eval_loss": trainer.evaluate()["eval_loss"], "epoch": 0.0, "step": 0}]
    eval_time = _time_evaluations(trainer)
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0 - eval_time[0]  # training only, for tokens/s and s/step
    _save(trainer, folder / "adapter")
    for c in ckpt.saved + [{"dir": "adapter"}]:
        (folder / c["dir"] / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing loads it
    for c in ckpt.saved:
        write_model_info(folder / c["dir"], base_ref, cfg.finetune, model_fp, init)
    write_model_info(folder / "adapter", base_ref, cfg.finetune, model_fp, init)
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
    trained_seen = sum(counts_trained(ds["labels"][r]) for r in seen)
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
        "device": dev,
        "precision": precision_name(load_dtype, bf16, fp16, cfg.mixed_precision),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "seed": seed,
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
    result = TrainResult(folder, key, cfg.finetune, base_ref, history, record,
                         ckpt.saved, collator.order, cached)
    atomic_write_json(folder / RESULT_FILE, result.to_json())
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def counts_trained(labels: Sequence[int]) -> int:
    """Trained (predicted) tokens of one row: labels after the first position that are not -100."""
    return sum(1 for lab in labels[1:] if lab != IGNORE)


# ---------------------------------------------------------------------------------------------------------------
# Measurements on trained models


def _trained_batches(ds: Any, batch_size: int, device: Any, desc: str = "", progress: bool = False) -> Any:
    """(input_ids, attention_mask, labels, keep) per batch; keep marks positions whose next token is trained."""
    from tqdm.auto import tqdm

    rows = list(zip(ds["input_ids"], ds["labels"], strict=True))
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = rows[start : start + batch_size]
        ids, mask = lm.pad([r[0] for r in chunk], 0)
        labels, _ = lm.pad([r[1] for r in chunk], IGNORE)
        keep, _ = lm.trained_positions(labels)
        yield ids.to(device), mask.to(device), labels.to(device), keep.to(device)


def kl_to_base(model: Any, data: Any, base_model: Any = None, batch_size: int = 8, progress: bool = False) -> float:
    """Mean KL(p_base || p_tuned) per trained token of data; base = adapter disabled (or base_model if given)."""
    import contextlib

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


# ---------------------------------------------------------------------------------------------------------------
# What 04_sft trains on: the method's examples, scored, masked, and where each came from


@dataclass
class SFTData:
    """A method's training data, masked, and the run.json results that say where it came from."""

    method: str
    label: str  # the paper's name for the row ("STM", "DPF", "Self-Output 50% correct", ...)
    source: str  # "ground_truth", "Self-Output", "Rephrase" or the ablation set's label
    scored: list[Any]  # under the scoring model: the base, or base + init_run's adapter for continual runs
    data: Any  # stmkit.masking.MaskResult
    info: dict[str, Any] = field(default_factory=dict)  # reference_run, init_run, correctness, label_ppl, ...

    @property
    def init_adapter_dir(self) -> str | None:
        return self.info.get("init_adapter_dir")


def label_ppl(scored: Sequence[Any]) -> float | None:
    """Mean sequence PPL of the training responses (Table 1's avg_ppl; Figure 2's x axis)."""
    from .analysis import ppl_stats

    return float(ppl_stats({"train": scored})["avg_ppl"].iloc[0]) if scored else None


def score_under(run: Any, model: Any, model_fp: str, examples: Sequence[Any], label: str) -> list[Any]:
    """run.score with another model (e.g. a trained run merged into the base) and its own fingerprint (cached)."""
    from .cache import Cache
    from .scoring import score_examples

    c = run.profile.scoring
    with run.record.timed(f"score_{label}"):
        scored, key = score_examples(
            model, run.tokenizer, examples, model_fingerprint=model_fp, max_length=run.profile.data.max_length,
            batch_size=c.batch_size, max_tokens_per_batch=c.max_tokens_per_batch,
        )
    run.record.key(f"scores_{label}", key)
    run.record.data.setdefault("costs_s", {})[f"score_{label}"] = Cache().meta("scores", key).get("wall_s")
    return scored


def ablation_examples(run: Any, generate_run: str, correctness: float) -> tuple[list[Any], dict[str, Any]]:
    """Tables 20-21: the Self-Output set of 03_generate_data whose correct_share_target equals correctness."""
    from .tasks import Example

    sets = run.load_run(generate_run)["results"].get("ablation") or {}
    levels = sorted(float(v["correct_share_target"]) for v in sets.values())
    match = [(k, v) for k, v in sets.items() if math.isclose(float(v["correct_share_target"]), correctness)]
    if not match:
        raise ValueError(
            f"correctness = {correctness:g}: run '{generate_run}' has no Self-Output ablation set at that level "
            f"(levels: {', '.join(f'{x:g}' for x in levels) or 'none; rerun 03_generate_data with ablation = True'})"
        )
    name, entry = match[0]
    with open(entry["path"]) as f:
        examples = [Example.from_dict(json.loads(line)) for line in f if line.strip()]
    if not examples:
        raise ValueError(
            f"correctness = {correctness:g}: the ablation set '{name}' of run '{generate_run}' is empty "
            f"({entry.get('correct_kept', 0)} correct, {entry.get('incorrect_kept', 0)} incorrect answers kept of "
            f"{entry.get('problems', '?')} problems); the model had too few answers of the needed kind"
        )
    return examples, {"name": name, **entry}


def _trained_run(run: Any, name: str, param: str) -> dict[str, Any]:
    """results of an earlier training run of the profile, checked to hold one model."""
    res = run.load_run(name)["results"]
    if not (res.get("adapter_dir") or res.get("model_dir")):
        raise ValueError(f"{param} = {name!r}: that run recorded no adapter_dir or model_dir; name a 04_sft run")
    return res


def prepare_sft_data(
    run: Any,
    method: str,
    *,
    generate_run: str = "generate",
    reference_run: str = "",
    init_run: str = "",
    correctness: float = -1.0,
) -> SFTData:
    """Examples of the method, scored by the scoring model, masked by the profile's rule: what 04_sft trains on.

    reference_run (dpf, stm+dpf): an earlier 04_sft run whose model (its adapter merged into the base) scores the
    same examples; the rule masks by the PPL rise. init_run (continual fine-tuning): an earlier LoRA/DoRA run; the
    data are scored under the base with its adapter merged (the model this stage starts from), and `train` gets
    `init_adapter=sft.init_adapter_dir`. correctness in [0, 1] (self_output): the 03_generate_data ablation set
    with that share of correct answers.
    """
    from . import adapters, masking

    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    rule, source = METHODS[method]
    m = run.profile.masking
    if m.rule != rule:
        raise ValueError(f"masking.rule is '{m.rule}' but method '{method}' masks by '{rule}'; start the run with "
                         "training.method_overrides(method, overrides)")
    loss = run.profile.training.loss
    if method in METHOD_LOSS and loss != METHOD_LOSS[method]:
        raise ValueError(f"training.loss is '{loss}' but method '{method}' trains with '{METHOD_LOSS[method]}'; "
                         "start the run with training.method_overrides(method, overrides)")
    if rule in DPF_RULES and not reference_run:
        raise ValueError(f"method '{method}' needs reference_run: the 04_sft run (normally the ground-truth run, "
                         "e.g. reference_run = \"sft-gt\") whose adapter scores the training data")
    if reference_run and rule not in DPF_RULES:
        raise ValueError(f"reference_run = {reference_run!r} is only used by methods {', '.join(DPF_RULES)}, "
                         f"not '{method}'; leave it empty")
    use_correctness = correctness is not None and correctness >= 0
    if use_correctness and method != "self_output":
        raise ValueError(f"correctness = {correctness:g} selects a Self-Output ablation set: use it with method "
                         f"'self_output', not '{method}' (or leave it negative)")
    if use_correctness and correctness > 1:
        raise ValueError(f"correctness = {correctness:g}: a share of correct answers, in [0, 1] (negative: not used)")

    info: dict[str, Any] = {"reference_run": reference_run or None, "init_run": init_run or None,
                            "init_adapter_dir": None, "correctness": None}
    label = METHOD_LABELS[method]
    init_res = None
    if init_run:
        init_res = _trained_run(run, init_run, "init_run")
        if not init_res.get("adapter_dir") or init_res.get("model_dir"):
            raise ValueError(f"init_run = {init_run!r} fine-tuned all weights (model_dir); continual fine-tuning "
                             "starts from a LoRA/DoRA run's adapter")
        if init_res.get("init_adapter_dir"):
            raise ValueError(f"init_run = {init_run!r} itself continues from {init_res.get('init_run')!r}; only two "
                             "stages are supported (paper Table 19)")
        info["init_adapter_dir"] = str(Path(init_res["adapter_dir"]).resolve())

    if source == "ground_truth":
        examples, score_label = run.target_examples("train"), "ground_truth"
    elif use_correctness:
        examples, entry = ablation_examples(run, generate_run, float(correctness))
        label = f"Self-Output {100 * float(correctness):g}% correct"
        source = entry["name"]
        score_label = f"self_output_correct_{100 * float(correctness):g}"
        info |= {"correctness": float(correctness), "correct_kept": entry.get("correct_kept"),
                 "incorrect_kept": entry.get("incorrect_kept"), "ablation_path": entry["path"]}
    else:
        generated = run.generated_sets(generate_run)
        if source not in generated:
            raise RuntimeError(f"method '{method}' trains on {source} data; run 03_generate_data for this profile "
                               f"first (run '{generate_run}')")
        examples, score_label = generated[source], source.lower().replace("-", "_")
        if not examples:
            raise ValueError(
                f"method '{method}': the {source} set of run '{generate_run}' is empty: none of the model's answers "
                "passed its check, so there is nothing to train on (more generation.n_samples or a stronger model; "
                "rehearsals with stand-ins set generation.keep_unverified)"
            )
    if init_res is None:
        scored = run.score(examples, score_label)
        info["scoring_model"] = "base"
    else:
        with adapters.trained_model(run.model, init_res, run.model_fingerprint, merge=True) as (model, fp, _):
            scored = score_under(run, model, fp, examples, f"{score_label}_after_{init_run}")
        info["scoring_model"] = f"base + {init_run}"
        info["scoring_fingerprint"] = fp

    adapter_scored = None
    if reference_run:
        ref = _trained_run(run, reference_run, "reference_run")
        ref_init = str(Path(ref["init_adapter_dir"]).resolve()) if ref.get("init_adapter_dir") else None
        if ref_init != info["init_adapter_dir"]:
            raise ValueError(
                f"reference_run = {reference_run!r} starts from {ref.get('init_run') or 'the base'} but this run "
                f"starts from {init_run or 'the base'}: DPF compares two models of the same stage; name a reference "
                "run with the same init_run"
            )
        with adapters.trained_model(run.model, ref, run.model_fingerprint, merge=True) as (model, fp, _):
            adapter_scored = score_under(run, model, fp, examples, f"{score_label}_under_{reference_run}")
        info["reference_fingerprint"] = fp
    data = masking.mask_dataset(scored, m.rule, m.tau, m.quantile, m.seed, m.fully_masked, adapter_scored,
                                m.dpf_delta, train_end_of_turn=m.train_end_of_turn,
                                conflict_entropy=m.conflict_entropy)
    info["label_ppl"] = label_ppl(scored)
    return SFTData(method, label, source, scored, data, info)


# ---------------------------------------------------------------------------------------------------------------
# Command line (what `accelerate launch -m stmkit.training` runs)


def check_accelerate_config(path: str | os.PathLike) -> dict[str, Any]:
    """Dry run of `accelerate launch --config_file path`: needs no GPU and launches nothing.

    Runs accelerate's own launch-argument parsing and config validation, builds the environment its launcher gives
    every rank, and constructs the FSDP or DeepSpeed plugin from that environment as each rank's Accelerator would.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accelerate config {path} does not exist (configs/accelerate/ has ddp, fsdp, "
                                "deepspeed_zero3)")
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "stmkit.training"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    launch_env = {k: str(v) for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    saved = dict(os.environ)
    try:
        os.environ.update(launch_env)
        plugin: Any = None
        if args.use_fsdp:
            from accelerate.utils import FullyShardedDataParallelPlugin

            p = FullyShardedDataParallelPlugin()
            plugin = {"fsdp_version": p.fsdp_version, "state_dict_type": str(p.state_dict_type),
                      "auto_wrap_policy": getattr(p.auto_wrap_policy, "__name__", str(p.auto_wrap_policy))}
        elif args.use_deepspeed:
            from accelerate.utils import DeepSpeedPlugin

            p = DeepSpeedPlugin()
            plugin = {"zero_stage": p.zero_stage, "zero3_init": p.zero3_init_flag,
                      "save_16bit": p.deepspeed_config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"config": str(path), "distributed_type": str(defaults.distributed_type), "num_processes": args.num_processes,
            "mixed_precision": args.mixed_precision, "env": launch_env, "plugin": plugin}


def method_overrides(method: str, overrides: str = "") -> str:
    """The overrides string with masking.rule set by a method name (gt, stm, random, low, quantile, ...)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    rule = METHODS[method][0]
    added = {"masking.rule": rule}
    if method in METHOD_LOSS:
        added["training.loss"] = METHOD_LOSS[method]
    text = (overrides or "").strip()
    if text.startswith("{"):  # a mapping, as the pipeline passes it: add the keys, keep it a mapping
        import yaml

        flat = yaml.safe_load(text) or {}
        if not isinstance(flat, dict):
            raise ValueError(f"overrides {overrides!r}: expected a mapping such as {{training.finetune: dora}}")
        return json.dumps({**flat, **added}, sort_keys=True)
    return ",".join(p for p in (text, *(f"{k}={v}" for k, v in added.items())) if p)


def main(argv: Sequence[str] | None = None) -> int:
    """Score, mask and train one method of a profile (the 04_sft notebook without the plots)."""
    parser = argparse.ArgumentParser(
        prog="python -m stmkit.training", description=main.__doc__, epilog=ACCELERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--method", default="stm", choices=[m for m, (_, src) in METHODS.items()
                                                            if src == "ground_truth"])
    parser.add_argument("--run-name", default="")
    parser.add_argument("--results-dir", default="")
    parser.add_argument("--reference-run", default="", help="dpf, stm+dpf: the run whose adapter scores the data")
    parser.add_argument("--init-run", default="", help="continual fine-tuning: the run whose adapter to start from")
    parser.add_argument("--check-accelerate", nargs="+", metavar="YAML",
                        help="dry-run accelerate configs (parse, validate, build launch env and plugin) and exit")
    args = parser.parse_args(argv)
    if args.check_accelerate:
        for path in args.check_accelerate:
            info = check_accelerate_config(path)
            print(f"{path}: {info['distributed_type']}, {info['num_processes']} processes, "
                  f"{info['mixed_precision']}, plugin {info['plugin']}")
        return 0

    from accelerate import PartialState

    from . import experiment, masking
    from .models import pick_device

    run = experiment.start("sft", args.profile, method_overrides(args.method, args.overrides),
                           args.run_name or f"sft-{args.method}", args.results_dir)
    prof = run.profile
    # Told it runs on CPU, accelerate's state joins the launched processes (gloo); untold, on a machine without a
    # GPU every rank believes it is alone, and all of them build and write what only rank 0 should.
    state = PartialState(cpu=pick_device(prof.model.device) == "cpu")
    with state.main_process_first():  # the main rank scores and caches; the others read the cache
        sft = prepare_sft_data(run, args.method, reference_run=args.reference_run, init_run=args.init_run)
        val = run.score(run.target_examples("validation"), "validation") if prof.data.n_val else None
    res = sft.data
    val_ds = masking.mask_dataset(val, "none").to_dataset() if val else None
    run.release_model()  # training loads its own copy
    result = train(prof.model.name, res, prof.training, tokenizer=run.tokenizer, eval_dataset=val_ds,
                   seed=prof.training.seed, device=prof.model.device, dtype=prof.model.dtype,
                   revision=prof.model.revision, init_adapter=sft.init_adapter_dir)
    if state.is_main_process:
        run.record.key("adapter", result.key)
        where = {"model_dir" if result.finetune == "full" else "adapter_dir": str(result.adapter_dir)}
        print(run.finish(method=args.method, label=sft.label, **where, **sft.info, masking=res.stats,
                         training=result.summary(), final_train_loss=result.record.get("final_train_loss")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
