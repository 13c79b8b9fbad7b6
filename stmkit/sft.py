"""The SFT recipe of 04_sft and `python -m stmkit.sft`: a method's data, scored and masked, trained, recorded.

A method (`METHODS`) is a masking rule and a data source: `method_overrides` sets the rule (and, for DFT and EAFT,
the loss) in the profile, `prepare_sft_data` scores and masks the method's examples, `validation_data` gives the
ground-truth validation set every method shares, `train_sft` trains with the profile's settings
(`training.train`), and `run_results` is what run.json records for 05_evaluate and the report. The notebook and
the command line run these same steps.

- DPF and STM+DPF (paper Tables 14 and 18) mask by how much each token's PPL rose under a fine-tuned adapter
  (`reference_run`, normally the ground-truth run), scored with that adapter merged into the base.
- Continual fine-tuning (paper Table 19, `init_run`): STM at the second stage scores the data under the model after
  the first stage (its adapter merged), with its own fingerprint; `train` merges the same adapter before training.
- Self-Output correctness ablation (paper Tables 20-21, `correctness`): the 03_generate_data set with that share of
  correct answers.

Multi-GPU: `accelerate launch --config_file configs/accelerate/<ddp|fsdp|deepspeed_zero3>.yaml -m stmkit.sft
--profile paper --method stm` runs the recipe (score, mask, train) on every GPU; see `ACCELERATE_HELP`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from . import adapters, experiment, masking
from .analysis import ppl_stats
from .cache import Cache
from .models import pick_device
from .records import SFTResults
from .scoring import score_examples
from .tasks import Example
from .training import TrainResult, train

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
        flat = yaml.safe_load(text) or {}
        if not isinstance(flat, dict):
            raise ValueError(f"overrides {overrides!r}: expected a mapping such as {{training.finetune: dora}}")
        return json.dumps({**flat, **added}, sort_keys=True)
    return ",".join(p for p in (text, *(f"{k}={v}" for k, v in added.items())) if p)


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
    return float(ppl_stats({"train": scored})["avg_ppl"].iloc[0]) if scored else None


def score_under(run: Any, model: Any, model_fp: str, examples: Sequence[Any], label: str) -> list[Any]:
    """run.score with another model (e.g. a trained run merged into the base) and its own fingerprint (cached)."""
    c = run.profile.scoring
    with run.log.timed(f"score_{label}"):
        scored, key = score_examples(
            model, run.tokenizer, examples, model_fingerprint=model_fp, max_length=run.profile.data.max_length,
            batch_size=c.batch_size, max_tokens_per_batch=c.max_tokens_per_batch,
        )
    run.log.key(f"scores_{label}", key)
    run.log.cost(f"score_{label}", Cache().meta("scores", key).get("wall_s"))
    return scored


def ablation_examples(run: Any, generate_run: str, correctness: float) -> tuple[list[Any], dict[str, Any]]:
    """Tables 20-21: the Self-Output set of 03_generate_data whose correct_share_target equals correctness."""
    sets = run.load_run(generate_run).results.ablation
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


def _trained_run(run: Any, name: str, param: str) -> SFTResults:
    """results of an earlier training run of the profile, checked to hold one model."""
    res = run.load_run(name).results
    if not isinstance(res, SFTResults) or not (res.adapter_dir or res.model_dir):
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
    the result's `init_adapter_dir` (`train_sft` passes it). correctness in [0, 1] (self_output): the
    03_generate_data ablation set with that share of correct answers.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    rule, source = METHODS[method]
    m = run.profile.masking
    if m.rule != rule:
        raise ValueError(f"masking.rule is '{m.rule}' but method '{method}' masks by '{rule}'; start the run with "
                         "sft.method_overrides(method, overrides)")
    loss = run.profile.training.loss
    if method in METHOD_LOSS and loss != METHOD_LOSS[method]:
        raise ValueError(f"training.loss is '{loss}' but method '{method}' trains with '{METHOD_LOSS[method]}'; "
                         "start the run with sft.method_overrides(method, overrides)")
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
        if not init_res.adapter_dir or init_res.model_dir:
            raise ValueError(f"init_run = {init_run!r} fine-tuned all weights (model_dir); continual fine-tuning "
                             "starts from a LoRA/DoRA run's adapter")
        if init_res.init_adapter_dir:
            raise ValueError(f"init_run = {init_run!r} itself continues from {init_res.init_run!r}; only two "
                             "stages are supported (paper Table 19)")
        info["init_adapter_dir"] = str(Path(init_res.adapter_dir).resolve())

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
        with adapters.trained_model(run.model, init_res.trained_model(), run.model_fingerprint, merge=True) as (
                model, fp, _):
            scored = score_under(run, model, fp, examples, f"{score_label}_after_{init_run}")
        info["scoring_model"] = f"base + {init_run}"
        info["scoring_fingerprint"] = fp

    adapter_scored = None
    if reference_run:
        ref = _trained_run(run, reference_run, "reference_run")
        ref_init = str(Path(ref.init_adapter_dir).resolve()) if ref.init_adapter_dir else None
        if ref_init != info["init_adapter_dir"]:
            raise ValueError(
                f"reference_run = {reference_run!r} starts from {ref.init_run or 'the base'} but this run "
                f"starts from {init_run or 'the base'}: DPF compares two models of the same stage; name a reference "
                "run with the same init_run"
            )
        with adapters.trained_model(run.model, ref.trained_model(), run.model_fingerprint, merge=True) as (
                model, fp, _):
            adapter_scored = score_under(run, model, fp, examples, f"{score_label}_under_{reference_run}")
        info["reference_fingerprint"] = fp
    data = masking.mask_dataset(scored, m.rule, tau=m.tau, quantile=m.quantile, seed=m.seed,
                                fully_masked=m.fully_masked, adapter_scored=adapter_scored, dpf_delta=m.dpf_delta,
                                train_end_of_turn=m.train_end_of_turn, conflict_entropy=m.conflict_entropy)
    info["label_ppl"] = label_ppl(scored)
    return SFTData(method, label, source, scored, data, info)


def validation_data(run: Any) -> Any:
    """The profile's validation examples with every response token trained (None when data.n_val is 0): every
    method validates on the same labels, so the validation curves compare."""
    if not run.profile.data.n_val:
        return None
    return masking.mask_dataset(run.score(run.target_examples("validation"), "validation"), "none")


def train_sft(run: Any, prepared: SFTData, val_data: Any = None) -> TrainResult:
    """Train the prepared data with the profile's model and training settings; the adapter's key goes in run.json."""
    prof = run.profile
    run.release_model()  # training loads its own copy of the model; scoring is done
    with run.log.timed("train"):
        result = train(prof.model.name, prepared.data, prof.training, tokenizer=run.tokenizer, eval_dataset=val_data,
                       device=prof.model.device, dtype=prof.model.dtype, revision=prof.model.revision,
                       init_adapter=prepared.init_adapter_dir)
    run.log.key("adapter", result.key)
    return result


def run_results(prepared: SFTData, result: TrainResult) -> SFTResults:
    """What run.json records of a training run: the model (adapter_dir for LoRA/DoRA, after init_adapter_dir when
    continual; model_dir for full fine-tuning), which 05_evaluate loads, and where its data came from."""
    where = {"model_dir" if result.finetune == "full" else "adapter_dir": str(result.adapter_dir)}
    return SFTResults(method=prepared.method, label=prepared.label, **where, **prepared.info,
                      masking=prepared.data.stats, training=result.summary(),
                      final_train_loss=result.record.get("final_train_loss"))


# ---------------------------------------------------------------------------------------------------------------
# Command line (what `accelerate launch -m stmkit.sft` runs)


ACCELERATE_HELP = """\
Multi-GPU training (configs/accelerate/):
  ddp.yaml             data parallel, one full model copy per GPU (LoRA/DoRA on models that fit one GPU)
  fsdp.yaml            FSDP2, parameters/gradients/optimizer sharded (full fine-tuning of 7-9B models)
  deepspeed_zero3.yaml DeepSpeed ZeRO-3 (needs `pip install deepspeed`), the same sharding via DeepSpeed
Set num_processes in the file (or --num_processes N) to the number of GPUs, then e.g.:
  accelerate launch --config_file configs/accelerate/ddp.yaml -m stmkit.sft \\
      --profile paper --overrides "model.name=llama-3-8b-instruct" --method stm --run-name sft-stm
training.batch_size is per GPU: the effective batch is batch_size x GPUs x grad_accum, and the world size is
part of the adapter's cache key. Every rank scores (the main rank first, the others read its cache), masks
and trains; only the main rank writes the adapter, run.json and the cache entry.
"""


def check_accelerate_config(path: str | os.PathLike) -> dict[str, Any]:
    """Dry run of `accelerate launch --config_file path`: needs no GPU and launches nothing.

    Runs accelerate's own launch-argument parsing and config validation, builds the environment its launcher gives
    every rank, and constructs the FSDP or DeepSpeed plugin from that environment as each rank's Accelerator would.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accelerate config {path} does not exist (configs/accelerate/ has ddp, fsdp, "
                                "deepspeed_zero3)")
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "stmkit.sft"])
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
            p = FullyShardedDataParallelPlugin()
            plugin = {"fsdp_version": p.fsdp_version, "state_dict_type": str(p.state_dict_type),
                      "auto_wrap_policy": getattr(p.auto_wrap_policy, "__name__", str(p.auto_wrap_policy))}
        elif args.use_deepspeed:
            p = DeepSpeedPlugin()
            plugin = {"zero_stage": p.zero_stage, "zero3_init": p.zero3_init_flag,
                      "save_16bit": p.deepspeed_config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"config": str(path), "distributed_type": str(defaults.distributed_type), "num_processes": args.num_processes,
            "mixed_precision": args.mixed_precision, "env": launch_env, "plugin": plugin}


def main(argv: Sequence[str] | None = None) -> int:
    """Score, mask and train one method of a profile (the 04_sft notebook without the plots)."""
    parser = argparse.ArgumentParser(
        prog="python -m stmkit.sft", description=main.__doc__, epilog=ACCELERATE_HELP,
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

    run = experiment.start("sft", args.profile, method_overrides(args.method, args.overrides),
                           args.run_name or f"sft-{args.method}", args.results_dir)
    # Told it runs on CPU, accelerate's state joins the launched processes (gloo); untold, on a machine without a
    # GPU every rank believes it is alone, and all of them build and write what only rank 0 should.
    state = PartialState(cpu=pick_device(run.profile.model.device) == "cpu")
    with state.main_process_first():  # the main rank scores and caches; the others read the cache
        prepared = prepare_sft_data(run, args.method, reference_run=args.reference_run, init_run=args.init_run)
        val_data = validation_data(run)
    result = train_sft(run, prepared, val_data)
    if state.is_main_process:
        print(run.finish(run_results(prepared, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
