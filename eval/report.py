"""Our scores beside the published ones: rows from an lm-eval result, a markdown table, JSON."""

from __future__ import annotations

import dataclasses
import math

from eval.published import MODELS, SOURCE, lookup

METRIC = "exact_match"


@dataclasses.dataclass
class Row:
    task: str
    filter: str
    score: float | None  # percent
    stderr: float | None  # percent
    no_answer: float | None  # percent of samples with no extractable answer
    docs: int | None
    repeats: int | None


def _num(x) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def rows_from_results(results: dict) -> list[Row]:
    """One row per task that reports exact_match (any filter) in an lm-eval results dict."""
    rows = []
    for task, metrics in sorted(results.get("results", {}).items()):
        keys = [k for k in metrics if k.startswith(METRIC + ",")]
        for key in keys:
            flt = key.split(",", 1)[1]
            score = _num(metrics[key])
            stderr = _num(metrics.get(f"{METRIC}_stderr,{flt}"))
            no_answer = _num(metrics.get(f"no_answer,{flt}"))
            n = results.get("n-samples", {}).get(task, {})
            cfg = results.get("configs", {}).get(task, {})
            rows.append(
                Row(
                    task=task,
                    filter=flt,
                    score=None if score is None else 100.0 * score,
                    stderr=None if stderr is None else 100.0 * stderr,
                    no_answer=None if no_answer is None else 100.0 * no_answer,
                    docs=n.get("effective"),
                    repeats=cfg.get("repeats"),
                )
            )
    return rows


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _pub(task: str, model: str, effort: str, tools: bool) -> str:
    p = lookup(task, model, effort, tools)
    if p is None:
        return "—"
    return f"{p.score:.1f}" + ("†" if tools else "")


def markdown_table(rows: list[Row], effort: str, title: str | None = None) -> str:
    head = [
        "task",
        f"ours ({effort})",
        "± stderr",
        "no answer %",
        "docs × repeats",
        *[f"{m} published" for m in MODELS],
        *[f"{m} with tools†" for m in MODELS],
    ]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.task if r.filter in ("extracted", "content") else f"{r.task} [{r.filter}]",
            _fmt(r.score),
            _fmt(r.stderr),
            _fmt(r.no_answer),
            f"{r.docs if r.docs is not None else '?'} × {r.repeats if r.repeats is not None else '?'}",
            *[_pub(r.task, m, effort, False) for m in MODELS],
            *[_pub(r.task, m, effort, True) for m in MODELS],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Published: {SOURCE}, at reasoning effort `{effort}` (— where the card gives no number). "
        "Comparable columns: '<model> published' (no tools). † = the model used tools (Python for "
        "AIME, browsing for GPQA); a chat-completions run offers none, so † numbers are NOT comparable. "
        "'no answer' counts replies with no extractable answer (empty `content`: reasoning cut off "
        "by the token budget, or a parser that lost the final channel).",
    ]
    return "\n".join(lines) + "\n"


def summary(rows: list[Row], effort: str, meta: dict) -> dict:
    return {
        "meta": meta,
        "effort": effort,
        "rows": [
            {
                **dataclasses.asdict(r),
                "published": {
                    m: {
                        "no_tools": getattr(lookup(r.task, m, effort, False), "score", None),
                        "with_tools_not_comparable": getattr(lookup(r.task, m, effort, True), "score", None),
                    }
                    for m in MODELS
                },
            }
            for r in rows
        ],
        "published_source": SOURCE,
    }
