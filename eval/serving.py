"""Serving benchmark: a running server driven at several concurrency levels with a fixed prompt set.

    python -m eval.serving --base-url http://127.0.0.1:8000 --model openai/gpt-oss-120b \
        --concurrency 1,8,32,128 --output-len 1024 --output-dir results/serving

Each level is one run of vLLM's own benchmark client (`vllm.benchmarks.serve`, what `vllm bench
serve` runs): the chat endpoint, streaming, the prompts of eval/data/serving_prompts.jsonl sent as
the user message (vLLM renders harmony), `--max-concurrency C`, every request released at once
(request rate inf). Output tokens are the server's `usage.completion_tokens` (reasoning included).
By default `ignore_eos` holds every reply to --output-len tokens, so the levels compare equal work.

Writes serving.json (per level: output tokens/s, TTFT and TPOT median and p99, ...; plus vLLM's raw
result per level under raw/) and serving.png (output tokens/s, and TTFT/TPOT, against concurrency).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = REPO / "eval" / "data" / "serving_prompts.jsonl"

# What we keep of vLLM's result per level (all of it stays in raw/).
KEYS = (
    "completed",
    "failed",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "mean_ttft_ms",
    "mean_tpot_ms",
    "mean_e2el_ms",
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, found {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="server URL: http://HOST:PORT (no /v1)")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (HF id or directory) to count prompt tokens (default: --model)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 64],
                   help="comma list of max concurrent requests, one run each (default: 1,4,16,64)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="requests per level (default: max(4 x concurrency, 32)); prompts repeat as needed")
    p.add_argument("--output-len", type=int, default=512, help="output tokens per request (default: 512)")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="jsonl with a 'prompt' field per line")
    p.add_argument("--effort", choices=("low", "medium", "high"), default=None,
                   help="reasoning_effort sent with every request (default: the server's, medium)")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="let replies end at the model's end token instead of holding them to --output-len")
    p.add_argument("--num-warmups", type=int, default=1, help="warm-up requests before each level (default: 1)")
    p.add_argument("--output-dir", default="serving-results", help="where results are written")
    args = p.parse_args(argv)
    if args.output_len < 2:
        p.error(f"--output-len must be >= 2 (TPOT needs two tokens), found {args.output_len}")
    if args.num_prompts is not None and args.num_prompts < 1:
        p.error(f"--num-prompts must be >= 1, found {args.num_prompts}")
    if not pathlib.Path(args.prompts).is_file():
        p.error(f"--prompts: no such file {args.prompts}")
    return args


def vllm_bench_args(args: argparse.Namespace, concurrency: int, raw_dir: pathlib.Path) -> argparse.Namespace:
    """The `vllm bench serve` arguments for one level, parsed by vLLM's own parser."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    num_prompts = args.num_prompts or max(4 * concurrency, 32)
    argv = [
        "--backend", "openai-chat",
        "--base-url", args.base_url.rstrip("/"),
        "--endpoint", "/v1/chat/completions",
        "--model", args.model,
        "--tokenizer", args.tokenizer or args.model,
        "--dataset-name", "custom",
        "--dataset-path", str(args.prompts),
        "--skip-chat-template",  # the chat endpoint renders harmony itself
        "--custom-output-len", str(args.output_len),
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf",
        "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99",
        "--num-warmups", str(args.num_warmups),
        "--save-result",
        "--result-dir", str(raw_dir),
        "--result-filename", f"concurrency_{concurrency}.json",
        "--disable-tqdm",
        "--seed", "0",
    ]
    if not args.no_ignore_eos:
        argv.append("--ignore-eos")
    if args.effort is not None:
        argv += ["--extra-body", json.dumps({"reasoning_effort": args.effort})]
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return parser.parse_args(argv)


def level_summary(concurrency: int, result: dict) -> dict:
    row = {"concurrency": concurrency}
    for key in KEYS:
        value = result.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return row


def plot(levels: list[dict], title: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [lv["concurrency"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(conc, [lv["output_throughput"] for lv in levels], "o-", color="tab:blue")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(conc, [str(c) for c in conc])
    ax1.set_xlabel("concurrent requests")
    ax1.set_ylabel("output tokens / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax1.grid(True, alpha=0.3)
    for key, style, label in (
        ("median_ttft_ms", "o-", "TTFT median"),
        ("p99_ttft_ms", "o--", "TTFT p99"),
        ("median_tpot_ms", "s-", "TPOT median"),
        ("p99_tpot_ms", "s--", "TPOT p99"),
    ):
        ax2.plot(conc, [lv[key] for lv in levels], style, label=label)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(conc, [str(c) for c in conc])
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent requests")
    ax2.set_ylabel("ms")
    ax2.set_title("latency")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(levels: list[dict]) -> str:
    head = ["concurrency", "requests ok/failed", "output tok/s", "TTFT median ms", "TTFT p99 ms",
            "TPOT median ms", "TPOT p99 ms", "E2E median ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lv in levels:
        lines.append(
            f"| {lv['concurrency']} | {lv['completed']:.0f}/{lv['failed']:.0f} | {lv['output_throughput']:.1f} | "
            f"{lv['median_ttft_ms']:.1f} | {lv['p99_ttft_ms']:.1f} | {lv['median_tpot_ms']:.2f} | "
            f"{lv['p99_tpot_ms']:.2f} | {lv['median_e2el_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    from vllm.benchmarks.serve import main as vllm_bench_serve

    out = pathlib.Path(args.output_dir)
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    levels = []
    for c in args.concurrency:
        print(f"eval.serving: concurrency {c}", flush=True)
        result = vllm_bench_serve(vllm_bench_args(args, c, raw_dir))
        if not result.get("completed"):
            errors = [e for e in result.get("errors", []) if e][:3]
            raise SystemExit(f"concurrency {c}: no request completed; first errors: {errors}")
        levels.append(level_summary(c, result))
    summary = {
        "meta": {
            "base_url": args.base_url,
            "model": args.model,
            "tokenizer": args.tokenizer or args.model,
            "prompts": str(args.prompts),
            "output_len": args.output_len,
            "ignore_eos": not args.no_ignore_eos,
            "effort": args.effort,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": "vllm.benchmarks.serve (openai-chat, streaming)",
        },
        "levels": levels,
    }
    (out / "serving.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{args.model}: {args.output_len} output tokens/request" + (f", effort {args.effort}" if args.effort else "")
    plot(levels, title, out / "serving.png")
    table = markdown_table(levels)
    (out / "serving.md").write_text(table)
    print(table)
    print(f"wrote {out / 'serving.json'}, {out / 'serving.png'}, {out / 'serving.md'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
