"""Answer extraction of the gptoss_card tasks (eval/tasks/gptoss_card/graders.py)."""

import importlib.util
import pathlib

import pytest

GRADERS = pathlib.Path(__file__).resolve().parents[2] / "eval" / "tasks" / "gptoss_card" / "graders.py"
_spec = importlib.util.spec_from_file_location("gptoss_card_graders", GRADERS)
g = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(g)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("Answer: C", "C"),
        ("**Answer:** (B)", "B"),
        ("The answer is D.", "D"),
        ("Final answer: option A", "A"),
        ("We compare. (A) is wrong, (C) fails.\n\n**B**", "B"),
        ("\\boxed{C}", "C"),
        ("\\boxed{\\text{D}}", "D"),
        ("B", "B"),
        ("  (A)  ", "A"),
        ("A is tempting but the Answer: B", "B"),  # the declaration beats a leading letter
        ("Option C is correct.", "C"),
        ("Answer: B. Wait, re-check... Answer: D", "D"),  # the last declaration wins
        ("The correct answer is **(C)**.", "C"),
        ("ANSWER: b", None),  # lower-case letters are words, not options
        ("**C) 2.5 eV**", "C"),
    ],
)
def test_extract_choice_finds_the_declared_letter(text, letter):
    assert g.extract_choice(text) == letter


@pytest.mark.parametrize(
    "text",
    [None, "", "I am not sure.", "Because of entropy.", "A lot of options", "The answer is a mixture of isomers.",
     "the answer depends on pH", "Choice a is wrong"],
)
def test_extract_choice_returns_none_without_a_declaration(text):
    assert g.extract_choice(text) is None


@pytest.mark.parametrize(
    "text, number",
    [
        ("so the result is \\boxed{204}.", 204),
        ("First 12, then \\boxed{33}", 33),
        ("\\boxed{1,024}", 1024),
        ("\\fbox{70}", 70),
        ("\\boxed{\\frac{1}{2}} no wait \\boxed{\\text{113}}", 113),  # last boxed, nested braces
        ("The answer is 72.", 72),
        ("Answer: $1,080", 1080),
        ("We get 3 apples and 5 pears, 8 in total", 8),
        ("x = 2.5", 2.5),
        ("\\boxed{045}", 45),
    ],
)
def test_extract_number(text, number):
    assert g.extract_number(text) == number


@pytest.mark.parametrize("text", [None, "", "no digits here", "\\boxed{}"])
def test_extract_number_none(text):
    assert g.extract_number(text) is None


def test_aime_target_normalises_leading_zeros_and_field_names():
    assert g.aime_target({"answer": "033"}) == 33
    assert g.aime_target({"Answer": 204}) == 204
    with pytest.raises(ValueError, match="no integer answer"):
        g.aime_target({"answer": "x"})


def test_gsm8k_target_reads_the_hash_line():
    assert g.gsm8k_target({"answer": "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072"}) == 1072
    with pytest.raises(ValueError, match="####"):
        g.gsm8k_target({"answer": "no marker"})


def test_permutation_is_fixed_per_question_and_varies_across_questions():
    p = g._permutation("What is 2+2?")
    assert sorted(p) == [0, 1, 2, 3]
    assert g._permutation("What is 2+2?") == p
    perms = {tuple(g._permutation(f"question {i}")) for i in range(200)}
    assert len(perms) > 12  # not a constant order: the correct option is not always (A)


def test_scores_average_over_repeats_and_count_missing_answers():
    r = g.process_choice_results({"answer": "B"}, [["B", "C", None, "B"]])
    assert r == {"exact_match": 0.5, "no_answer": 0.25}
    r = g.process_aime_results({"answer": "033"}, [[33, 33.0, 34]])
    assert r["exact_match"] == pytest.approx(2 / 3) and r["no_answer"] == 0


def test_filters_keep_every_repeat():
    resps = [["Answer: A", "junk"], ["\\boxed{B}"]]
    assert g.extract_choices(resps, [{}, {}]) == [["A", None], ["B"]]
    assert g.extract_numbers([["\\boxed{7}", None]], [{}]) == [[7, None]]
