"""Benchmarks: loading (embedded or Hugging Face), prompts, answer extraction and scoring, one module each."""

from .base import SPLITS, Example
from .registry import TASKS, Task, compute_splits, convert_rows, get_task, load

__all__ = ["SPLITS", "TASKS", "Example", "Task", "compute_splits", "convert_rows", "get_task", "load"]
