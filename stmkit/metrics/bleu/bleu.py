"""BLEU as an `evaluate` metric, offline: tensorflow/nmt's compute_bleu with the 13a tokenisation.

The interface of the `evaluate` package's "bleu" metric (predictions, references, tokenizer, max_order, smooth;
the same output keys), rewritten for stmkit so that it loads by path without the hub. stmkit.diversity builds
Self-BLEU on it.
"""

import datasets
import evaluate

from .nmt_bleu import compute_bleu
from .tokenizer_13a import Tokenizer13a

_DESCRIPTION = """
BLEU (Papineni et al., 2002): the geometric mean of modified (clipped) n-gram precisions of orders 1..max_order,
times a brevity penalty. Corpus-level: counts are summed over all predictions before the precisions are formed.
Text is tokenised with the 13a rules (mteval-v13a.pl; sacrebleu's default) unless another tokenizer is given.
Conventions of tensorflow/nmt's compute_bleu: the reference length of a prediction is its shortest reference;
smooth=True adds one to the numerator and denominator of every order's precision (Lin and Och, 2004).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the texts to score.
    references (`list` of `list` of `str`, or `list` of `str`): one or more references per prediction.
    tokenizer: "13a" (default), "none" (split on whitespace), or a callable text -> list of tokens.
    max_order (`int`): the largest n-gram order, 4 by default (BLEU-4).
    smooth (`bool`): add-one smoothing of the precisions (default False, as in `evaluate`'s bleu).
    per_prediction (`bool`): also return `per_prediction_bleu`, each prediction's sentence BLEU against its own
        references (default False).
Returns:
    bleu (`float`, in [0, 1]), precisions (`list` of `float`), brevity_penalty, length_ratio, translation_length,
    reference_length; per_prediction_bleu (`list` of `float`) with per_prediction=True.
Examples:
    >>> bleu = stmkit.transfer.load_metric("bleu")
    >>> bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"]
    1.0
"""

_CITATION = """
@inproceedings{papineni2002bleu,
  title = {BLEU: a Method for Automatic Evaluation of Machine Translation},
  author = {Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle = {ACL},
  year = {2002}
}
@inproceedings{lin2004orange,
  title = {ORANGE: a Method for Evaluating Automatic Evaluation Metrics for Machine Translation},
  author = {Lin, Chin-Yew and Och, Franz Josef},
  booktitle = {COLING},
  year = {2004}
}
"""

TOKENIZERS = {"13a": lambda text: Tokenizer13a()(text).split(), "none": str.split}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    """Corpus BLEU (and optionally per-prediction sentence BLEU), 13a tokenisation by default."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string"), id="sequence"),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            reference_urls=["https://github.com/tensorflow/nmt/blob/master/nmt/scripts/bleu.py"],
        )

    def _compute(self, predictions, references, tokenizer="13a", max_order=4, smooth=False, per_prediction=False):
        if isinstance(tokenizer, str):
            if tokenizer not in TOKENIZERS:
                raise ValueError(f"unknown tokenizer {tokenizer!r}; use one of {sorted(TOKENIZERS)} or a callable")
            tokenizer = TOKENIZERS[tokenizer]
        if max_order < 1:
            raise ValueError(f"max_order must be at least 1, got {max_order}")
        if not predictions:
            raise ValueError("BLEU of zero predictions is undefined; pass at least one prediction")
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        empty = [i for i, refs in enumerate(references) if not refs]
        if empty:
            raise ValueError(f"prediction {empty[0]} has no reference; give every prediction at least one")
        refs_tok = [[tokenizer(r) for r in refs] for refs in references]
        preds_tok = [tokenizer(p) for p in predictions]
        bleu, precisions, bp, ratio, trans_len, ref_len = compute_bleu(refs_tok, preds_tok, max_order, smooth)
        out = {
            "bleu": bleu,
            "precisions": precisions,
            "brevity_penalty": bp,
            "length_ratio": ratio,
            "translation_length": trans_len,
            "reference_length": ref_len,
        }
        if per_prediction:
            out["per_prediction_bleu"] = [
                compute_bleu([refs], [pred], max_order, smooth)[0] for refs, pred in zip(refs_tok, preds_tok, strict=True)
            ]
        return out
