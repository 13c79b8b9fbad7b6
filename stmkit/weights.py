"""How far fine-tuning moved the weights: ||ΔW|| per adapted matrix and in total, singular values, effective rank.

ΔW of one adapted matrix: LoRA, scaling * B @ A (never materialised for norms and spectra: computed from the
factors); DoRA, the merged weight minus the base weight; full fine-tuning, the tuned weight minus the base weight.
Adapted matrices are the decoder's linear layers (what LoRA's target_modules="all-linear" adapts: attention q/k/v/o
and MLP gate/up/down projections); embeddings, norms and the LM head are left out, for every fine-tuning type.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .adapters import MODEL_INFO, load_trained
from .models import load_model

DELTA_W_CAPTION = (
    "||ΔW||: Frobenius norm of the weight update over all adapted matrices taken together, "
    "sqrt(sum_m ||ΔW_m||_F^2), where m runs over the decoder's linear layers (attention q/k/v/o, MLP gate/up/down; "
    "embeddings, norms and LM head excluded) and ΔW_m = scaling·B_m·A_m for LoRA, merged minus base weight for DoRA "
    "and tuned minus base weight for full fine-tuning. The paper reports an 'L2 norm of ΔW' without defining it."
)
RANK_CAPTION = (
    "Effective rank (Roy & Vetterli 2007) of a layer's update: exp(H), H the Shannon entropy of the singular values "
    "normalised to sum 1; numerical rank counts singular values above max(shape)·eps(float32)·σ_max."
)
_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass
class Update:
    """ΔW of one matrix, dense or as LoRA factors (scaling * B @ A, B: out x r, A: r x in)."""

    name: str
    dense: Any = None
    A: Any = None
    B: Any = None
    scaling: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        if self.dense is not None:
            return tuple(self.dense.shape)
        return (self.B.shape[0], self.A.shape[1])

    @property
    def layer(self) -> int | None:
        m = _LAYER.search(self.name)
        return int(m.group(1)) if m else None

    @property
    def projection(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def matrix(self) -> Any:
        """The dense ΔW (float64)."""
        if self.dense is not None:
            return self.dense.double()
        return self.scaling * (self.B.double() @ self.A.double())

    def fro_norm(self) -> float:
        if self.dense is not None:
            return float(self.dense.double().norm())
        # ||sBA||_F^2 = s^2 tr((B^T B)(A A^T)): r x r products instead of out x in
        b, a = self.B.double(), self.A.double()
        return float(abs(self.scaling) * math.sqrt(max(float(((b.T @ b) * (a @ a.T)).sum()), 0.0)))

    def singular_values(self) -> np.ndarray:
        """Singular values, descending; LoRA through QR of the factors (the r x r core has the same spectrum)."""
        import torch

        if self.dense is not None:
            return torch.linalg.svdvals(self.dense.double()).cpu().numpy()
        qb, rb = torch.linalg.qr(self.B.double())
        qa, ra = torch.linalg.qr(self.A.double().T)
        core = self.scaling * (rb @ ra.T)
        return torch.linalg.svdvals(core).cpu().numpy()


def effective_rank(sv: Sequence[float] | np.ndarray) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the singular values normalised to sum 1."""
    s = np.asarray(sv, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def numerical_rank(sv: Sequence[float] | np.ndarray, shape: tuple[int, int], eps: float = 1.1920929e-07) -> int:
    """Singular values above max(shape) * eps * σ_max (numpy's matrix_rank rule at float32 precision)."""
    s = np.asarray(sv, dtype=np.float64)
    if s.size == 0 or s.max() == 0:
        return 0
    return int((s > max(shape) * eps * s.max()).sum())


def _lora_layers(model: Any) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _clean(name: str) -> str:
    """Module name without PEFT's wrapper prefixes: model.layers.0.self_attn.q_proj."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def updates_from_peft(model: Any, adapter: str | None = None) -> Iterator[Update]:
    """ΔW of every LoRA/DoRA-adapted matrix of a PEFT model (DoRA: merged minus base, computed in fp32)."""
    import torch

    for name, layer in _lora_layers(model):
        name_adapter = adapter or (layer.active_adapters[0] if layer.active_adapters else None)
        if name_adapter is None or name_adapter not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(name_adapter, False):
            with torch.no_grad():
                work = copy.deepcopy(layer).float()  # fp32 copy: a bf16 merge would bury ΔW in rounding noise
                before = work.get_base_layer().weight.detach().clone()
                work.merge(adapter_names=[name_adapter])
                delta = work.get_base_layer().weight.detach() - before
            yield Update(_clean(name), dense=delta.cpu())
            del work
            continue
        a = layer.lora_A[name_adapter].weight.detach().float().cpu()
        b = layer.lora_B[name_adapter].weight.detach().float().cpu()
        if getattr(layer, "fan_in_fan_out", False):  # GPT-2 style Conv1D weights are stored transposed
            yield Update(_clean(name), dense=(layer.scaling[name_adapter] * (b @ a)).T.contiguous())
        else:
            yield Update(_clean(name), A=a, B=b, scaling=float(layer.scaling[name_adapter]))


def updates_from_lora_dir(adapter_dir: str | Path) -> Iterator[Update]:
    """ΔW of a saved LoRA adapter from its files alone (no base model needed); DoRA needs the base: see updates()."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora"):
        raise ValueError(f"{adapter_dir} is a DoRA adapter: its ΔW needs the base weights; use updates(load_trained(dir)[0])")
    if cfg.get("alpha_pattern") or cfg.get("fan_in_fan_out"):
        raise ValueError(f"{adapter_dir}: alpha_pattern/fan_in_fan_out adapters are not supported from files; load the "
                         "model and use updates_from_peft")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    alpha = float(cfg["lora_alpha"])
    for key in sorted(k for k in tensors if k.endswith("lora_A.weight")):
        a = tensors[key].float()
        b = tensors[key.replace("lora_A.weight", "lora_B.weight")].float()
        r = a.shape[0]
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        yield Update(_clean(key[: -len(".lora_A.weight")]), A=a, B=b, scaling=scaling)


def _adapted_linears(model: Any) -> Iterator[tuple[str, Any]]:
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head and "lm_head" not in name:
            yield name, module


def updates_from_models(tuned: Any, base: Any) -> Iterator[Update]:
    """ΔW = tuned - base for every decoder linear layer (full fine-tuning)."""
    base_mods = dict(_adapted_linears(base))
    for name, module in _adapted_linears(tuned):
        if name not in base_mods:
            raise ValueError(f"module {name} of the tuned model is missing from the base model; are they the same model?")
        w0 = base_mods[name].weight.detach().float().cpu()
        yield Update(_clean(name), dense=module.weight.detach().float().cpu() - w0)


def updates(source: Any, base: Any = None) -> Iterator[Update]:
    """ΔW of each adapted matrix of a PEFT model, a saved LoRA folder, or a fully fine-tuned model (with base)."""
    if isinstance(source, str | Path):
        return updates_from_lora_dir(source)
    if hasattr(source, "peft_config"):
        return updates_from_peft(source)
    if base is None:
        raise ValueError("a fully fine-tuned model needs base= (the model before fine-tuning) to compute ΔW")
    return updates_from_models(source, base)


def norms_table(ups: Iterable[Update]) -> Any:
    """One row per adapted matrix: module, layer, projection, shape, ||ΔW_m||_F."""
    import pandas as pd

    rows = [{"module": u.name, "layer": u.layer, "projection": u.projection, "rows": u.shape[0], "cols": u.shape[1],
             "fro_norm": u.fro_norm()} for u in ups]
    return pd.DataFrame(rows, columns=["module", "layer", "projection", "rows", "cols", "fro_norm"])


def total_norm(per_module: Any) -> float:
    """sqrt(sum of squared per-matrix Frobenius norms): ||ΔW|| over all adapted matrices (see DELTA_W_CAPTION)."""
    norms = per_module["fro_norm"] if hasattr(per_module, "columns") else [u.fro_norm() for u in per_module]
    return float(math.sqrt(sum(float(n) ** 2 for n in norms)))


def spectrum_table(ups: Iterable[Update], projections: Sequence[str] = ("q_proj", "o_proj"),
                   top: int = 32) -> Any:
    """Per layer and chosen projection: ||ΔW||_F, numerical rank, effective rank, the top singular values."""
    import pandas as pd

    rows = []
    for u in ups:
        if u.projection not in projections:
            continue
        sv = u.singular_values()
        rows.append({"module": u.name, "layer": u.layer, "projection": u.projection, "fro_norm": u.fro_norm(),
                     "rank": numerical_rank(sv, u.shape), "effective_rank": effective_rank(sv),
                     "singular_values": [float(x) for x in sv[:top]]})
    return pd.DataFrame(rows, columns=["module", "layer", "projection", "fro_norm", "rank", "effective_rank",
                                       "singular_values"])


def summarize(source: Any, base: Any = None, projections: Sequence[str] = ("q_proj", "o_proj")) -> dict[str, Any]:
    """{'total': ||ΔW||, 'per_module': DataFrame, 'spectra': DataFrame} for a model or saved adapter (one pass)."""
    ups = list(updates(source, base))
    per_module = norms_table(ups)
    return {"total": total_norm(per_module), "per_module": per_module, "spectra": spectrum_table(ups, projections)}


def summarize_trained(adapter_dir: str | Path, projections: Sequence[str] = ("q_proj", "o_proj")) -> dict[str, Any]:
    """summarize() for a folder written by stmkit.training: LoRA from its files, DoRA and full by loading models."""
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if cfg_path.is_file() and not json.loads(cfg_path.read_text()).get("use_dora"):
        return summarize(adapter_dir, projections=projections)
    tuned, _ = load_trained(adapter_dir, device="cpu", dtype="float32")
    if cfg_path.is_file():
        return summarize(tuned, projections=projections)

    base_name = json.loads((adapter_dir / MODEL_INFO).read_text())["base_model"]
    base, _ = load_model(base_name, "cpu", "float32")
    return summarize(tuned, base, projections)
