"""The lm-eval task configs in eval/tasks load in lm-eval 0.4.13, render the prompts of the
reference harness from rows in each real dataset's schema, and carry reasoning-safe generation
settings. No network: the datasets are replaced by small local files of the same shape."""

import csv
import json
import os
import subprocess
import sys

import pytest

import lm_eval  # noqa: E402,F401  (the test extra installs it; a missing install must fail, not skip)

from lm_eval.tasks import TaskManager  # noqa: E402

from eval import accuracy  # noqa: E402

CARD = list(accuracy.CARD_TASKS)


@pytest.fixture(scope="module")
def tm():
    return TaskManager(include_path=str(accuracy.TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    with open(d / "gpqa.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1",
                    "Incorrect Answer 2", "Incorrect Answer 3", "Subdomain"])
        w.writerow(["x", "Which particle mediates electromagnetism?", "photon", "gluon", "W boson", "graviton", "Physics"])
        w.writerow(["y", "What is the pH of pure water at 25 C?", "7", "1", "14", "5", "Chemistry"])
    with open(d / "mmlu.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Unnamed: 0", "Question", "A", "B", "C", "D", "Answer", "Subject"])
        w.writerow([0, "2 + 2 = ?", "3", "4", "5", "6", "B", "elementary_mathematics"])
    (d / "aime25.jsonl").write_text(json.dumps({"question": "Find x if x + 1 = 34.", "answer": "33"}) + "\n")
    (d / "aime24.jsonl").write_text(json.dumps({"ID": "2024-I-1", "Problem": "Compute 2*102.", "Solution": "...", "Answer": 204}) + "\n")
    (d / "gsm8k.jsonl").write_text(json.dumps({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"}) + "\n")
    return d


def _local(tm, name, path, fmt):
    specs = accuracy.task_specs(tm, [name], repeats=None)
    cfg = dict(specs[0])
    cfg.pop("dataset_name", None)
    cfg.update(dataset_path=fmt, dataset_kwargs={"data_files": {"test": str(path)}}, test_split="test")
    task = tm.load([cfg])["tasks"][name]
    return task, list(task.test_docs())


def test_every_task_is_indexed(tm):
    for name in [*CARD, "gptoss_smoke", "gptoss_card"]:
        assert name in tm.all_tasks, name


def test_card_group_lists_the_card_tasks():
    import yaml

    group = yaml.safe_load((accuracy.TASKS_DIR / "gptoss_card" / "gptoss_card.yaml").read_text())
    assert group["group"] == "gptoss_card" and group["task"] == CARD


@pytest.mark.parametrize("name", CARD)
def test_generation_settings_are_safe_for_a_reasoning_model(tm, name):
    cfg = accuracy.task_specs(tm, [name], repeats=None)[0]
    gen = cfg["generation_kwargs"]
    assert gen["until"] == [], "a stop string can fire inside the chain of thought"
    assert gen["max_gen_toks"] >= (32768 if "aime" in name else 16384)
    assert gen["temperature"] == 1.0 and gen["do_sample"] is True  # as the card's harness samples
    assert "seed" in gen and gen["seed"] is None  # else every repeat is the same sample
    assert cfg["repeats"] == (8 if ("aime" in name or "gpqa" in name) else 1)
    assert cfg["output_type"] == "generate_until"
    assert {m["metric"] for m in cfg["metric_list"]} == {"exact_match", "no_answer"}


def test_repeats_override(tm):
    assert [c["repeats"] for c in accuracy.task_specs(tm, CARD, repeats=2)] == [2] * len(CARD)


def test_gpqa_renders_the_reference_prompt_with_shuffled_options(tm, local_data):
    task, docs = _local(tm, "gptoss_gpqa_diamond", local_data / "gpqa.csv", "csv")
    assert len(docs) == 2
    text = task.doc_to_text(docs[0])
    assert text.startswith("Which particle mediates electromagnetism?\n\n(A) ")
    assert text.endswith("Express your final answer as the corresponding option 'A', 'B', 'C', or 'D'.")
    gold = task.doc_to_target(docs[0])
    assert f"({gold}) photon" in text  # the target letter points at the correct answer
    assert {docs[0][k] for k in "abcd"} == {"photon", "gluon", "W boson", "graviton"}


def test_mmlu_renders_the_reference_prompt(tm, local_data):
    task, docs = _local(tm, "gptoss_mmlu", local_data / "mmlu.csv", "csv")
    assert task.doc_to_text(docs[0]).startswith("2 + 2 = ?\n\n(A) 3\n(B) 4\n(C) 5\n(D) 6\n\nExpress")
    assert task.doc_to_target(docs[0]) == "B"


@pytest.mark.parametrize("name, file, target", [("gptoss_aime25", "aime25.jsonl", 33), ("gptoss_aime24", "aime24.jsonl", 204)])
def test_aime_renders_the_boxed_prompt(tm, local_data, name, file, target):
    task, docs = _local(tm, name, local_data / file, "json")
    text = task.doc_to_text(docs[0])
    assert text.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")
    assert task.doc_to_target(docs[0]) == target


def test_gsm8k(tm, local_data):
    task, docs = _local(tm, "gptoss_gsm8k", local_data / "gsm8k.jsonl", "json")
    assert "Tom has 3 apples" in task.doc_to_text(docs[0])
    assert task.doc_to_target(docs[0]) == 7


def test_smoke_task_reads_the_smoke_questions_verbatim(tm):
    cfg = accuracy.task_specs(tm, ["gptoss_smoke"], repeats=None)[0]
    assert os.path.isabs(cfg["dataset_kwargs"]["data_files"]["test"])  # works from any directory
    task = tm.load([cfg])["tasks"]["gptoss_smoke"]
    docs = list(task.test_docs())
    rows = [json.loads(line) for line in (accuracy.REPO / "eval" / "data" / "smoke.jsonl").read_text().splitlines()]
    assert len(docs) == len(rows) > 0
    for doc, row in zip(docs, rows):
        assert task.doc_to_text(doc) == row["question"]  # exactly what the fixture was trained on
        assert task.doc_to_target(doc) == row["answer"]
    assert cfg["generation_kwargs"]["until"] == [] and cfg["generation_kwargs"]["temperature"] == 0.0


def test_lm_eval_cli_validates_the_tasks():
    r = subprocess.run(
        [sys.executable, "-m", "lm_eval", "validate", "--tasks", ",".join([*CARD, "gptoss_smoke", "gptoss_card"]),
         "--include_path", str(accuracy.TASKS_DIR)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All tasks found and valid" in r.stdout
