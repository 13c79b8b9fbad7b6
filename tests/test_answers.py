"""Answer extraction and checking (each task's module; MATH's in stmkit.tasks.math_check) and the prompt templates
(stmkit.tasks.prompts)."""

from __future__ import annotations

import signal
import string
import threading
import time

import pytest

from stmkit.tasks import math_check, prompts
from stmkit.tasks.arc import extract_arc_letter
from stmkit.tasks.gsm8k import extract_gsm8k, gsm8k_equal
from stmkit.tasks.math_check import (
    extract_boxed,
    extract_math_answer,
    math_equal,
    math_equal_with_judge,
    normalize_math,
)
from stmkit.tasks.mbpp import extract_code

# ---------------------------------------------------------------------------------------------------------------
# MATH equivalence: (prediction, gold, expected). Golds are MATH-style \boxed{} contents; predictions are what
# models write on their "Answer:" line.
# ---------------------------------------------------------------------------------------------------------------

MATH_CASES = [
    # Equal after the benchmark checker's string normalisation
    (r"0.5", r"\frac{1}{2}", True),
    (r"3/4", r"\dfrac{3}{4}", True),
    (r"\frac12", r"\frac{1}{2}", True),
    (r"\tfrac{1}{4}", r"\frac14", True),
    (r"(1, 2)", r"(1,2)", True),
    (r"10", r"10\%", True),
    (r"B", r"\text{(B)}", True),
    (r"(B)", r"\text{(B)}", True),
    (r"x = 5", r"5", True),
    (r"k=3", r"3", True),
    (r"5 \text{ cm}", r"5", True),
    (r"64 \mbox{ square feet}", r"64", True),
    (r"20 dollars", r"20", True),
    (r"90^\circ", r"90", True),
    (r"\$18.90", r"18.90", True),
    (r"1{,}000", r"1000", True),
    (r"10,000", r"10000", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\text{Monday}", r"\text{Monday}", True),
    (r"Monday", r"\text{Monday}", True),
    (r".5", r"\frac{1}{2}", True),
    (r"$\frac{9}{4}$", r"\frac94", True),
    (r"\boxed{7}", r"7", True),
    (r"\sqrt2", r"\sqrt{2}", True),
    # Equal only symbolically
    (r"\sqrt{12}", r"2\sqrt{3}", True),
    (r"\sqrt{18}", r"3\sqrt{2}", True),
    (r"\sqrt{72}", r"6\sqrt{2}", True),
    (r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt{3}}{3}", True),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True),
    (r"-0.5", r"-\frac{1}{2}", True),
    (r"\frac{-2}{3}", r"-\frac{2}{3}", True),
    (r"2/(-3)", r"-\frac{2}{3}", True),
    (r"0.25\pi", r"\frac{\pi}{4}", True),
    (r"\pi \cdot 2", r"2\pi", True),
    (r"1024", r"2^{10}", True),
    (r"2", r"\sqrt[3]{8}", True),
    (r"5.0", r"5", True),
    (r"(x+1)^2", r"x^2+2x+1", True),
    (r"y=3+2x", r"y=2x+3", True),
    (r"\sqrt{2}x", r"x\sqrt{2}", True),
    (r"3, 1, -2", r"1, -2, 3", True),  # "enter all solutions": order does not matter
    (r"\{2,1\}", r"\{1,2\}", True),
    (r"(-\infty,3]", r"(-\infty, 3]", True),
    # Mathematically equal but not simplified: the paper's LLM judge is told to say "No" here, the local check is
    # more lenient.
    (r"3245/5", r"649", True),
    # Different answers
    (r"0.333", r"\frac{1}{3}", False),
    (r"6", r"5", False),
    (r"-5", r"5", False),
    (r"1.2", r"12", False),
    (r"3.14", r"\pi", False),
    (r"(-\infty, 3)", r"(-\infty, 3]", False),
    (r"(1,2)", r"[1,2]", False),
    (r"(2,1)", r"(1,2)", False),
    (r"1,2", r"1,2,3", False),
    (r"2", r"\sqrt{2}", False),
    (r"3\sqrt{2}", r"2\sqrt{3}", False),
    (r"\frac{4}{3}", r"\frac{3}{4}", False),
    (r"x^2+1", r"(x+1)^2", False),
    (r"\text{(A)}", r"\text{(B)}", False),
    (r"y", r"x", False),
    (r"-\infty", r"\infty", False),
    (r"\frac{1}{2}x", r"\frac{1}{2}", False),
    (r"", r"0", False),
    (r"10^{10^{10}}", r"5", False),  # a power tower must be refused, not computed
]


@pytest.mark.parametrize(("pred", "gold", "expected"), MATH_CASES)
def test_math_equal_table(pred: str, gold: str, expected: bool) -> None:
    assert math_equal(pred, gold) is expected


def test_math_table_is_big_and_balanced() -> None:
    assert len(MATH_CASES) >= 40
    assert sum(e for *_, e in MATH_CASES) >= 20 and sum(not e for *_, e in MATH_CASES) >= 15


def test_math_equal_is_symmetric_on_the_table() -> None:
    for pred, gold, expected in MATH_CASES:
        if pred and gold:
            assert math_equal(gold, pred) is expected, (pred, gold)


def test_math_equal_none() -> None:
    assert math_equal(None, "1") is False
    assert math_equal("1", None) is False


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\frac1{72}", r"\frac{1}{72}"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"\left( 1, 2 \right)", r"(1,2)"),
        (r"0.5", r"\frac{1}{2}"),
        (r"3/4", r"\frac{3}{4}"),
        (r"x = 7", r"7"),
        (r"50 \text{ kg}", r"50"),
        (r"30^{\circ}", r"30"),
        (r"\$ 12", r"12"),
        (r"25\%", r"25"),
        (r"\text{(C)}", r"C"),
        (r"$\frac{2}{3}$.", r"\frac{2}{3}"),
        (r"\boxed{\frac{1}{4}}", r"\frac{1}{4}"),
        (r"1\,000", r"1000"),
        (r"a^2 + b^2", r"a^2+b^2"),
    ],
)
def test_normalize_math(raw: str, canonical: str) -> None:
    assert normalize_math(raw) == canonical


def test_normalize_math_keeps_long_equations() -> None:
    # The checker only drops a left-hand side of at most two characters.
    assert normalize_math("x + y = 3") == "x+y=3"


# ---------------------------------------------------------------------------------------------------------------
# MATH extraction
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        (r"so $x = \boxed{5}$.", "5"),
        (r"\boxed{\frac{1}{2}} and finally \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\text{(B)}}", r"\text{(B)}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\fbox{42}", "42"),
        (r"the answer is $\boxed 7$", "7"),
        (r"\boxed{\frac{1}{2}", None),  # unbalanced
        ("no box here", None),
    ],
)
def test_extract_boxed(text: str, boxed: str | None) -> None:
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        # The format the MATH prompt asks for (and a Llama 3 output from the reference repo's logs)
        (
            "To evaluate ... we get:\n\n$$-\\frac{8}{33} \\div (-8) = \\frac{1}{33}$$\n\nAnswer: $\\frac{1}{33}$",
            r"\frac{1}{33}",
        ),
        ("... = 9\n\nAnswer: 9", "9"),
        ("Answer: $1", "1"),
        ("**Answer:** $4\\sqrt{3}/3$", r"4\sqrt{3}/3"),
        ("Answer: The answer is \\boxed{\\frac{3}{4}}", r"\frac{3}{4}"),
        # Step-by-step text that boxes instead of writing "Answer:"
        ("... $\\left(x - \\frac{1}{x}\\right)^4 = \\boxed{16}$.", "16"),
        # Minerva-style ending
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("Therefore, the final answer is 12.", "12"),
        ("I could not solve it.", None),
    ],
)
def test_extract_math_answer(text: str, answer: str | None) -> None:
    assert extract_math_answer(text) == answer


def test_extract_math_answer_uses_the_last_answer_line() -> None:
    text = "Answer: first try 3\nWait, that is wrong.\nAnswer: 4"
    assert extract_math_answer(text) == "4"


def test_extracted_math_answer_matches_gold_end_to_end() -> None:
    solution = r"The sum is $3 + 4 = \boxed{7}$."
    assert math_equal(extract_math_answer("3 + 4 = 7.\n\nAnswer: $7$"), extract_boxed(solution))
    assert not math_equal(extract_math_answer("Answer: 8"), extract_boxed(solution))


# ---------------------------------------------------------------------------------------------------------------
# MATH: judge hook and time limit
# ---------------------------------------------------------------------------------------------------------------


def test_judge_decides_when_given() -> None:
    calls: list[tuple[str, str, str]] = []

    def judge(problem: str, pred: str, gold: str) -> bool:
        calls.append((problem, pred, gold))
        return pred == "forty-two"

    assert math_equal_with_judge("What is 6*7?", "forty-two", "42", judge=judge) is True
    assert calls == [("What is 6*7?", "forty-two", "42")]
    # The judge overrules the local check in both directions.
    assert math_equal_with_judge("What is 6*7?", "42", "42", judge=judge) is False


def test_without_judge_the_local_check_decides() -> None:
    assert math_equal_with_judge("p", r"\frac{1}{2}", "0.5") is True
    assert math_equal_with_judge("p", "0.4", "0.5") is False
    assert math_equal_with_judge("p", None, "0.5", judge=lambda *a: True) is False


def test_judge_prompt_formats() -> None:
    text = prompts.MATH_JUDGE_PROMPT.format(expression1="1/2", expression2="0.5")
    assert text.endswith("Expression 1: 1/2\n    Expression 2: 0.5")
    assert 'Respond with only "Yes" or "No"' in text


def test_timeout_in_main_thread_returns_quickly_and_restores_the_handler() -> None:
    sentinel = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    assert math_check._with_timeout(lambda: time.sleep(5) or True, 0.2) is None
    assert time.monotonic() - start < 2.0
    assert signal.getsignal(signal.SIGALRM) is sentinel
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert math_check._with_timeout(lambda: 41 + 1, 1.0) == 42


def test_timeout_survives_code_that_catches_exception() -> None:
    def stubborn() -> bool:
        # sympy has `except Exception` blocks; the alarm must not be swallowed by them.
        for _ in range(100):
            try:
                time.sleep(0.05)
            except Exception:
                pass
        return True

    start = time.monotonic()
    assert math_check._with_timeout(stubborn, 0.2) is None
    assert time.monotonic() - start < 2.0


def test_timeout_outside_the_main_thread() -> None:
    out: dict[str, object] = {}

    def worker() -> None:
        start = time.monotonic()
        out["slow"] = math_check._with_timeout(lambda: time.sleep(3) or True, 0.2)
        out["elapsed"] = time.monotonic() - start
        out["equal"] = math_equal(r"\sqrt{12}", r"2\sqrt{3}")

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert out["slow"] is None and out["elapsed"] < 2.0
    assert out["equal"] is True


def test_math_equal_gives_up_when_time_runs_out() -> None:
    # Needs sympy (the strings differ), but no time is allowed: False rather than a hang or an error.
    assert math_equal(r"\sqrt{12}", r"2\sqrt{3}", timeout_s=0) is False


# ---------------------------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        # The format the GSM8K prompt asks for
        (
            "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4, so she sells 16 - 3 - 4 = 9 eggs. "
            "At $2 each she makes 9 * 2 = $18. #### 18",
            "18",
        ),
        ("A: First, 48 / 2 = 24 clips in May. Total 48 + 24 = 72.\n#### 72", "72"),
        ("... so the total is 1,234 dollars.\n#### $1,234.00", "1234"),
        ("#### 18.", "18"),
        ("The profit is 70000 - 50000 = 20000\n#### -3,000", "-3000"),
        ("#### 0.50", "0.5"),
        # No "####": "The answer is ..."
        ("So she has 5 + 3 = 8 apples left.\nThe answer is 8.", "8"),
        ("The final answer is: $42\n\nCheck: 40 + 2 = 42 and 7 other numbers", "42"),
        ("The answer is 25%.", "25"),
        # No marker at all: the last number
        ("He runs 3 sprints 3 times a week, each 60 meters, so 3 * 3 * 60 = 540 meters.", "540"),
        ("She pays 3-4 dollars each time, 12 in total", "12"),
        ("Total: \u22125 degrees", "-5"),
        ("I do not know.", None),
    ],
)
def test_extract_gsm8k(text: str, number: str | None) -> None:
    assert extract_gsm8k(text) == number


def test_extract_gsm8k_prefers_the_last_marker() -> None:
    assert extract_gsm8k("#### 5\nWait, recompute.\n#### 6") == "6"


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("1,234", "1234", True),
        ("$18", "18", True),
        ("0.5", "0.50", True),
        ("-3", "3", False),
        ("17", "18", False),
        ("18.0000001", "18", True),  # within 1e-6
        ("18.01", "18", False),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", True),
        (None, "18", False),
        ("eighteen", "18", False),
    ],
)
def test_gsm8k_equal(pred: str | None, gold: str, equal: bool) -> None:
    assert gsm8k_equal(pred, gold) is equal


# ---------------------------------------------------------------------------------------------------------------
# ARC letters
# ---------------------------------------------------------------------------------------------------------------

CHOICES = ["The Sun", "The Moon", "Mars", "A comet"]


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("The Moon's gravity pulls the oceans.\nAnswer: B", 1),
        ("Answer: (C)", 2),
        ("**Answer:** D", 3),
        ("Answer: **B**", 1),
        ("Answer: $\\boxed{C}$", 2),
        ("The answer is (B).", 1),
        ("The correct answer is: B", 1),
        ("The answer is B because the Moon's gravity pulls water.", 1),
        ("Answer: A. The Sun", 0),
        ("Option B is correct.", 1),
        ("answer: b", 1),
        ("B", 1),
        ("(B)", 1),
        ("C.", 2),
        ("C) Mars is red.", 2),
        # The last statement wins (the prompt asks for the answer on the last line)
        ("At first I thought the answer is A.\nAfter checking: Answer: C", 2),
        # No letter, but exactly one option is quoted in full
        ("I think it is the Moon.", 1),
        ("Answer: A comet", 3),
        # Nothing usable
        ("Answer: A magnet attracts iron.", None),  # "A" as an article
        ("Answer: E", None),  # only four options
        ("It is either Mars or the Moon.", None),  # two options quoted
        ("I am not sure.", None),
    ],
)
def test_extract_arc_letter(text: str, index: int | None) -> None:
    assert extract_arc_letter(text, CHOICES) == index


def test_arc_letter_five_options_and_custom_letters() -> None:
    five = ["a", "b", "c", "d", "e"]
    assert extract_arc_letter("Answer: E", five) == 4
    assert extract_arc_letter("Answer: 3", ["x", "y", "z"], letters="123") == 2


def test_arc_choice_text_needs_word_boundaries() -> None:
    # The one-letter option "w" occurs inside "answer" but is not quoted as a word.
    assert extract_arc_letter("the answer is a good one", ["x", "y", "z", "w"]) is None


# ---------------------------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Here is my code:\n```python\ndef f():\n    return 1\n```\nIt returns 1.", "def f():\n    return 1"),
        ("```Python\r\ndef f():\r\n    return 1\r\n```", "def f():\n    return 1"),
        ("```\ndef g(): pass\n```", "def g(): pass"),
        # Unterminated (the answer hit the token limit)
        ("```python\ndef h():\n    return 2", "def h():\n    return 2"),
        # No fence at all
        ("def k():\n    return 3\n", "def k():\n    return 3"),
        # A shell block first: the Python block is the code
        ("```bash\npip install numpy\n```\n```python\nimport numpy\n```", "import numpy"),
        # Two Python blocks: the first is the solution, the second usually a usage example
        (
            "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(2))\n```",
            "def f(x):\n    return x",
        ),
        ("```python", ""),
    ],
)
def test_extract_code(text: str, code: str) -> None:
    assert extract_code(text) == code


def test_extracted_code_runs() -> None:
    text = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds."
    namespace: dict[str, object] = {}
    exec(extract_code(text), namespace)  # plain code from a literal in this test, not a model
    assert namespace["add"](2, 3) == 5  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_prompt_fields() -> None:
    assert isinstance(prompts.PROMPT_VERSION, int)
    assert _fields(prompts.MBPP_PROMPT) == {"text", "tests"}
    assert _fields(prompts.MBPP_RESPONSE) == {"code"}
    assert _fields(prompts.MATH_PROMPT) == {"problem"}
    assert _fields(prompts.MATH_TRAIN_PROMPT) == {"problem"}
    assert _fields(prompts.GSM8K_PROMPT) == _fields(prompts.GSM8K_PROMPT_REFERENCE) == {"question"}
    assert _fields(prompts.ARC_PROMPT) == _fields(prompts.ARC_PROMPT_REFERENCE) == {"question", "choices"}
    assert _fields(prompts.BIRD_PROMPT) == {"schema", "question"}
    assert _fields(prompts.REPHRASE_PROMPT) == {"instruction", "reference_answer"}
    assert _fields(prompts.MATH_JUDGE_PROMPT) == {"expression1", "expression2"}


def test_mbpp_prompt_matches_the_reference_training_instruction() -> None:
    # The "instruction" of row 0 in the reference repo's dataset/rephrase/mbpp_*_validation_*.jsonl.
    expected = (
        "Please refer the given test cases and generate a python function for my problem. Make sure the written "
        "code is wrapped in code block : ```python\n<your code>\n```\n>>> Problem:\nWrite a python function to "
        "find minimum sum of factors of a given number.\n>>> Test Cases:\nassert find_Min_Sum(12) == 7\n"
        "assert find_Min_Sum(105) == 15\nassert find_Min_Sum(2) == 2\n"
    )
    tests = ["assert find_Min_Sum(12) == 7", "assert find_Min_Sum(105) == 15", "assert find_Min_Sum(2) == 2"]
    text = "Write a python function to find minimum sum of factors of a given number."
    assert prompts.MBPP_PROMPT.format(text=text, tests="\n".join(tests)) == expected


def test_math_prompt_matches_the_reference_log() -> None:
    # The "prompt" of item 7 in the reference repo's logging/math-test/*.jsonl.
    expected = (
        "Solve the following math problem step by step. The last line of your response should be of the form "
        "Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\nLet $a$ and $b$ be real "
        "numbers. The function $h(x)=ax+b$ satisfies $h(1)=5$ and $h(-1)=1$.  What is $h(6)$?\n\nRemember to put "
        'your answer on its own line after "Answer:", and you do not need to use a \\boxed command.'
    )
    problem = "Let $a$ and $b$ be real numbers. The function $h(x)=ax+b$ satisfies $h(1)=5$ and $h(-1)=1$.  What is $h(6)$?"
    assert prompts.MATH_PROMPT.format(problem=problem) == expected


def test_reference_variants_differ_only_by_the_missing_newline() -> None:
    q = "Why?"
    fixed = prompts.GSM8K_PROMPT_REFERENCE.format(question=q).replace("answerQ: ", "answer\nQ: ")
    assert prompts.GSM8K_PROMPT.format(question=q) == fixed
    assert "final numeric answerQ: Why?\nA:" in prompts.GSM8K_PROMPT_REFERENCE.format(question=q)
    arc = prompts.ARC_PROMPT.format(question=q, choices="A. x\nB. y")
    assert arc.endswith("Question:\nWhy?\nChoices:\nA. x\nB. y\n")
    assert prompts.ARC_PROMPT_REFERENCE.format(question=q, choices="A. x").endswith("Why?Choices:\nA. x\n")


def test_rephrase_prompt_layout() -> None:
    text = prompts.REPHRASE_PROMPT.format(instruction="Add 2 and 3.", reference_answer="5")
    assert text.startswith("Below are an instruction that describes a task along with a reference answer.")
    assert text.endswith("### Instruction:\nAdd 2 and 3.\n### Reference Answer:\n5\n### Response:")
