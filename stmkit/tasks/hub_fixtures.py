"""Hub-schema fixtures: a few rows of each paper dataset in the schema, configs and split names of its Hugging Face
dataset, read through `datasets` exactly as the hub copy is (`data.source: hub-fixture`).

The paper profile reads the hub (`data.source: hf`); nobody can run that path here. These files let the rehearsal
(configs/paper-rehearsal.yaml) run it offline: the same row converters (MBPP's ``\\r\\n`` code, ARC's labels, GSM8K's
``#### N``), the same split names (GSM8K and MATH have no validation split on the hub, and asking for one fails
the same way) and the same `datasets` loading. The rows are embedded benchmark items written back in hub schema:
**they are not the hub's rows**, and numbers computed on them mean nothing.

Regenerate (deterministic) with ``python -m stmkit.tasks.hub_fixtures``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .arc import parse_mc_query
from .embedded import read_docs

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "data" / "hub_fixtures"
ROWS_PER_SPLIT = 24

# (hub id, config) -> the hub's split names, in the order rows are dealt to them
HUB_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("google-research-datasets/mbpp", "full"): ("train", "validation", "test", "prompt"),
    ("openai/gsm8k", "main"): ("train", "test"),
    ("EleutherAI/hendrycks_math", "algebra"): ("train", "test"),
    ("allenai/ai2_arc", "ARC-Challenge"): ("train", "validation", "test"),
    ("allenai/ai2_arc", "ARC-Easy"): ("train", "validation", "test"),
}


def fixture_dir(hub_id: str, config: str, root: Path = FIXTURE_DIR) -> Path:
    return root / hub_id.replace("/", "__") / config


def load_fixture(hub_id: str, config: str, split: str) -> Any:
    """The fixture split as a `datasets.Dataset`, loaded as the hub copy would be (an unknown split fails alike)."""
    import datasets

    folder = fixture_dir(hub_id, config)
    files = {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))}
    if not files:
        raise ValueError(f"no hub-schema fixture for {hub_id} ({config}) in {folder}; data.source 'hub-fixture' "
                         "covers the paper's datasets only (regenerate with `python -m stmkit.tasks.hub_fixtures`)")
    if split not in files:  # worded as `datasets` words it for a hub dataset
        raise ValueError(f'Unknown split "{split}". Should be one of {list(files)}.')
    # one file per load: the json builder infers types per file (an empty list in one split is no conflict)
    return datasets.load_dataset("json", data_files={split: files[split]}, split=split)


# --- building the files from the embedded benchmarks ------------------------------------------------------------


def _mbpp_rows() -> list[dict[str, Any]]:
    keys = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
    return [{k: (int(d[k]) if k == "task_id" else d[k]) for k in keys} for d in read_docs("codex_mbpp/gold_bpb_0shot")]


def _gsm8k_rows() -> list[dict[str, Any]]:
    return [{"question": d["question"], "answer": d["answer"]} for d in read_docs("gsm8k/gold_bpb_5shot")]


def _math_rows() -> list[dict[str, Any]]:
    keys = ("problem", "level", "type", "solution")
    return [{k: d[k] for k in keys} for d in read_docs("minerva_math_algebra/gold_bpb_0shot")]


def _arc_rows(folder: str) -> list[dict[str, Any]]:
    rows = []
    for i, d in enumerate(read_docs(f"{folder}/test_mc_5shot", id_key="native_id")):
        question, options = parse_mc_query(d["query"], f"{folder} item {d['id']}")
        # the hub labels most items A-D and some 1-4: keep one in eight numeric so the converter meets both
        labels = [str(k + 1) for k in range(len(options))] if i % 8 == 3 else list("ABCDE"[: len(options)])
        rows.append({"id": d["id"], "question": question, "choices": {"text": options, "label": labels},
                     "answerKey": labels[int(d["gold"])]})
    return rows


def build(root: Path = FIXTURE_DIR, rows_per_split: int = ROWS_PER_SPLIT) -> list[Path]:
    """Write every fixture file under root: disjoint runs of rows dealt to the hub's splits in order."""
    sources = {
        ("google-research-datasets/mbpp", "full"): _mbpp_rows,
        ("openai/gsm8k", "main"): _gsm8k_rows,
        ("EleutherAI/hendrycks_math", "algebra"): _math_rows,
        ("allenai/ai2_arc", "ARC-Challenge"): lambda: _arc_rows("arc_challenge"),
        ("allenai/ai2_arc", "ARC-Easy"): lambda: _arc_rows("arc_easy"),
    }
    written = []
    for (hub_id, config), splits in HUB_SPLITS.items():
        rows = sources[(hub_id, config)]()
        folder = fixture_dir(hub_id, config, root)
        folder.mkdir(parents=True, exist_ok=True)
        for k, split in enumerate(splits):
            path = folder / f"{split}.jsonl"
            chunk = rows[k * rows_per_split:(k + 1) * rows_per_split]
            path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in chunk),
                            encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in build():
        print(p.relative_to(FIXTURE_DIR.parent.parent.parent))
