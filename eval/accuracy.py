"""Evaluate a served gpt-oss with lm-eval and print the scores beside the model card's.

    python -m eval.accuracy --base-url http://127.0.0.1:8000 --model openai/gpt-oss-120b \
        --effort high --tasks card --output-dir results/120b-high

Runs lm-eval 0.4.13 through `local-chat-completions` (the chat endpoint: vLLM renders harmony and
returns the reasoning in `reasoning`, the answer in `content`), with `--apply_chat_template`,
`tokenized_requests=False`, and the request body's `reasoning_effort` set through gen_kwargs. The
task configs are in eval/tasks/ (gptoss_card: MMLU, GPQA Diamond, AIME 2024/2025, GSM8K;
gptoss_smoke: the fixture's questions). Scores read `content` only. Writes lm-eval's own result
and sample files plus summary.json and summary.md to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "eval" / "tasks"
CARD_TASKS = ("gptoss_mmlu", "gptoss_gpqa_diamond", "gptoss_aime24", "gptoss_aime25", "gptoss_gsm8k")
ALIASES = {"card": CARD_TASKS, "gptoss_card": CARD_TASKS, "smoke": ("gptoss_smoke",)}
# harmony's reasoning-effort names (vllm_gptoss/harmony/effort.py holds the server's copy; the eval
# client runs where the plugin is not installed)
EFFORTS = ("low", "medium", "high")


def chat_completions_url(base_url: str) -> str:
    """Accept http://host:port, .../v1 or the full .../v1/chat/completions; lm-eval wants the last."""
    url = base_url.rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SystemExit(f"--base-url: expected http(s)://HOST:PORT[/v1], found {base_url!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def served_models(chat_url: str, timeout: float = 10.0) -> list[str]:
    models_url = chat_url[: -len("/chat/completions")] + "/models"
    try:
        with urllib.request.urlopen(models_url, timeout=timeout) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SystemExit(f"cannot reach the server at {models_url}: {e}") from None
    return [m.get("id") for m in data.get("data", [])]


def expand_tasks(names: str) -> list[str]:
    out: list[str] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        for t in ALIASES.get(name, (name,)):
            if t not in out:
                out.append(t)
    if not out:
        raise SystemExit("--tasks: no task names given")
    return out


def _absolute_data_files(data_files, base: pathlib.Path):
    """Our YAMLs give local data relative to the repository root; resolve them so the runner
    works from any directory. URLs and absolute paths pass through."""
    if isinstance(data_files, dict):
        return {k: _absolute_data_files(v, base) for k, v in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute_data_files(v, base) for v in data_files]
    if isinstance(data_files, str) and "://" not in data_files and not os.path.isabs(data_files):
        return str(base / data_files)
    return data_files


def task_specs(task_manager, names: list[str], repeats: int | None, overrides: dict | None = None) -> list:
    """Task names (lm-eval's own tasks), or full configs for ours (our YAML with local data paths
    made absolute, the repeats override, and any per-task `overrides[name]` applied)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    specs: list = []
    for name in names:
        entry = task_manager.task_index.get(name)
        if entry is None:
            close = [t for t in task_manager.all_tasks if name.split("_")[-1] in t][:10]
            raise SystemExit(f"--tasks: unknown task {name!r} (similar: {', '.join(close) or 'none'})")
        path = getattr(entry, "yaml_path", None)
        ours = path is not None and TASKS_DIR in pathlib.Path(path).resolve().parents
        is_group = getattr(getattr(entry, "kind", None), "name", "") == "GROUP"
        if not ours or is_group:  # lm-eval's own tasks and groups load by name, unchanged
            specs.append(name)
            continue
        cfg = load_yaml(path, resolve_func=True)
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        if "data_files" in kwargs:
            kwargs["data_files"] = _absolute_data_files(kwargs["data_files"], REPO)
            cfg["dataset_kwargs"] = kwargs
        if repeats is not None:
            cfg["repeats"] = repeats
        cfg.update((overrides or {}).get(name, {}))
        specs.append(cfg)
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.accuracy",
        description="Evaluate a served gpt-oss with lm-eval (chat endpoint) and compare with the model card.",
    )
    p.add_argument("--base-url", required=True, help="server URL: http://HOST:PORT, .../v1 or .../v1/chat/completions")
    p.add_argument("--model", required=True, help="the served model name (as GET /v1/models lists it)")
    p.add_argument("--effort", choices=EFFORTS, default="high",
                   help="reasoning effort sent as reasoning_effort with every request (default: high, as the card)")
    p.add_argument("--tasks", default="card",
                   help="comma list of task names or aliases: card (MMLU, GPQA Diamond, AIME24/25, GSM8K), smoke, "
                        "or any lm-eval task name (default: card)")
    p.add_argument("--limit", type=float, default=None,
                   help="documents per task (an integer), or a fraction of each task if < 1; for quick checks")
    p.add_argument("--repeats", type=int, default=None,
                   help="samples per question, scores averaged (default: each task's YAML: 8 for GPQA and AIME, "
                        "as the card; 1 for MMLU, GSM8K and smoke)")
    p.add_argument("--max-gen-toks", type=int, default=None,
                   help="override every task's output budget (reasoning + answer) in tokens (default: the YAML's: "
                        "AIME 65536, GPQA 32768, MMLU/GSM8K 16384)")
    p.add_argument("--temperature", type=float, default=None,
                   help="override the sampling temperature (default: the YAML's: 1.0 as the card, 0 for smoke)")
    p.add_argument("--num-concurrent", type=int, default=64, help="requests in flight (default: 64)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per request (default: 3600; reasoning is long)")
    p.add_argument("--max-retries", type=int, default=3, help="retries per failed request (default: 3)")
    p.add_argument("--include-path", action="append", default=[],
                   help="extra directory of lm-eval task YAMLs (repeatable); eval/tasks is always included")
    p.add_argument("--output-dir", default="eval-results", help="where results are written (default: eval-results)")
    p.add_argument("--no-server-check", action="store_true",
                   help="skip checking GET /v1/models for --model before starting")
    args = p.parse_args(argv)
    if args.limit is not None:
        if args.limit <= 0:
            p.error(f"--limit must be > 0, found {args.limit}")
        if args.limit >= 1:
            if args.limit != int(args.limit):
                p.error(f"--limit >= 1 must be a whole number of documents, found {args.limit}")
            args.limit = int(args.limit)
    for name in ("repeats", "max_gen_toks", "num_concurrent", "timeout"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, found {v}")
    return args


def run(args: argparse.Namespace, overrides: dict | None = None) -> dict:
    """Evaluate, write the files, print the table. `overrides` maps a task name to config keys to
    replace (tests point tasks at local data this way)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from eval import report

    chat_url = chat_completions_url(args.base_url)
    if not args.no_server_check:
        models = served_models(chat_url)
        if args.model not in models:
            raise SystemExit(f"--model {args.model!r} is not served at {chat_url}; the server lists: {models}")

    task_manager = TaskManager(include_path=[str(TASKS_DIR), *args.include_path])
    names = expand_tasks(args.tasks)
    specs = task_specs(task_manager, names, args.repeats, overrides)

    gen_kwargs: dict = {"reasoning_effort": args.effort}
    if args.max_gen_toks is not None:
        gen_kwargs["max_gen_toks"] = args.max_gen_toks
    if args.temperature is not None:
        gen_kwargs["temperature"] = args.temperature
    model_args = {
        "model": args.model,
        "base_url": chat_url,
        "num_concurrent": args.num_concurrent,
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "tokenized_requests": False,  # chat: send messages, never token ids
        "tokenizer_backend": None,  # no client-side tokenizer (nothing to download)
    }

    out_dir = pathlib.Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = EvaluationTracker(output_path=str(out_dir))
    print(f"eval.accuracy: {', '.join(names)} on {args.model} at {chat_url}, effort={args.effort}", flush=True)
    start = time.time()
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=model_args,
        tasks=specs,
        task_manager=task_manager,
        apply_chat_template=True,
        gen_kwargs=gen_kwargs,
        limit=args.limit,
        log_samples=True,
        evaluation_tracker=tracker,
    )
    elapsed = time.time() - start
    if results is None:
        raise SystemExit("lm-eval returned no results")

    samples = results.pop("samples", {})
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results.get("configs", {}):
        if task_name in samples:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])

    rows = report.rows_from_results(results)
    meta = {
        "model": args.model,
        "base_url": chat_url,
        "effort": args.effort,
        "tasks": names,
        "limit": args.limit,
        "repeats_override": args.repeats,
        "gen_kwargs": gen_kwargs,
        "seconds": round(elapsed, 1),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    summary = report.summary(rows, args.effort, meta)
    summary["lm_eval_results"] = json.loads(json.dumps(results, default=handle_non_serializable))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    title = f"{args.model}, reasoning effort {args.effort}" + (f", limit {args.limit}" if args.limit else "")
    table = report.markdown_table(rows, args.effort, title=title)
    (out_dir / "summary.md").write_text(table)
    print(table)
    print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'summary.md'} and lm-eval's files ({elapsed:.0f} s)")
    return summary


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
