"""What a GPU profile costs before anyone rents a GPU: GPU-hours, peak GPU memory and disk per run.

The work of each run is counted from its resolved config (model size, examples, tokens, epochs, samples,
evaluated models) and turned into time with throughputs *measured* on an H200 at the paper models' real sizes
(configs/costs/gpu.yaml, from benchmarks/gpu_paper_path.py):

    forward (scoring, log-likelihoods)   2 N T / (peak x forward utilisation)
    LoRA/DoRA step                       4 N T / (peak x train utilisation)     (6 N T for full fine-tuning)
    KL-to-base regulariser               + 2 N T (the base model's forward); gradient checkpointing + 2 N T
    generation                           batches x new tokens x seconds per decode step (HF generate, batch 32)

N = parameters in matrix products, T = tokens, peak = the reference GPU's dense bf16 FLOP/s. Generation is the
uncertain part: a batch runs until its longest sample stops, taken as 3x the gold answer's mean length (capped by
max_new_tokens); the bound lets every batch run to max_new_tokens. Padding adds 25% to training tokens. Each run
pays a fixed minute for kernel start and model loading.

How far off it may be: scoring within about 2x (measured with random weights at 8 x 1024 tokens); training up to
6x longer (the kit's own trainer ran at a sixth of the raw step's tokens/s on short padded batches, warm-up included:
configs/costs/gpu.yaml), a small share of the total; generation within 3-5x either way (answer lengths are a guess;
vLLM, which the kit supports, decodes many times faster than HF generate).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .evaluation import load_task_items, parse_task_spec, resolve_mode
from .models import load_tokenizer

GPU_COSTS_FILE = Path(__file__).resolve().parent.parent / "configs" / "costs" / "gpu.yaml"
RUN_OVERHEAD_S = 60.0  # kernel start and loading the model, per run
PADDING = 1.25  # training tokens padded to the longest example of a batch
LONGEST_OF_BATCH = 3.0  # a generation batch runs until its longest sample: about 3x the mean answer


@dataclass(frozen=True)
class Arch:
    """A released model's shape (public config.json values): what its cost depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    measured_as: str  # the measured architecture whose utilisation it borrows

    @property
    def attn_params(self) -> int:
        return 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        """Parameters in linear layers and embeddings (norm weights, under 0.01%, left out)."""
        per_layer = self.attn_params + 3 * self.hidden * self.intermediate
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def matmul_params(self) -> int:
        """Parameters in matrix products: the input embedding is a lookup (a tied head counts once)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)

    def lora_params(self, r: int) -> int:
        """LoRA parameters of rank r on every linear layer of the decoder (target_modules="all-linear")."""
        q_o = 2 * (self.hidden + self.heads * self.head_dim)
        k_v = 2 * (self.hidden + self.kv_heads * self.head_dim)
        mlp = 3 * (self.hidden + self.intermediate)
        return r * self.layers * (q_o + k_v + mlp)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # keys and values, bf16


ARCHS: dict[str, Arch] = {
    "gemma-2-2b-it": Arch(26, 2304, 9216, 8, 4, 256, 256000, True, "gemma-2-2b-it"),
    "gemma-2-9b-it": Arch(42, 3584, 14336, 16, 8, 256, 256000, True, "gemma-2-2b-it"),
    "llama-3-8b-instruct": Arch(32, 4096, 14336, 32, 8, 128, 128256, False, "llama-3-8b-instruct"),
    "mistral-7b-instruct": Arch(32, 4096, 14336, 32, 8, 128, 32768, False, "llama-3-8b-instruct"),
    "olmo-2-7b-instruct": Arch(32, 4096, 11008, 32, 32, 128, 100352, False, "llama-3-8b-instruct"),
}

# Split sizes of the paper's datasets on the hub (MATH: the kit's one-subject config, algebra; BIRD: dev).
HUB_SIZES: dict[str, dict[str, int]] = {
    "mbpp": {"train": 374, "validation": 90, "test": 500},
    "math": {"train": 1744, "test": 1187},
    "gsm8k": {"train": 7473, "test": 1319},
    "arc_challenge": {"train": 1119, "validation": 299, "test": 1172},
    "arc_easy": {"train": 2251, "validation": 570, "test": 2376},
    "bird": {"test": 1534},
}


@dataclass(frozen=True)
class GpuEstimate:
    """One run on the reference GPU: GPU-hours (expected and with every generation at max_new_tokens), peak GPU
    memory, disk written, and what to know (e.g. it needs more than one GPU)."""

    run: str
    hours: float
    hours_bound: float
    peak_gib: float
    disk_gb: float
    note: str = ""


def load_gpu_costs(path: Path = GPU_COSTS_FILE) -> dict[str, Any]:
    """configs/costs/gpu.yaml with, per measured architecture, the rates computed from the raw measurement it names:
    forward and train utilisation (achieved / the reference GPU's peak), decode tokens/s, the LoRA step's peak."""
    costs = yaml.safe_load(path.read_text())
    measured = json.loads((path.parent / costs["measured"]).read_text())["archs"]
    peak = costs["reference_gpu"]["bf16_tflops"]
    costs["archs"] = {
        arch: {"forward_utilisation": m["forward"]["tflops"] / peak,
               "train_utilisation": m["lora_step"]["tflops_4n"] / peak,
               "decode_tokens_per_s": m["generate"]["tokens_per_s"],
               "train_peak_gib": m["lora_step"]["peak_gib"],
               "train_tokens_measured": m["lora_step"]["batch"] * m["lora_step"]["seq"]}
        for arch, m in measured.items()}
    return costs


class _Costing:
    """Seconds and bytes of the stages of one model on the reference GPU."""

    def __init__(self, model: str, costs: dict[str, Any]):
        if model not in ARCHS:
            raise ValueError(f"no GPU cost model for '{model}' (known: {', '.join(ARCHS)}); add its shape to "
                             "stmkit.gpu_costs.ARCHS")
        self.arch = ARCHS[model]
        base = ARCHS[self.arch.measured_as]
        self.m = costs["archs"][self.arch.measured_as]
        self.peak = costs["reference_gpu"]["bf16_tflops"] * 1e12
        self.memory_gib = costs["reference_gpu"]["memory_gib"]
        self.tokens = costs["task_tokens"]
        # decode is bound by per-step work that grows with depth: scale the measured step time by layers
        self.step_s = 32 / self.m["decode_tokens_per_s"] * self.arch.layers / base.layers
        weights_gib = 2 * base.params / 2**30
        per_token = (self.m["train_peak_gib"] - weights_gib) / self.m["train_tokens_measured"]
        self.act_gib_per_token = per_token * (self.arch.layers * self.arch.hidden) / (base.layers * base.hidden)

    def forward_s(self, tokens: float) -> float:
        return 2 * self.arch.matmul_params * tokens / (self.peak * self.m["forward_utilisation"])

    def train_s(self, tokens: float, finetune: str, kl: bool, checkpointing: bool) -> float:
        n = self.arch.matmul_params
        flops = (6 if finetune == "full" else 4) * n * tokens
        flops += (2 * n * tokens if kl else 0) + (2 * n * tokens if checkpointing else 0)  # + a recomputed forward
        return flops / (self.peak * self.m["train_utilisation"])

    def generate_s(self, sequences: int, task: str, max_new: int, batch: int, bound: bool) -> float:
        new = max_new if bound else min(max_new, LONGEST_OF_BATCH * self.tokens[task]["answer"])
        return math.ceil(sequences / max(batch, 1)) * new * self.step_s  # step time ~flat in batch size here

    def example_tokens(self, task: str) -> int:
        t = self.tokens[task]
        return t["prompt"] + t["answer"]

    def inference_gib(self, batch: int, length: int) -> float:
        return 2 * self.arch.params / 2**30 + batch * length * self.arch.kv_bytes_per_token / 2**30

    def train_gib(self, finetune: str, batch: int, length: int, gradient_checkpointing: bool) -> float:
        act = self.act_gib_per_token * batch * length / (4 if gradient_checkpointing else 1)
        if finetune == "full":  # fp32 weights, gradients and AdamW's two moments
            return 16 * self.arch.params / 2**30 + act
        return 2 * self.arch.params / 2**30 + act


def _size(task: str, split: str, n: int) -> int:
    return n or HUB_SIZES[task].get(split, 0)


def estimate_run(run: Any, cfg: Any, costs: dict[str, Any] | None = None) -> GpuEstimate:
    """GPU-hours, peak memory and disk of one sweep run (a sweeps.RunSpec) under its resolved profile `cfg`."""
    costs = costs or load_gpu_costs()
    c = _Costing(cfg.model.name, costs)
    d, t, e, g = cfg.data, cfg.training, cfg.eval, cfg.generation
    target, params = d.target, run.params
    n_train = _size(target, "train", d.n_train)
    train_tokens = n_train * c.example_tokens(target)
    expected = bound = RUN_OVERHEAD_S
    peak, disk, notes = c.inference_gib(8, d.max_length), 0.0, []

    def compute(seconds: float) -> None:
        nonlocal expected, bound
        expected, bound = expected + seconds, bound + seconds

    def generate(sequences: int, task: str, max_new: int, times: float = 1) -> None:
        """`times` generations of `sequences` answers each (one per model or checkpoint: batches do not mix them)."""
        nonlocal expected, bound
        expected += times * c.generate_s(sequences, task, max_new, e.batch_size, bound=False)
        bound += times * c.generate_s(sequences, task, max_new, e.batch_size, bound=True)

    if run.notebook in ("01_score_tokens", "02_mask_tokens"):
        compute(c.forward_s(train_tokens))
    elif run.notebook == "03_generate_data":
        generate(n_train * g.n_samples + n_train, target, g.max_new_tokens)  # Self-Output, one Rephrase per problem
        compute(c.forward_s(n_train * g.n_samples * c.example_tokens(target)))  # scoring the candidates
        peak = max(peak, c.inference_gib(e.batch_size, c.tokens[target]["prompt"] + g.max_new_tokens))
    elif run.notebook in ("04_sft", "06_regularization"):
        kl = t.kl_coef > 0 or run.notebook == "06_regularization"
        compute(c.forward_s(train_tokens) * (2 if params.get("reference_run") or params.get("init_run") else 1))
        compute(c.train_s(train_tokens * t.epochs * PADDING, t.finetune, kl, t.gradient_checkpointing))
        peak = max(peak, c.train_gib(t.finetune, t.batch_size, d.max_length, t.gradient_checkpointing))
        saves = 1 + (t.epochs / t.save_every_epochs if t.save_every_epochs else t.epochs)
        if t.finetune == "full":
            disk = saves * 2 * c.arch.params / 1e9 + 12 * c.arch.params / 1e9  # models + the last optimizer state
            if 16 * c.arch.params / 2**30 > c.memory_gib:
                notes.append("full fine-tuning: fp32 weights, gradients and AdamW states alone exceed one GPU; "
                             "shard them with ZeRO-3/FSDP over several (configs/accelerate/)")
        else:
            lora = c.arch.lora_params(t.lora_r)
            disk = saves * 3 * 4 * lora / 1e9  # each checkpoint: fp32 adapter + AdamW's two moments
    elif run.notebook == "05_evaluate":
        models = 1 + len([x for x in str(params.get("train_run", "")).split(",") if x.strip()])
        tasks = [parse_task_spec(spec) for spec in e.tasks]
        for task, mode in tasks:
            n = _size(task, "test", e.n_items)
            if resolve_mode(task, mode) == "loglik":  # one forward per choice (up to four)
                compute(models * c.forward_s(n * c.example_tokens(task) * 4))
            else:
                generate(n, task, e.max_new_tokens, times=models)
        checkpoint_tasks = [x.strip() for x in str(params.get("checkpoint_tasks", "")).split(",") if x.strip()]
        saves = t.epochs / t.save_every_epochs if t.save_every_epochs else t.epochs
        for spec in checkpoint_tasks:
            task = target if spec == "target" else parse_task_spec(spec)[0]
            generate(_size(task, "test", e.n_items), task, e.max_new_tokens, times=(models - 1) * saves)
        if params.get("self_bleu_task"):
            n = int(params.get("self_bleu_items", 20)) * int(params.get("self_bleu_samples", 4))
            generate(n, str(params["self_bleu_task"]), e.max_new_tokens, times=models)
        longest_prompt = max(c.tokens[task]["prompt"] for task, _ in tasks)
        peak = max(peak, c.inference_gib(e.batch_size, longest_prompt + e.max_new_tokens))
    if peak > c.memory_gib:
        notes.append(f"peak {peak:.0f} GiB exceeds the {c.memory_gib} GiB of one such GPU"
                     + ("" if t.gradient_checkpointing or run.notebook not in ("04_sft", "06_regularization")
                        else ": set training.gradient_checkpointing or halve training.batch_size (double grad_accum)"))
    return GpuEstimate(run.name, expected / 3600, bound / 3600, peak, disk, "; ".join(notes))


def describe(estimates: list[GpuEstimate], costs: dict[str, Any] | None = None) -> str:
    """The dry run's GPU table: per run and in total, with the reference GPU and where the figures come from."""
    costs = costs or load_gpu_costs()
    ref = costs["reference_gpu"]
    width = max([len(x.run) for x in estimates] + [3])
    lines = [f"GPU estimate on {ref['name']} ({ref['bf16_tflops']} dense bf16 TFLOP/s; utilisations measured on "
             f"{costs['measured_on']}, configs/costs/gpu.yaml; formulas in stmkit/gpu_costs.py):",
             f"  {'run':{width}s}  GPU-h  (bound)  peak GiB  disk GB  note"]
    for x in estimates:
        lines.append(f"  {x.run:{width}s}  {x.hours:6.2f} ({x.hours_bound:6.2f})  {x.peak_gib:8.0f}  "
                     f"{x.disk_gb:7.2f}  {x.note}")
    total, bound = sum(x.hours for x in estimates), sum(x.hours_bound for x in estimates)
    disk = sum(x.disk_gb for x in estimates)
    lines.append(f"  total: {total:.1f} GPU-hours expected, {bound:.1f} if every generation runs to max_new_tokens; "
                 f"{disk:.1f} GB of adapters and checkpoints; peak {max(x.peak_gib for x in estimates):.0f} GiB")
    lines.append("  expected = generation batches end at 3x the mean gold answer; scoring within ~2x, training up to 6x "
                 "longer, generation within 3-5x (see stmkit/gpu_costs.py)")
    return "\n".join(lines)


def measure_task_tokens(tasks: tuple[str, ...] = ("mbpp", "math", "gsm8k", "arc_challenge", "bird"),
                        n: int = 300) -> dict[str, dict[str, int]]:
    """Mean tokens of each task's chat-formatted prompt and gold answer (embedded test items, SmolLM2's tokenizer):
    the task_tokens block of configs/costs/gpu.yaml."""
    tok = load_tokenizer("smollm2-135m-instruct")
    out = {}
    for task in tasks:
        items = load_task_items(task, 0, "test")[:n]
        prompts = [tok.apply_chat_template([{"role": "user", "content": e.prompt}], add_generation_prompt=True,
                                           tokenize=False) for e in items]
        p = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in prompts]
        a = [len(tok(e.response, add_special_tokens=False)["input_ids"]) for e in items]
        out[task] = {"prompt": round(sum(p) / len(p)), "answer": round(sum(a) / len(a))}
    return out


if __name__ == "__main__":
    import sys

    if "--measure-tokens" in sys.argv:
        print(yaml.safe_dump({"task_tokens": measure_task_tokens()}, sort_keys=False))
