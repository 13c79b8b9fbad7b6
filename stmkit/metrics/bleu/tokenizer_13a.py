"""The "13a" tokenisation of BLEU: the rules of mteval-v13a.pl (WMT's reference BLEU script).

The same rules are sacrebleu's default tokeniser and the default of the `evaluate` package's BLEU metric. Written
for stmkit from the published rules (mteval-v13a.pl, Moses / NIST), so that BLEU scores offline without sacrebleu.
"""

import re

_RULES = [
    # every symbol in { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ / is a token of its own
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # period and comma are split off unless preceded by a digit ...
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    # ... or followed by one (so 3.5 and 1,000 stay whole)
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # a dash after a digit is split off
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


class Tokenizer13a:
    """Callable: text -> text with tokens separated by single spaces (split on whitespace to get the tokens)."""

    def __call__(self, line: str) -> str:
        line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
        if "&" in line:
            line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        line = f" {line} "
        for pattern, repl in _RULES:
            line = pattern.sub(repl, line)
        return " ".join(line.split())
