"""The gpt-oss model card's published scores, to print beside ours.

Source: "gpt-oss-120b & gpt-oss-20b Model Card" (OpenAI, August 2025, arXiv:2508.10925), the main
benchmark table (high reasoning effort) and its per-effort figure (low/medium, 120b). Accuracy in
percent, pass@1. The card's AIME and GPQA numbers are averages over several samples per question
at temperature 1.0 (OpenAI's gpt_oss.evals harness defaults to 8 repeats), with up to ~128k tokens
of reasoning.

"with tools" numbers let the model run Python (AIME) or browse (GPQA) during its reasoning. A
chat-completions run through lm-eval offers no tools, so only the "no tools" numbers are
comparable; the tool numbers are listed, marked, for reference only.
"""

from __future__ import annotations

import dataclasses

SOURCE = "gpt-oss model card (arXiv:2508.10925)"


@dataclasses.dataclass(frozen=True)
class Published:
    task: str  # our lm-eval task name
    benchmark: str  # the card's row name
    model: str  # "120b" | "20b"
    effort: str  # "low" | "medium" | "high"
    tools: bool  # True: the model used tools; not comparable with a tool-less chat run
    score: float  # percent


def _rows() -> list[Published]:
    rows: list[Published] = []

    def add(task, bench, model, effort, no_tools, with_tools=None):
        rows.append(Published(task, bench, model, effort, False, no_tools))
        if with_tools is not None:
            rows.append(Published(task, bench, model, effort, True, with_tools))

    # High effort, both models (the card's main table).
    add("gptoss_mmlu", "MMLU", "120b", "high", 90.0)
    add("gptoss_mmlu", "MMLU", "20b", "high", 85.3)
    add("gptoss_gpqa_diamond", "GPQA Diamond", "120b", "high", 80.1, 80.9)
    add("gptoss_gpqa_diamond", "GPQA Diamond", "20b", "high", 71.5, 74.2)
    add("gptoss_aime24", "AIME 2024", "120b", "high", 95.8, 96.6)
    add("gptoss_aime24", "AIME 2024", "20b", "high", 92.1, 96.0)
    add("gptoss_aime25", "AIME 2025", "120b", "high", 92.5, 97.9)
    add("gptoss_aime25", "AIME 2025", "20b", "high", 91.7, 98.7)
    # Low and medium effort, 120b (the card's per-effort figure).
    add("gptoss_mmlu", "MMLU", "120b", "low", 85.9)
    add("gptoss_mmlu", "MMLU", "120b", "medium", 88.0)
    add("gptoss_gpqa_diamond", "GPQA Diamond", "120b", "low", 67.1)
    add("gptoss_gpqa_diamond", "GPQA Diamond", "120b", "medium", 73.1)
    add("gptoss_aime24", "AIME 2024", "120b", "low", 56.3, 75.4)
    add("gptoss_aime24", "AIME 2024", "120b", "medium", 80.4, 87.9)
    add("gptoss_aime25", "AIME 2025", "120b", "low", 50.4, 72.9)
    add("gptoss_aime25", "AIME 2025", "120b", "medium", 80.0, 91.6)
    return rows


PUBLISHED: tuple[Published, ...] = tuple(_rows())
MODELS = ("120b", "20b")


def lookup(task: str, model: str, effort: str, tools: bool) -> Published | None:
    for p in PUBLISHED:
        if (p.task, p.model, p.effort, p.tools) == (task, model, effort, tools):
            return p
    return None
