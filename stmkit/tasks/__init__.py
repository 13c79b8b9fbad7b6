"""Benchmarks: loading (embedded or Hugging Face), prompts, answer extraction and scoring, one module each."""

from .base import LETTERS, SPLITS, Example, ScoreOptions
from .registry import TASKS, Task, compute_splits, convert_rows, get_task, load, score

__all__ = [
    "LETTERS", "SPLITS", "TASKS", "Example", "ScoreOptions", "Task",
    "compute_splits", "convert_rows", "get_task", "load", "score",
]  # fmt: skip
