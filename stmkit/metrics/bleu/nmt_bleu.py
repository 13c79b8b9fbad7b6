"""BLEU (Papineni et al., 2002) from token lists: the algorithm of tensorflow/nmt's compute_bleu.

Follows `compute_bleu` in tensorflow/nmt (nmt/scripts/bleu.py, Copyright 2017 Google Inc., Apache License 2.0),
which the `evaluate` package's BLEU metric also uses; rewritten for stmkit. Conventions of that implementation,
kept as they are: clipped n-gram counts against the union (max count) of the references; the reference length
of a sentence is its *shortest* reference; `smooth=True` is add-one smoothing of every order's precision
(Lin and Och, 2004). Two cases tensorflow/nmt leaves to a ZeroDivisionError are defined here: an empty
translation against non-empty references scores 0 (brevity penalty 0), and references of length 0 give a length
ratio of inf (no brevity penalty).
"""

import collections
import math


def _get_ngrams(segment, max_order):
    """Counter of every n-gram (as a tuple) of orders 1..max_order in a token list."""
    counts = collections.Counter()
    for order in range(1, max_order + 1):
        for i in range(len(segment) - order + 1):
            counts[tuple(segment[i : i + order])] += 1
    return counts


def compute_bleu(reference_corpus, translation_corpus, max_order=4, smooth=False):
    """Corpus BLEU of tokenised translations against lists of tokenised references.

    Returns (bleu, precisions, brevity penalty, length ratio, translation length, reference length); bleu in [0, 1].
    """
    matches = [0] * max_order
    possible = [0] * max_order
    reference_length = 0
    translation_length = 0
    for references, translation in zip(reference_corpus, translation_corpus, strict=True):
        reference_length += min(len(r) for r in references)
        translation_length += len(translation)
        merged = collections.Counter()
        for reference in references:
            merged |= _get_ngrams(reference, max_order)
        overlap = _get_ngrams(translation, max_order) & merged
        for ngram, count in overlap.items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            if len(translation) - order + 1 > 0:
                possible[order - 1] += len(translation) - order + 1

    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible, strict=True)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible, strict=True)]
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0

    ratio = translation_length / reference_length if reference_length else math.inf
    if ratio > 1.0:
        bp = 1.0
    elif translation_length == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - 1.0 / ratio)
    return geo_mean * bp, precisions, bp, ratio, translation_length, reference_length
