"""The trainer: TRL's SFTTrainer with stmkit's loss, the order record, checkpoints at chosen steps.

`training.train` is the entry point; this module builds and configures what it trains with. What the trainer
guarantees, and why:

- Loss = mean NLL over the trained tokens of the whole accumulated batch. transformers 5 counts the trained tokens
  of all micro-batches of an optimizer step (`num_items_in_batch`, over `labels[..., 1:]`) and TRL divides each
  micro-batch's summed NLL by it, so gradient accumulation 8x1 equals one batch of 8 (tests/test_training.py).
- Off GPU, TRL projects every position through the LM head and masks afterwards (its compact path needs Triton);
  stmkit computes the same loss projecting only the trained positions (`COMPACT_HEAD_OFF_GPU`; tested equal to
  TRL's), which makes CPU steps ~1.6x faster and lets masking cost nothing. On CUDA, TRL's own path is used.
- KL-to-base (paper Table 8): loss = CE + kl_coef * KL(p_base || p_tuned) on the trained tokens, the base being the
  same PEFT model with its adapter disabled (no second copy). The reference implementation adds `-kl_coef * KL`,
  which rewards divergence; the kit follows the paper's intent (`kl_mode="reference"` reproduces the code).
- DFT and EAFT (STM's siblings) reweight each trained token's NLL (`token_weights`); validation loss stays plain NLL.
- TRL holds exactly the examples passed (counted after it prepares the dataset), and the collator records which
  rows each micro-batch held.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from . import lm
from .adapters import merged_copy
from .config import TrainingConfig
from .models import ModelUnavailableError, load_tokenizer, pick_device, resolve
from .numerics import require_finite
from .training import TrainSpec, as_dataset, check_dataset, choose_precision

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
        with torch.no_grad():
            return lm.token_entropies(logits.detach(), top_k)[1].pow(alpha)
    raise ValueError(f"unknown training.loss {loss!r} (nll, dft, eaft)")


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


class Checkpoints(TrainerCallback):
    """Save the adapter (not optimizer state) into out/checkpoints and evaluate at fixed steps and at each epoch end."""

    def __init__(self, trainer: Any, out: Path, cfg: TrainingConfig, has_eval: bool):
        self.trainer, self.out, self.has_eval = trainer, out, has_eval
        self.every_steps, self.every_epochs = cfg.save_every_steps, cfg.save_every_epochs
        self.at_steps = set(cfg.save_at_steps)
        self.saved: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        self.every = 0
        self.t0 = 0.0

    def on_train_begin(self, args, state, control, **kw):
        per_epoch = max(1, math.ceil(len(kw["train_dataloader"]) / args.gradient_accumulation_steps))
        self.per_epoch = per_epoch
        self.every = self.every_steps or (max(1, round(self.every_epochs * per_epoch)) if self.every_epochs else 0)

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.step_times.append(time.perf_counter() - self.t0)  # forward, backward and optimizer of one step
        step = state.global_step
        epoch_end = step % self.per_epoch == 0
        scheduled = (self.every and step % self.every == 0) or step in self.at_steps
        if scheduled or epoch_end or step == state.max_steps:
            if self.has_eval:
                control.should_evaluate = True
        if scheduled and step < state.max_steps:
            rel = f"checkpoints/step-{step:06d}"
            save_weights(self.trainer, self.out / rel)
            self.saved.append({"step": step, "epoch": round(step / self.per_epoch, 4), "dir": rel})
        return control


def time_evaluations(trainer: Any) -> list[float]:
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


def save_weights(trainer: Any, folder: Path) -> None:
    """Save the trained weights, refusing non-finite ones (the last optimizer step is followed by no loss)."""
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            require_finite(p, f"weight {name} to be saved in {folder}", unit="entry")
    trainer.save_model(str(folder))


def build_trainer(
    model_name: str, ds: Any, cfg: TrainingConfig, folder: Path, *, tokenizer: Any = None, eval_ds: Any = None,
    seed: int = 0, device: str = "cpu", dtype: str = "auto", revision: str | None = None, progress: bool = True,
    init_adapter: str | os.PathLike | None = None,
) -> STMTrainer:
    """The configured STMTrainer (not yet trained) for a checked dataset; `training.train` is the normal entry point."""
    ds = as_dataset(ds)
    check_dataset(ds)
    dev = pick_device(device)
    spec = TrainSpec(model_name, ds, cfg, dev, choose_precision(cfg.finetune, dev, dtype, cfg.mixed_precision),
                     tokenizer=tokenizer, eval_ds=eval_ds, seed=seed, revision=revision, progress=progress,
                     init_adapter=init_adapter)
    return build(spec, Path(folder))


def build(spec: TrainSpec, folder: Path) -> STMTrainer:
    """The configured STMTrainer of a resolved training run, its scratch output in folder/_trainer."""
    cfg, ds, eval_ds = spec.cfg, spec.train_ds, spec.eval_ds
    tokenizer = spec.tokenizer or load_tokenizer(spec.model_name, spec.revision)
    peft_config = None
    if cfg.finetune in ("lora", "dora"):
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
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=spec.device == "cpu",
        bf16=spec.precision.bf16,
        fp16=spec.precision.fp16,
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
        disable_tqdm=not spec.progress,
        dataloader_num_workers=0,
        loss_type="dft" if cfg.loss == "dft" else "nll",  # TRL's own DFT; EAFT is the trainer's loss below
    )
    # Load after the config: under DeepSpeed ZeRO-3 / FSDP cpu-efficient loading, the config decides how weights load.
    set_seed(spec.seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(spec.model_name), dtype=spec.precision.load_dtype,
                                                     revision=spec.revision)
    except OSError as exc:
        raise ModelUnavailableError(f"model '{spec.model_name}' could not be loaded for training: {exc}") from exc
    train_rows = ds.select_columns(["input_ids", "labels"]).add_column("_row", list(range(len(ds))))
    eval_rows = eval_ds.select_columns(["input_ids", "labels"]) if eval_ds is not None else None
    with warnings.catch_warnings():  # PEFT 0.21 reads a property transformers 5.24 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if spec.init_adapter is not None:  # continual fine-tuning: the previous stage's update becomes part of the base
            model = merged_copy(model, [spec.init_adapter], copy_base=False)
        trainer = STMTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                             processing_class=tokenizer, peft_config=peft_config)
    trainer.kl_coef = cfg.kl_coef
    trainer.token_loss = cfg.loss
    trainer.eaft_top_k, trainer.eaft_alpha = cfg.eaft_top_k, cfg.eaft_alpha
    trainer.kl_sign = 1.0 if cfg.kl_mode == "penalty" else -1.0
    trainer.compact_head = COMPACT_HEAD_OFF_GPU and spec.device not in ("cuda", "xpu")
    if len(trainer.train_dataset) != len(ds):  # TRL must not drop or add examples
        raise RuntimeError(
            f"SFTTrainer holds {len(trainer.train_dataset)} training examples, but {len(ds)} were passed; "
            "refusing to train on a silently changed dataset"
        )
    trainer.data_collator = _RowCollator(trainer.data_collator)
    if not spec.progress:  # without a progress bar, transformers prints every log line instead
        trainer.remove_callback(PrinterCallback)
    return trainer
