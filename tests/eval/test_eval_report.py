"""Published numbers and the comparison table (no server)."""

import json

import pytest

from eval import accuracy, published, report


def test_the_model_card_numbers_are_present():
    # (task, model, tools) -> score at high effort: the table plus the card's no-tool column.
    expected = {
        ("gptoss_mmlu", "120b", False): 90.0,
        ("gptoss_mmlu", "20b", False): 85.3,
        ("gptoss_gpqa_diamond", "120b", True): 80.9,
        ("gptoss_gpqa_diamond", "20b", True): 74.2,
        ("gptoss_gpqa_diamond", "120b", False): 80.1,
        ("gptoss_gpqa_diamond", "20b", False): 71.5,
        ("gptoss_aime24", "120b", True): 96.6,
        ("gptoss_aime24", "20b", True): 96.0,
        ("gptoss_aime25", "120b", True): 97.9,
        ("gptoss_aime25", "20b", True): 98.7,
        ("gptoss_aime24", "120b", False): 95.8,
        ("gptoss_aime25", "120b", False): 92.5,
    }
    for (task, model, tools), score in expected.items():
        p = published.lookup(task, model, "high", tools)
        assert p is not None and p.score == score, (task, model, tools)
    assert published.lookup("gptoss_mmlu", "120b", "high", True) is None  # MMLU has no tool run
    assert published.lookup("gptoss_gsm8k", "120b", "high", False) is None  # not in the card
    for p in published.PUBLISHED:  # every published row names a task we ship
        assert p.task in accuracy.CARD_TASKS and p.effort in accuracy.EFFORTS


def _results():
    return {
        "results": {
            "gptoss_gpqa_diamond": {
                "alias": "gptoss_gpqa_diamond",
                "exact_match,extracted": 0.75,
                "exact_match_stderr,extracted": 0.0125,
                "no_answer,extracted": 0.02,
                "no_answer_stderr,extracted": 0.001,
            },
            "gptoss_gsm8k": {"exact_match,extracted": 0.9, "exact_match_stderr,extracted": "N/A", "no_answer,extracted": 0.0},
        },
        "n-samples": {"gptoss_gpqa_diamond": {"original": 198, "effective": 198}, "gptoss_gsm8k": {"effective": 10}},
        "configs": {"gptoss_gpqa_diamond": {"repeats": 8}, "gptoss_gsm8k": {"repeats": 1}},
    }


def test_rows_from_lm_eval_results():
    rows = {r.task: r for r in report.rows_from_results(_results())}
    gpqa = rows["gptoss_gpqa_diamond"]
    assert gpqa.score == pytest.approx(75.0) and gpqa.stderr == pytest.approx(1.25)
    assert gpqa.no_answer == pytest.approx(2.0) and (gpqa.docs, gpqa.repeats) == (198, 8)
    assert rows["gptoss_gsm8k"].stderr is None  # "N/A" from lm-eval


def test_markdown_table_puts_ours_beside_published_and_marks_tools():
    md = report.markdown_table(report.rows_from_results(_results()), "high", title="t")
    line = next(x for x in md.splitlines() if x.startswith("| gptoss_gpqa_diamond"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["gptoss_gpqa_diamond", "75.0", "1.2", "2.0", "198 × 8", "80.1", "71.5", "80.9†", "74.2†"]
    gsm = next(x for x in md.splitlines() if x.startswith("| gptoss_gsm8k"))
    assert gsm.count("—") >= 5  # no stderr, no published numbers
    assert "NOT comparable" in md


def test_low_effort_compares_with_low_effort_numbers():
    md = report.markdown_table(report.rows_from_results(_results()), "low")
    line = next(x for x in md.splitlines() if x.startswith("| gptoss_gpqa_diamond"))
    assert "| 67.1 |" in line and "80.1" not in line


def test_summary_is_json():
    s = report.summary(report.rows_from_results(_results()), "high", {"model": "m"})
    s = json.loads(json.dumps(s))
    row = s["rows"][0]
    assert row["published"]["120b"] == {"no_tools": 80.1, "with_tools_not_comparable": 80.9}


@pytest.mark.parametrize(
    "given, url",
    [
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
    ],
)
def test_base_url_forms(given, url):
    assert accuracy.chat_completions_url(given) == url


def test_cli_errors_name_the_flag():
    with pytest.raises(SystemExit, match="--base-url"):
        accuracy.chat_completions_url("localhost:8000")
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--base-url", "http://h", "--model", "m", "--effort", "max"])
    assert accuracy.expand_tasks("card,smoke,gptoss_mmlu") == [*accuracy.CARD_TASKS, "gptoss_smoke"]
