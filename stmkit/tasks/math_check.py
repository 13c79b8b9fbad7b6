"""MATH's answer checker: extract the final answer, normalise it, and decide equivalence with the gold answer.

Pure functions, no model. Equivalence follows the benchmark's own checker (Hendrycks et al., ``is_equiv`` with
``strip_string``), adds a few normalisations it lacks, then tries a bounded symbolic comparison with sympy.
The paper judged MATH with gpt-4o-mini instead; ``math_equal_with_judge`` lets a user plug such a judge in.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MathJudge", "extract_boxed", "extract_math_answer", "math_equal", "math_equal_with_judge",
           "normalize_math"]

# ---------------------------------------------------------------------------------------------------------------
# MATH: extraction
# ---------------------------------------------------------------------------------------------------------------


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...} (braces balanced), or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    j = idx + (len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox"))
    k = j
    while k < len(text) and text[k] in " \t":
        k += 1
    if k < len(text) and text[k] == "{":
        depth = 0
        for i in range(k, len(text)):
            if text[i] == "{" and text[i - 1 : i] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1 : i] != "\\":
                depth -= 1
                if depth == 0:
                    return text[k + 1 : i]
        return None
    if k > j:
        # "\boxed 5": the argument is the next run of non-space characters (stopping at a closing $).
        m = re.match(r"[^\s$]+", text[k:])
        return m.group(0) if m else None
    return None


_ANSWER_LINE = re.compile(r"(?i)\banswer\s*[*_]*\s*:\s*([^\n]+)")
_FINAL_ANSWER = re.compile(r"(?i)(?:final answer|the answer)\s*(?:is|=|:)\s*:?\s*([^\n]+)")


def extract_math_answer(text: str) -> str | None:
    """The final answer of a MATH response: the last 'Answer:' line, else the last \\boxed{}, else 'answer is X'."""
    lines = _ANSWER_LINE.findall(text)
    if lines:
        ans = _clean_math_candidate(lines[-1])
        if ans:
            return ans
    boxed = extract_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    finals = _FINAL_ANSWER.findall(text)
    if finals:
        ans = _clean_math_candidate(finals[-1])
        if ans:
            return ans
    return None


def _clean_math_candidate(c: str) -> str | None:
    """Reduce an answer line to the answer: inner \\boxed{}, 'answer is X', $...$ delimiters, trailing prose."""
    c = c.strip()
    if "\\boxed" in c or "\\fbox" in c:
        boxed = extract_boxed(c)
        if boxed is not None:
            return boxed.strip() or None
    m = _FINAL_ANSWER.search(c)
    if m:
        c = m.group(1).strip()
    c = c.replace("**", "").strip()
    if c.count("$") >= 2:
        # The math between the first and last dollar ("$\frac{1}{3}$ dollars" -> "\frac{1}{3}").
        c = c[c.index("$") + 1 : c.rindex("$")].strip("$ ")
    else:
        c = c.strip("$ ")
        # Without math delimiters, cut prose after the first sentence ("5. I hope it is correct.").
        c = re.split(r"\.\s", c, maxsplit=1)[0]
    c = c.removeprefix("\\(").removesuffix("\\)").removeprefix("\\[").removesuffix("\\]")
    c = c.strip().rstrip(".").strip()
    return c or None


# ---------------------------------------------------------------------------------------------------------------
# MATH: normalisation (Hendrycks et al. strip_string, plus marked additions)
# ---------------------------------------------------------------------------------------------------------------


def _fix_fracs(s: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}; arguments already in braces stay."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:
            return s  # as in the reference checker: give up on a malformed \frac
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_sqrt(s: str) -> str:
    r"""\sqrt3 -> \sqrt{3} (one character, as in the reference checker; \sqrt[n]{...} is left alone)."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if part and part[0] not in "{[":
            out += "\\sqrt{" + part[0] + "}" + part[1:]
        else:
            out += "\\sqrt" + part
    return out


def _fix_a_slash_b(s: str) -> str:
    r"""'3/4' -> '\frac{3}{4}' when both sides are integers and nothing else is there."""
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if not m:
        return s
    return "\\frac{" + str(int(m.group(1))) + "}{" + str(int(m.group(2))) + "}"


def _unwrap(s: str, command: str) -> str:
    r"""Replace every \command{X} by X (balanced braces)."""
    key = "\\" + command + "{"
    while True:
        i = s.find(key)
        if i < 0:
            return s
        depth, j = 0, i + len(key) - 1
        for j in range(i + len(key) - 1, len(s)):
            if s[j] == "{":
                depth += 1
            elif s[j] == "}":
                depth -= 1
                if depth == 0:
                    break
        else:
            return s  # unbalanced: leave it
        s = s[:i] + s[i + len(key) : j] + s[j + 1 :]


# Units a model may append to a plain number ("5 cm", "20 \mbox{ dollars}"); single letters are omitted because
# they are more likely variables than units.
_UNITS = (
    r"units?|cm|centimeters?|mm|km|kilometers?|meters?|inch(?:es)?|in|ft|feet|foot|yards?|miles?|mph|"
    r"seconds?|minutes?|hours?|days?|weeks?|months?|years?|degrees?|dollars?|cents?|pounds?|ounces?|"
    r"gallons?|liters?|square\s+\w+|sq\s*\w+|cubic\s+\w+"
)
_NUMBER_WITH_UNIT = re.compile(rf"^(-?[\d.,]+)\s*(?:{_UNITS})(?:\^\{{?[23]\}}?)?$", re.IGNORECASE)


def normalize_math(s: str) -> str:
    """A MATH answer in the canonical string form of the benchmark's checker (Hendrycks et al. strip_string)."""
    s = s.strip()
    # --- additions: wrappers the reference checker never sees because it is given clean strings ---
    if s.startswith(("\\boxed", "\\fbox")):
        inner = extract_boxed(s)
        s = inner if inner is not None else s
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right) - 1:
            s = s[len(left) : len(s) - len(right)]
            break
    s = s.strip().rstrip(".").strip()
    # --- Hendrycks et al. strip_string, step by step ---
    s = s.replace("\n", "").replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:
        s = s.split("\\text{ ")[0].rstrip()  # "5 \text{ cm}": units on the right
    # --- additions: text wrappers, plain units and symbols the reference checker does not strip ---
    s = s.replace("\\mbox{ ", "\\text{ ")
    if "\\text{ " in s:
        s = s.split("\\text{ ")[0].rstrip()
    for command in ("text", "textbf", "textit", "mathrm", "mathbf", "mbox", "textnormal", "operatorname"):
        s = _unwrap(s, command)
    s = s.replace("$", "").replace("°", "").replace("\\circ", "")
    for thin in ("\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(thin, " " if thin in ("\\ ", "~") else "")
    s = s.replace("{,}", ",")
    unit = _NUMBER_WITH_UNIT.match(s.strip())
    if unit:
        s = unit.group(1)
    # --- Hendrycks et al. strip_string, continued ---
    s = s.replace("\\%", "").replace("%", "")  # the plain "%" is our addition
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]  # "x = 5" -> "5"
    s = re.sub(r"\\(sqrt|frac)\s+", r"\\\1", s)  # addition: "\sqrt 3" -> "\sqrt3" before the fix below
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_a_slash_b(s)
    # --- additions: thousands separators, a lone option letter in parentheses, a leading "+" ---
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    letter = re.fullmatch(r"\(([A-Z])\)", s)
    if letter:
        s = letter.group(1)
    return s.removeprefix("+")


# ---------------------------------------------------------------------------------------------------------------
# MATH: equivalence
# ---------------------------------------------------------------------------------------------------------------


class MathJudge(Protocol):
    """A callable that decides whether `pred` answers `problem` as `gold` does (e.g. an LLM judge)."""

    def __call__(self, problem: str, pred: str, gold: str) -> bool: ...


def math_equal(pred: str | None, gold: str | None, timeout_s: float = 2.0) -> bool:
    """True if the normalised answers are equal, or sympy shows them equal within `timeout_s` seconds."""
    if pred is None or gold is None:
        return False
    a, b = normalize_math(pred), normalize_math(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    import sympy  # noqa: F401  (the first import takes about a second: keep it outside the time limit)

    result = _with_timeout(lambda: _structured_equal(a, b), timeout_s)
    return bool(result)


def math_equal_with_judge(
    problem: str, pred: str | None, gold: str, judge: Callable[[str, str, str], bool] | None = None
) -> bool:
    """Judge `pred` against `gold`: the plugged-in `judge(problem, pred, gold)` if given, else `math_equal`."""
    if pred is None:
        return False
    if judge is not None:
        return bool(judge(problem, pred, gold))
    return math_equal(pred, gold)


def _with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """fn() or None if it runs past timeout_s: a SIGALRM timer in the main thread, a daemon thread elsewhere."""
    if timeout_s <= 0:
        return None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(fn, timeout_s)
    box: list[Any] = [None]

    def run() -> None:
        try:
            box[0] = fn()
        except Exception:
            box[0] = None

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    # A thread cannot be stopped; a runaway one is abandoned (daemon, so it never blocks exit).
    return None if worker.is_alive() else box[0]


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that sympy's own `except Exception` blocks cannot swallow it."""


def _with_alarm(fn: Callable[[], Any], timeout_s: float) -> Any:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    # Keep any timer the caller (e.g. pytest-timeout) had running, and put it back afterwards.
    started = time.monotonic()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    except (_Timeout, Exception):
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)


class _Unsupported(Exception):
    """The LaTeX uses something the small converter does not handle; the comparison falls back to False."""


def _split_top(s: str) -> tuple[str, list[str]] | None:
    """'(1,2)' -> ('()', ['1', '2']); '1,2' -> ('', ['1', '2']); a single expression -> None."""
    kind, body = "", s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, body = "\\{\\}", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s):
        # Intervals may mix brackets: "(-\infty,3]".
        kind, body = s[0] + s[-1], s[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    if len(parts) == 1 and kind != "\\{\\}":
        return None  # "(5)" is a number in parentheses, not a 1-tuple
    return kind, parts


def _closes_at_end(s: str) -> bool:
    """True if the bracket opening s closes at its last character."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _structured_equal(a: str, b: str) -> bool:
    """Tuples, intervals and sets elementwise; unbracketed lists as multisets; single expressions with sympy."""
    sa, sb = _split_top(a), _split_top(b)
    if sa is None and sb is None:
        return _scalar_equal(a, b)
    if sa is None or sb is None:
        return False
    (ka, pa), (kb, pb) = sa, sb
    if ka != kb or len(pa) != len(pb):
        return False
    if ka in ("", "\\{\\}"):
        # Sets and answer lists ("1, -2, 3"): order does not matter.
        remaining = list(pb)
        for x in pa:
            match = next((j for j, y in enumerate(remaining) if x == y or _scalar_equal(x, y)), None)
            if match is None:
                return False
            remaining.pop(match)
        return True
    return all(x == y or _scalar_equal(x, y) for x, y in zip(pa, pb, strict=True))


def _scalar_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    if a.count("=") == 1 and b.count("=") == 1:
        (la, ra), (lb, rb) = a.split("="), b.split("=")
        return _scalar_equal(la, lb) and _scalar_equal(ra, rb)
    try:
        ea, eb = _to_sympy(a), _to_sympy(b)
    except _Unsupported:
        return False
    import sympy

    try:
        if sympy.simplify(ea - eb) == 0:
            return True
        if not ea.free_symbols and not eb.free_symbols:
            va, vb = complex(sympy.N(ea, 30)), complex(sympy.N(eb, 30))
            if not all(map(math.isfinite, (va.real, va.imag, vb.real, vb.imag))):
                return va == vb  # inf - inf is not small: compare infinities exactly
            return abs(va - vb) <= 1e-9 * max(1.0, abs(vb))
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError):
        return False
    return False


_FUNCTIONS = {"sqrt", "pi", "oo", "sin", "cos", "tan", "log", "ln", "exp"}
_COMMANDS = {
    "pi": "pi",
    "infty": "oo",
    "cdot": "*",
    "times": "*",
    "div": "/",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "ln": "log",
    "log": "log",
    "exp": "exp",
}


def _latex_to_python(s: str) -> str:
    """A small LaTeX -> Python-expression translator for the forms MATH answers use."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                raise _Unsupported(s)
            name = m.group(1)
            i += len(m.group(0))
            if name == "frac":
                num, i = _group(s, i)
                den, i = _group(s, i)
                out.append(f"(({_latex_to_python(num)})/({_latex_to_python(den)}))")
            elif name == "sqrt":
                index = None
                if s.startswith("[", i):
                    close = s.find("]", i)
                    if close < 0:
                        raise _Unsupported(s)
                    index, i = s[i + 1 : close], close + 1
                arg, i = _group(s, i)
                inner = _latex_to_python(arg)
                out.append(
                    f" sqrt({inner})" if index is None else f"(({inner})**(1/({_latex_to_python(index)})))"
                )
            elif name in _COMMANDS:
                out.append(" " + _COMMANDS[name] + " ")
            else:
                raise _Unsupported(name)
        elif ch == "^":
            i += 1
            if s.startswith("{", i):
                arg, i = _group(s, i)
            elif i < len(s):
                arg, i = s[i], i + 1
            else:
                raise _Unsupported(s)
            out.append(f"**({_latex_to_python(arg)})")
        elif ch == "{":
            arg, i = _group(s, i)
            out.append(f"({_latex_to_python(arg)})")
        elif ch.isalnum() or ch in "+-*/().":
            out.append(ch)
            i += 1
        else:
            raise _Unsupported(ch)
    return "".join(out)


def _group(s: str, i: int) -> tuple[str, int]:
    """The {...} argument starting at s[i] (or a single character), and the index after it."""
    if i >= len(s):
        raise _Unsupported(s)
    if s[i] != "{":
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
    raise _Unsupported(s)


def _to_sympy(s: str) -> Any:
    """Parse a normalised MATH answer into a sympy expression, refusing anything that could take very long."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    py = _latex_to_python(s)
    # Multi-letter names that are not known functions are products of single-letter variables ("xy" -> x*y).
    py = re.sub(r"[A-Za-z]+", lambda m: m.group(0) if m.group(0) in _FUNCTIONS else "*".join(m.group(0)), py)
    if not re.fullmatch(r"[\w+\-*/(). ]*", py) or not py.strip() or re.search(r"(?<!\d)\.|\.(?!\d)", py):
        raise _Unsupported(s)
    names = {c: sympy.Symbol(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names.update(sqrt=sympy.sqrt, pi=sympy.pi, oo=sympy.oo, sin=sympy.sin, cos=sympy.cos, tan=sympy.tan)
    names.update(log=sympy.log, exp=sympy.exp)
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    try:
        raw = parse_expr(py, local_dict=names, transformations=transformations, evaluate=False)
    except Exception as e:  # sympy raises many kinds (SyntaxError, TokenError, TypeError...)
        raise _Unsupported(s) from e
    # Huge integers and power towers would make sympy compute for minutes in C code no signal can interrupt.
    for node in sympy.preorder_traversal(raw):
        if isinstance(node, sympy.Integer) and abs(int(node)) > 10**200:
            raise _Unsupported(s)
        if isinstance(node, sympy.Pow):
            exponent = node.exp
            if exponent.is_Number and abs(exponent) > 1000:
                raise _Unsupported(s)
            if not exponent.is_Number and not exponent.free_symbols:
                # A numeric exponent written as an expression (1/3, 10^{10}): bound it by its float value.
                size = sympy.N(exponent, 15)
                if not size.is_Number or abs(size) > 1000:
                    raise _Unsupported(s)
    try:
        return parse_expr(py, local_dict=names, transformations=transformations, evaluate=True)
    except Exception as e:
        raise _Unsupported(s) from e
