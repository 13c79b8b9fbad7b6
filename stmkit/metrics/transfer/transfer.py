"""TI and BWT (the paper's transfer metrics) as an `evaluate` metric, wrapping stmkit.transfer."""

import datasets
import evaluate

from stmkit.transfer import transfer_metrics

_DESCRIPTION = """
Target improvement (TI) and backward transfer (BWT), in percent, as defined in arXiv 2501.14315:
TI  = 100 * (A_target_after - A_target_before) / A_target_before
BWT = 100 * mean over the non-target tasks of (A_after - A_before) / A_before
One row per task: its name and its accuracy before and after fine-tuning. Task names match case-insensitively.
"""

_KWARGS_DESCRIPTION = """
Args:
    task (`list` of `str`): task names, each once (e.g. MBPP, MATH, ARC, GSM8K, BIRD).
    before (`list` of `float`): accuracy of the original model on each task.
    after (`list` of `float`): accuracy of the fine-tuned model on each task.
    target (`str`): the task that was fine-tuned on.
Returns:
    ti (`float`): target improvement, percent.
    bwt (`float`): backward transfer over the non-target tasks, percent.
Examples:
    >>> transfer = stmkit.transfer.load_metric("transfer")
    >>> transfer.compute(task=["MBPP", "MATH", "GSM8K"], before=[0.5, 0.3, 0.7], after=[0.55, 0.27, 0.7],
    ...                  target="MBPP")
    {'ti': 10.0..., 'bwt': -5.0...}
"""

_CITATION = """
@inproceedings{wu2025stm,
  title = {Mitigating Forgetting in LLM Fine-Tuning via Low-Perplexity Token Learning},
  author = {Wu, Chao-Chung and Tam, Zhi Rui and Lin, Chieh-Yen and Chen, Yun-Nung
            and Sun, Shao-Hua and Lee, Hung-yi},
  booktitle = {NeurIPS},
  year = {2025},
  note = {arXiv:2501.14315}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Transfer(evaluate.Metric):
    """TI and BWT in percent; pass target= to compute()."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "task": datasets.Value("string"),
                    "before": datasets.Value("float64"),
                    "after": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, task, before, after, target=None):
        if target is None:
            raise ValueError("pass the fine-tuning target task, e.g. compute(..., target='MBPP')")
        seen = set()
        for name in task:
            if name.casefold() in seen:
                raise ValueError(f"task {name!r} appears more than once; give one row per task")
            seen.add(name.casefold())
        return transfer_metrics(
            dict(zip(task, before, strict=True)), dict(zip(task, after, strict=True)), target
        )
