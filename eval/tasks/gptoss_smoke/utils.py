"""Scoring for gptoss_smoke: the whole reply (`content`) must be the answer, up to case,
surrounding whitespace and a trailing full stop. No searching inside the reply: the point of the
smoke is that `content` holds the final answer and nothing else."""

from __future__ import annotations


def normalize(text: str | None) -> str | None:
    if text is None:
        return None
    return " ".join(text.strip().rstrip(".").split()).lower()


def normalize_replies(resps, docs):
    return [[normalize(r) for r in doc_resps] for doc_resps in resps]


def process_results(doc: dict, results: list) -> dict[str, float]:
    replies = results[0]
    gold = normalize(doc["answer"])
    n = max(len(replies), 1)
    return {
        "exact_match": sum(1.0 for r in replies if r == gold) / n,
        "no_answer": sum(1.0 for r in replies if not r) / n,
    }
