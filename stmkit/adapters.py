"""Trained models on disk: fingerprints, loading and merging adapters (continual runs included), base references.

One place for what training writes (the adapter or full-model folder, `stmkit_model.json` beside it) and what
evaluation, drift, weights and the CLI read back: `trained_model` for a run's results (a merged copy, or the adapter
in place), `load_trained` for a folder; both merge a continual run's first adapter with `merged_copy`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache import atomic_write_json, canonical_json, content_key, sha256_file, verify_entry_of
from .models import REGISTRY, fingerprint, load_model, pick_device, pick_dtype, resolve

MODEL_INFO = "stmkit_model.json"


def weights_fingerprint(model: Any) -> str:
    """Hash of every parameter's bytes (and a PEFT model's adapter config): identifies the weights evaluated.

    About a second per 500 MB on CPU; for big models pass a fingerprint you already have (e.g. models.fingerprint
    of the base folder combined with adapter_fingerprint).
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            # Raw bytes as uint8 (bf16 has no numpy dtype); hashed through the buffer protocol, without a copy.
            h.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().data)
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        h.update(canonical_json({k: v.to_dict() for k, v in peft_config.items()}).encode())
    return h.hexdigest()[:16]


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """Hash of an adapter folder's files (adapter_config.json, adapter weights)."""
    import hashlib

    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no adapter_config.json; pass the folder a PEFT model's save_pretrained wrote"
        )
    h = hashlib.sha256()
    for p in sorted(q for q in folder.iterdir() if q.is_file() and not q.name.startswith(".")):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def combined_fingerprint(base: str, adapter_dir: str | Path | None = None) -> str:
    """Fingerprint of a base model plus (optionally) an adapter on top of it."""
    if adapter_dir is None:
        return base
    return content_key("model+adapter", 1, base=base, adapter=adapter_fingerprint(adapter_dir))


def base_reference(name_or_path: str) -> str:
    """What adapters record as their base model: hub id for hub models, registry name for local ones, else as given."""
    spec = REGISTRY.get(name_or_path)
    if spec is not None and spec.kind == "hub":
        return spec.hf_id or name_or_path
    return str(name_or_path)


def resolve_base(ref: str, adapter_dir: Path) -> str:
    """A registry name, hub id or path (relative to the cwd, else to the adapter folder) -> loadable reference."""
    if ref in REGISTRY or Path(ref).expanduser().exists():
        return ref
    beside = (Path(adapter_dir) / ref).resolve()
    return str(beside) if beside.exists() else ref


def base_model_of(adapter_dir: str | os.PathLike) -> str:
    """The base model reference a trained folder records (stmkit_model.json, else adapter_config.json)."""
    adapter_dir = Path(adapter_dir)
    info = adapter_dir / MODEL_INFO
    if info.is_file():
        return json.loads(info.read_text())["base_model"]
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def init_adapter_of(adapter_dir: str | os.PathLike) -> Path | None:
    """The adapter a continual fine-tuning run started from (merged into the base before training), else None."""
    info = Path(adapter_dir) / MODEL_INFO
    if not info.is_file():
        return None
    init = json.loads(info.read_text()).get("init_adapter")
    if not init:
        return None
    if not (Path(init) / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} was trained on top of the adapter {init}, which is gone; restore it (rerun the earlier "
            "04_sft run) to load this one"
        )
    return Path(init)


def write_model_info(folder: Path, base_ref: str, finetune: str, model_fp: str,
                      init: tuple[str, str] | None = None) -> None:
    """Point the saved folder's base reference at something portable and record what it was trained from.

    init: (folder, fingerprint) of the adapter merged into the base before training (continual fine-tuning).
    """
    cfg_path = folder / "adapter_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_ref
        atomic_write_json(cfg_path, cfg)
    info = {"base_model": base_ref, "finetune": finetune, "model_fingerprint": model_fp}
    if init is not None:
        info |= {"init_adapter": init[0], "init_adapter_fingerprint": init[1]}
    atomic_write_json(folder / MODEL_INFO, info)


def load_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """A PEFT model: the adapter in adapter_dir on top of base_model, in place (unload() restores the base)."""
    from peft import PeftModel

    adapter_fingerprint(adapter_dir)  # a clear error for a folder without adapter_config.json
    verify_entry_of(adapter_dir)  # a cached adapter is checked against its manifest before its first use
    with warnings.catch_warnings():  # PEFT reads a property transformers deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    return model.eval()


def merged_copy(base_model: Any, adapter_dirs: Sequence[str | Path], copy_base: bool = True) -> Any:
    """A copy of base_model with each adapter merged into it in turn (base_model itself unchanged); copy_base=False
    merges into base_model itself (a model loaded for this purpose only)."""
    import copy

    model = copy.deepcopy(base_model) if copy_base else base_model
    for adapter_dir in adapter_dirs:
        model = load_adapter(model, adapter_dir).merge_and_unload()
    return model.eval()


def load_trained(adapter_dir: str | os.PathLike, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a trained adapter or full model folder, its base resolved through stmkit.models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"{adapter_dir} is not a folder; pass TrainResult.adapter_dir (or a checkpoint folder)")
    verify_entry_of(adapter_dir)  # in the cache: checked against its manifest before its first use
    cfg_path = adapter_dir / "adapter_config.json"
    if cfg_path.is_file():
        from peft import PeftModel

        ref = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
        if not ref:
            raise ValueError(f"{cfg_path} has no base_model_name_or_path; set it to the base model's name or path")
        base, tok = load_model(resolve_base(ref, adapter_dir), device, dtype)
        init = init_adapter_of(adapter_dir)
        if init is not None:  # continual fine-tuning: the adapter was trained on base + this one, merged
            base = merged_copy(base, [init], copy_base=False)
        model = PeftModel.from_pretrained(base, adapter_dir)
    elif (adapter_dir / "config.json").is_file():
        dev = pick_device(device)
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=pick_dtype(dtype, dev)).to(dev)
        tok = AutoTokenizer.from_pretrained(adapter_dir)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        raise FileNotFoundError(f"{adapter_dir} has neither adapter_config.json (PEFT) nor config.json (full model)")
    model.eval()
    return model, tok


@contextlib.contextmanager
def trained_model(
    base_model: Any, run_results: Mapping[str, Any], base_fingerprint: str, merge: bool | None = None
) -> Iterator[tuple[Any, str, Any]]:
    """(model, fingerprint, base for drift) of a training run, from its run.json results; base_model unchanged.

    results["adapter_dir"] (PEFT adapter, LoRA/DoRA): with merge (the default on CPU), the adapter is merged into
    a copy of base_model (an unmerged LoRA adds ~40% to every forward pass on CPU; the copy costs the model's size
    in memory once more) and drift compares the copy with base_model. Without merge, the adapter goes on top of
    base_model in place and is removed again on exit; drift then uses the same model with the adapter disabled
    (base for drift: None). The fingerprint is the same either way (base + adapter), so cached results are shared.
    results["init_adapter_dir"] as well (continual fine-tuning, 04_sft's init_run): the earlier stage's adapter is
    merged first, then this run's, into a copy (merge is the default on every device; merge=False is refused);
    the fingerprint is (base + init adapter) + adapter, and drift compares with the original base_model.
    results["model_dir"] (full fine-tuning, a save_pretrained folder, the earlier stage included): loaded as a
    second model on base_model's device and dtype; drift compares it with base_model.
    """
    if run_results.get("adapter_dir"):
        adapter_dir = Path(run_results["adapter_dir"])
        init_dir = run_results.get("init_adapter_dir")
        start_fp = combined_fingerprint(base_fingerprint, init_dir) if init_dir else base_fingerprint
        fp = combined_fingerprint(start_fp, adapter_dir)
        if merge is None:
            merge = bool(init_dir) or next(base_model.parameters()).device.type == "cpu"
        if init_dir and not merge:
            raise ValueError(
                f"the run continues from the adapter {init_dir} (init_adapter_dir): two adapters are evaluated "
                "merged into a copy of the base; pass merge=True (or None)"
            )
        if merge:
            merged = merged_copy(base_model, [init_dir, adapter_dir] if init_dir else [adapter_dir])
            try:
                yield merged, fp, base_model
            finally:
                del merged
            return
        model = load_adapter(base_model, adapter_dir)
        try:
            yield model, fp, None
        finally:
            model.unload()  # removes the LoRA layers from base_model without merging them
        return
    if run_results.get("model_dir"):
        from transformers import AutoModelForCausalLM

        param = next(base_model.parameters())
        verify_entry_of(run_results["model_dir"])
        model = AutoModelForCausalLM.from_pretrained(str(run_results["model_dir"]), dtype=param.dtype)
        model.to(param.device).eval()
        yield model, fingerprint(str(run_results["model_dir"])), base_model
        return
    raise KeyError(
        f"the training run's results have neither 'adapter_dir' nor 'model_dir' (keys: {sorted(run_results)}); "
        "run the training notebook to completion for that run first"
    )


def lm_eval_model_args(adapter_dir: str | os.PathLike) -> str:
    """`--model_args` for lm-evaluation-harness's `hf` model: the resolved base folder plus `peft=` the adapter."""
    adapter_dir = Path(adapter_dir).resolve()
    if (adapter_dir / "adapter_config.json").is_file() and init_adapter_of(adapter_dir) is not None:
        raise ValueError(
            f"{adapter_dir} continues from the adapter {init_adapter_of(adapter_dir)}: lm-evaluation-harness takes "
            "one adapter; merge both first (load_trained(dir)[0].merge_and_unload().save_pretrained(out)) and pass "
            "pretrained=out"
        )
    base = resolve(resolve_base(base_model_of(adapter_dir), adapter_dir))
    if (adapter_dir / "adapter_config.json").is_file():
        return f"pretrained={base},peft={adapter_dir}"
    return f"pretrained={adapter_dir}"

