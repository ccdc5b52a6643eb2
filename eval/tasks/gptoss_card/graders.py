"""Answer extraction and scoring for the gptoss_card tasks (loaded by lm-eval via `!function graders.X`).

Prompts and grading follow OpenAI's reference harness (`gpt_oss.evals`, the one behind the model
card): multiple-choice answers are a letter A-D found in the reply, AIME answers the last
`\\boxed{}` (else the last integer), scored as integers. The code here is our own.

Every task scores *all* its repeats: a `custom` filter extracts one answer per sample (keeping the
list, instead of lm-eval's default take_first), and `process_results` returns the mean over the
repeats, i.e. pass@1 averaged over `repeats` samples, as the model card reports. A reply of None
(the server returned no `content`, e.g. the token budget ran out inside the reasoning) extracts
to None and counts as wrong; `no_answer` reports how often that happened, so a truncating budget
or a broken parser shows up as a number instead of a silently low score.
"""

from __future__ import annotations

import hashlib
import random
import re

LETTERS = "ABCD"

# ---------------------------------------------------------------------------------------------
# Multiple choice (GPQA, MMLU)

# The prompt of gpt_oss.evals (QUERY_TEMPLATE_MULTICHOICE): the question, the four options, and
# the instruction to answer with a letter.
MULTICHOICE_TEMPLATE = (
    "{question}\n\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}\n\n"
    "Express your final answer as the corresponding option 'A', 'B', 'C', or 'D'."
)

# Declarations of a letter, strongest first. Within one pattern the LAST match wins (a reply that
# weighs options and then concludes names the conclusion last).
_L = r"\(?\s*[*_]{0,2}([ABCD])[*_]{0,2}\s*\)?"
_CHOICE_PATTERNS = [
    # "Answer: C", "**Final answer:** (B)", "The answer is D", "answer is option A"
    # (words case-insensitive, the letter upper case: "the answer is a mixture" names no option)
    re.compile(r"(?i:\banswers?\b)[*_]{0,2}\s*(?:(?i:is)|:|-|–)?\s*[*_]{0,2}\s*(?:(?i:option)\s+)?" + _L + r"(?![A-Za-z0-9])"),
    # \boxed{B}, \boxed{\text{B}}, \boxed{\textbf{(B)}}
    re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*\(?([ABCD])\)?\s*\}?\s*\}"),
    # "Option B", "choice: C"
    re.compile(r"\b(?i:option|choice)\s*[:\-–]?\s*\(?([ABCD])\)?(?![A-Za-z0-9])"),
    # a line that is just the letter, maybe bold or bracketed: "B", "**B**", "(B)", "B."
    re.compile(r"(?m)^\s*[*_]{0,2}\(?([ABCD])\)?[*_]{0,2}\s*[.):]?\s*$"),
    # a line that starts with the letter and a separator: "C) 2.5 eV", "**B. Paris**", "(D) ..."
    re.compile(r"(?m)^\s*[*_]{0,2}\(?([ABCD])[).:]\s"),
    # a bracketed letter anywhere: "(B)", "[C]"
    re.compile(r"(?<![A-Za-z0-9])[(\[]([ABCD])[)\]](?![A-Za-z0-9])"),
    # a bold letter anywhere: "**B**"
    re.compile(r"(?<![A-Za-z0-9])[*_]{1,2}([ABCD])[*_]{1,2}(?![A-Za-z0-9])"),
]


def extract_choice(text: str | None) -> str | None:
    """The letter A-D a reply declares as its answer, or None."""
    if not text:
        return None
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def _permutation(key: str) -> list[int]:
    """A fixed shuffle of the four options per question (seeded by the question text, not by
    Python's per-process hash), so every run and every repeat asks the same prompt."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    order = [0, 1, 2, 3]
    random.Random(seed).shuffle(order)
    return order


def process_gpqa_docs(dataset):
    """simple-evals gpqa_diamond.csv rows -> {question, a..d, answer} with shuffled options."""

    def convert(doc):
        options = [
            doc["Correct Answer"],
            doc["Incorrect Answer 1"],
            doc["Incorrect Answer 2"],
            doc["Incorrect Answer 3"],
        ]
        options = [str(options[i]).strip() for i in _permutation(doc["Question"])]
        correct = options.index(str(doc["Correct Answer"]).strip())
        return {
            "question": str(doc["Question"]).strip(),
            "a": options[0],
            "b": options[1],
            "c": options[2],
            "d": options[3],
            "answer": LETTERS[correct],
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


def process_mmlu_docs(dataset):
    """simple-evals mmlu.csv rows (Question, A-D, Answer, Subject) -> {question, a..d, answer, subject}."""

    def convert(doc):
        return {
            "question": str(doc["Question"]).strip(),
            "a": str(doc["A"]),
            "b": str(doc["B"]),
            "c": str(doc["C"]),
            "d": str(doc["D"]),
            "answer": str(doc["Answer"]).strip().upper(),
            "subject": doc.get("Subject", ""),
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


def multichoice_prompt(doc: dict) -> str:
    return MULTICHOICE_TEMPLATE.format(question=doc["question"], a=doc["a"], b=doc["b"], c=doc["c"], d=doc["d"])


# ---------------------------------------------------------------------------------------------
# Integer answers (AIME, GSM8K)

AIME_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def _last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} or \\fbox{...} (braces balanced), or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _to_number(s: str) -> int | float | None:
    s = s.replace(",", "").replace("$", "").replace("\\!", "").strip()
    try:
        value = float(s)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def extract_number(text: str | None) -> int | float | None:
    """The final numeric answer of a reply: the last number inside the last \\boxed{}, else the
    number after a last "answer is"/"Answer:", else the last number in the reply."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        # \boxed{a, b} -> b (gpt_oss.evals takes the last comma item); \boxed{\text{70}} -> 70
        nums = _NUMBER.findall(boxed.replace("{,}", ","))
        if nums:
            return _to_number(nums[-1])
    declared = re.findall(r"(?i)answer\s*(?:is|:)\s*\**\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", text)
    if declared:
        return _to_number(declared[-1])
    nums = _NUMBER.findall(text)
    return _to_number(nums[-1]) if nums else None


def aime_prompt(doc: dict) -> str:
    problem = doc.get("problem", doc.get("Problem", doc.get("question")))
    return AIME_TEMPLATE.format(problem=str(problem).strip())


def aime_target(doc: dict) -> int:
    answer = doc.get("answer", doc.get("Answer"))
    m = re.match(r"\s*(\d+)", str(answer))  # "033" and "33" are the same AIME answer
    if m is None:
        raise ValueError(f"AIME doc has no integer answer: {answer!r}")
    return int(m.group(1))


GSM8K_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form \"Answer: $ANSWER\" (without quotes) where $ANSWER is the answer to the problem.\n\n{question}"
)


def gsm8k_prompt(doc: dict) -> str:
    return GSM8K_TEMPLATE.format(question=doc["question"].strip())


def gsm8k_target(doc: dict) -> int | float:
    value = _to_number(doc["answer"].split("####")[-1])
    if value is None:
        raise ValueError(f"GSM8K doc has no '#### <number>' answer: {doc['answer'][-80:]!r}")
    return value


# ---------------------------------------------------------------------------------------------
# lm-eval hooks: filters keep every repeat, process_results averages them


def _per_doc(extract):
    def filter_fn(resps, docs):
        return [[extract(r) for r in doc_resps] for doc_resps in resps]

    return filter_fn


extract_choices = _per_doc(extract_choice)
extract_numbers = _per_doc(extract_number)


def _score(extracted: list, gold) -> dict[str, float]:
    n = len(extracted)
    if n == 0:
        return {"exact_match": 0.0, "no_answer": 1.0}
    return {
        "exact_match": sum(1.0 for e in extracted if e is not None and e == gold) / n,
        "no_answer": sum(1.0 for e in extracted if e is None) / n,
    }


def process_choice_results(doc: dict, results: list) -> dict[str, float]:
    return _score(results[0], doc["answer"])


def process_aime_results(doc: dict, results: list) -> dict[str, float]:
    return _score(results[0], aime_target(doc))


def process_gsm8k_results(doc: dict, results: list) -> dict[str, float]:
    return _score(results[0], gsm8k_target(doc))
