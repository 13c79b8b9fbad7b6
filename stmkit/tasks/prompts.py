"""Prompt templates (``str.format``) for every task and purpose, as the reference implementation wrote them.

Source: github.com/appier-research/robust-llm-finetunes (the paper's code), read file by file:

- ``MBPP_PROMPT``: ``evals/run_mbpp.py`` (``prefix_instruct`` + ``">>> Problem:..."``). The same text is the
  training instruction: the ``instruction`` field of ``dataset/rephrase/mbpp_*_sample_validation_t_0.7_1.jsonl``
  reproduces it character for character. ``MBPP_RESPONSE`` is the ground-truth answer format of the same file.
- ``MATH_PROMPT``: ``QUERY_TEMPLATE`` of ``evals/run_math.py`` (also the Self-Output sampling prompt in
  ``generate_self-output_training_data.py``). Answers were read from the first ``Answer:`` line (the
  ``ANSWER_PATTERN`` of ``evals/common.py``), else from the last ``\\boxed{}``, and then judged by gpt-4o-mini with
  ``MATH_JUDGE_PROMPT`` (``EQUALITY_TEMPLATE`` of ``evals/common.py``).
- ``MATH_TRAIN_PROMPT``: not in the repository's code. Its MATH training prompts are the ``conversations[0]``
  texts of the Hugging Face dataset ``appier-ai-research/robust-finetuning`` (config ``math-resample``), which
  we cannot read here; ``run_math.py`` defines an unused ``train_prompt = "Given a mathematics problem, determine
  the answer.\\n"``. We train with the evaluation prompt so that training and test prompts match (our choice).
- ``GSM8K_PROMPT``: ``instruction_prompt`` of ``evals/run_gsm8k.py`` + ``"Q: <question>\\nA:"`` (zero-shot).
- ``ARC_PROMPT``: ``templated()`` of ``evals/run_arc.py`` (same text in ``generate_stm_training_data.py``).
- ``BIRD_PROMPT``: the repository ran BIRD through stream-bench (README; ``stream_bench/configs/example.yml``,
  agent ``zeroshot``); the zero-shot prompt is ``GeneralText2SQL.get_zeroshot_prompt`` in
  ``stream_bench/benchmarks/text_to_sql.py`` of github.com/stream-bench/stream-bench (lines stripped).
- ``REPHRASE_PROMPT``: ``PROMPT_TEMPLATE`` of ``generate_self-output_training_data.py`` (SDFT-style: instruction +
  reference answer -> the model's own response).

How the reference implementation decoded (worth knowing before comparing numbers with the paper):

- Evaluation (``run_mbpp/run_math/run_gsm8k/run_arc.py`` and stream-bench's ``hf_model_lora.py`` for BIRD) calls a
  transformers ``pipeline`` with only ``max_new_tokens`` (1024 for MBPP, 512 for the others); the ``temperature:
  0.0`` of the BIRD config is never passed on. So decoding follows each model's ``generation_config.json``:
  greedy for Gemma 2 and Mistral, but **sampling at temperature 0.6, top_p 0.9** for Llama 3 8B Instruct, whose
  generation config sets ``do_sample: true``. The paper says greedy; stmkit decodes greedily (the paper's stated
  method) and offers sampling as an option.
- Self-Output sampling: MBPP ``do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=512``, 32 samples;
  MATH ``do_sample=True, temperature=0.7, max_new_tokens=512`` with ``top_p`` also set to 0.7 (the variable
  ``temp`` is passed as ``top_p``), 32 samples, each judged by gpt-4o-mini on its last ``\\boxed{}``.
  Rephrase: the same settings with one sample. The lowest-PPL correct answer is kept.

Two concatenation slips in the reference prompts are fixed here by default: ``run_gsm8k.py`` glues ``"Q: "`` right
after the instruction's last word, and ``run_arc.py`` glues ``"Choices:"`` right after the question, with no
newline. The ``*_REFERENCE`` constants keep the exact strings, for runs that must match the paper's code byte for
byte. Bump ``PROMPT_VERSION`` whenever any template below changes: cache keys include it.
"""

from __future__ import annotations

PROMPT_VERSION = 1

# evals/run_mbpp.py: prefix_instruct + ">>> Problem:\n{}\n>>> Test Cases:\n{}\n".format(text.strip(), "\n".join(tests))
MBPP_PROMPT = (
    "Please refer the given test cases and generate a python function for my problem. "
    "Make sure the written code is wrapped in code block : ```python\n<your code>\n```\n"
    ">>> Problem:\n{text}\n>>> Test Cases:\n{tests}\n"
)
# Training uses the evaluation prompt verbatim (dataset/rephrase/mbpp_*.jsonl, field "instruction").
MBPP_TRAIN_PROMPT = MBPP_PROMPT
# Ground-truth answer as the repository trained on it (dataset/rephrase/mbpp_*.jsonl, src "ground_truth").
MBPP_RESPONSE = "```python\n{code}\n```"

# evals/run_math.py, QUERY_TEMPLATE (field renamed from {Question} to {problem}).
MATH_PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n"
    "{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:", and you do not need to use a \\boxed command.'
)
# Not recoverable from the repository's code (see the module docstring); the evaluation prompt is our choice.
MATH_TRAIN_PROMPT = MATH_PROMPT

# evals/common.py, EQUALITY_TEMPLATE (%(expression1)s -> {expression1}): the gpt-4o-mini judge's prompt, for users
# who plug an LLM judge into math_check.math_equal_with_judge. The judge answers "Yes" or "No".
MATH_JUDGE_PROMPT = """Look at the following two expressions (answers to a math problem) and judge whether they are equivalent. Only perform trivial simplifications

Examples:

    Expression 1: $2x+3$
    Expression 2: $3+2x$

Yes

    Expression 1: 3/2
    Expression 2: 1.5

Yes

    Expression 1: $x^2+2x+1$
    Expression 2: $y^2+2y+1$

No

    Expression 1: $x^2+2x+1$
    Expression 2: $(x+1)^2$

Yes

    Expression 1: 3245/5
    Expression 2: 649

No
(these are actually equal, don't mark them equivalent if you need to do nontrivial simplifications)

    Expression 1: 2/(-3)
    Expression 2: -2/3

Yes
(trivial simplifications are allowed)

    Expression 1: 72 degrees
    Expression 2: 72

Yes
(give benefit of the doubt to units)

    Expression 1: 64
    Expression 2: 64 square feet

Yes
(give benefit of the doubt to units)

---

YOUR TASK


Respond with only "Yes" or "No" (without quotes). Do not include a rationale.

    Expression 1: {expression1}
    Expression 2: {expression2}"""

# evals/run_gsm8k.py: instruction_prompt.strip() + "Q: " + question + "\nA:" (zero-shot branch).
_GSM8K_INSTRUCTION = (
    "You are given a grade school math question. Please answer the question in the following format:\n\n"
    "Q: <Question>\n"
    "A: <Think step by step here> #### <number only answer>\n\n"
    'Format requirements : you must first output your reasoning before finalized with the " #### " format '
    "followed by the final numeric answer"
)
GSM8K_PROMPT = _GSM8K_INSTRUCTION + "\nQ: {question}\nA:"
# Byte-exact reference: no newline between "...final numeric answer" and "Q: ".
GSM8K_PROMPT_REFERENCE = _GSM8K_INSTRUCTION + "Q: {question}\nA:"

# evals/run_arc.py, templated(): {choices} is one "A. <text>" line per option. "ABCD" is verbatim even though a few
# ARC-Challenge questions have five options.
_ARC_INSTRUCTION = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD.\n"
)
ARC_PROMPT = _ARC_INSTRUCTION + "Question:\n{question}\nChoices:\n{choices}\n"
# Byte-exact reference: 'Question:\n' + question + 'Choices:\n' + ... (no newline before "Choices:").
ARC_PROMPT_REFERENCE = _ARC_INSTRUCTION + "Question:\n{question}Choices:\n{choices}\n"

# stream-bench, stream_bench/benchmarks/text_to_sql.py, GeneralText2SQL.get_zeroshot_prompt (after strip_all_lines,
# which also strips each line of the schema). {schema}: the CREATE TABLE statements (plus example rows) of the
# question's SQLite database.
BIRD_PROMPT = (
    "{schema}\n\n"
    "-- Using valid SQLite, answer the following question for the tables provided above.\n"
    "-- Question: {question}\n\n"
    "Now, generate the correct SQL code directly (Do NOT generate other text except the SQL code):"
)

# generate_self-output_training_data.py, PROMPT_TEMPLATE (field {original_response} renamed {reference_answer}).
REPHRASE_PROMPT = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response.\n"
    "### Instruction:\n{instruction}\n"
    "### Reference Answer:\n{reference_answer}\n"
    "### Response:"
)
