"""Accuracy as an `evaluate` metric: share of exact matches, or the mean of per-item 0/1 correctness."""

import datasets
import evaluate

_DESCRIPTION = """
Accuracy = (number of items scored correct) / (number of items).
Config "default": predictions and references (strings or numbers) compared by exact equality; normalise
answers (task extraction) before calling it. Config "correctness": per-item scores `correct` in {0, 1},
e.g. from a sandboxed MBPP run or a BIRD execution match.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    predictions (`list` of `str` or numbers): model answers, already extracted and normalised.
    references (`list` of `str` or numbers): gold answers, same length and type as predictions.
Args (config "correctness"):
    correct (`list` of 0/1): whether each item was answered correctly.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> acc = stmkit.transfer.load_metric("accuracy")
    >>> acc.compute(predictions=["4", "7"], references=["4", "8"])
    {'accuracy': 0.5}
    >>> stmkit.transfer.load_metric("accuracy", config_name="correctness").compute(correct=[1, 0, 1, 1])
    {'accuracy': 0.75}
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
class Accuracy(evaluate.Metric):
    """Exact-match accuracy, or mean 0/1 correctness with config_name="correctness"."""

    def _info(self):
        if self.config_name == "correctness":
            features = datasets.Features({"correct": datasets.Value("float64")})
        elif self.config_name == "default":
            # Strings first: a string answer must never be coerced to a number. Then float64, not int64,
            # because int64 silently truncates 0.5 to 0, which would turn a mismatch into a match.
            features = [
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
                datasets.Features(
                    {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
                ),
            ]
        else:
            raise ValueError(f"unknown accuracy config {self.config_name!r}; use 'default' or 'correctness'")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions=None, references=None, correct=None):
        if self.config_name == "correctness":
            bad = [i for i, c in enumerate(correct) if c not in (0, 1)]
            if bad:
                raise ValueError(
                    f"correct[{bad[0]}] is {correct[bad[0]]}; per-item correctness must be 0 or 1"
                )
            scores = [float(c) for c in correct]
        else:
            scores = [float(p == r) for p, r in zip(predictions, references, strict=True)]
        if not scores:
            raise ValueError("accuracy of zero items is undefined; pass at least one item")
        return {"accuracy": sum(scores) / len(scores)}
