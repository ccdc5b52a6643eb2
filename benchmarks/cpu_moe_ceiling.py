"""Is the native CPU MoE kernel bound by DRAM or by its own instructions at one token? (issue 11)

    .venv/bin/python benchmarks/cpu_moe_ceiling.py --out benchmarks/results/cpu_moe_ceiling.json

The native kernel alone (`gptoss_kernels.cpu`, no vLLM), one token, 20b expert shapes (hidden 2880,
width 2880), E2M1 codes in the kernel's layout, bf16 activations, per thread count:
  resident   the same single expert every call (12.6 MB: stays in L2/L3): the kernel's compute
             ceiling, in GB/s of expert bytes decoded;
  rotating   4 experts a call, rotating over --experts experts (1.2 GB at the default 96), as a
             decode step's layers would: every call reads DRAM.
The DRAM read bandwidth is probed in the same run (benchmarks/cpu_moe.py's probe). If `resident`
is not well above the bandwidth, the kernel cannot stream at memory speed on this CPU, whatever
its prefetching: the rotating figure is then compute bound. Median of --calls calls.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))
from cpu_model import machine_info  # noqa: E402
from cpu_moe import measure_bandwidth  # noqa: E402

import gptoss_kernels.cpu as native_cpu  # noqa: E402
from vllm_gptoss.huge_pages import copy_on_huge_pages  # noqa: E402  (no vLLM import)

H = I = 2880
TOP_K = 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--experts", type=int, default=96, help="experts to rotate over (default %(default)s: 1.2 GB)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    if args.experts < 2 * TOP_K or args.experts % TOP_K:
        p.error(f"--experts: expected a multiple of {TOP_K}, at least {2 * TOP_K}, found {args.experts}")
    native = native_cpu.load()
    g = torch.Generator().manual_seed(0)
    E = args.experts
    expert_bytes = 3 * H * I * 17 / 32  # E2M1 codes + one E8M0 scale per 32 (biases left out)
    print(f"building {E} experts ({E * expert_bytes / 1e9:.2f} GB MXFP4) ...", flush=True)
    w13 = native.pack_experts(torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g), inplace=True)
    w2 = native.pack_experts(torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g), inplace=True)
    s13 = torch.randint(118, 124, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
    s2 = torch.randint(118, 124, (E, H, I // 32), dtype=torch.uint8, generator=g)
    # on transparent huge pages, as the plugin allocates a model's experts
    w13, w2, s13, s2 = map(copy_on_huge_pages, (w13, w2, s13, s2))
    b13, b2 = torch.randn(E, 2 * I, generator=g), torch.randn(E, H, generator=g)
    x = torch.randn(1, H, generator=g).to(torch.bfloat16)
    cases = {
        "resident": ([torch.tensor([[0]], dtype=torch.int32)], 1),
        "rotating": ([torch.arange(TOP_K * j, TOP_K * j + TOP_K, dtype=torch.int32)[None] for j in range(E // TOP_K)],
                     TOP_K),
    }
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        bandwidth = measure_bandwidth(threads)
        for name, (routings, k) in cases.items():
            weights = torch.full((1, k), 1.0 / k)
            times = []
            for i in range(args.calls + 5):
                ids = routings[i % len(routings)]
                t = time.perf_counter()
                native.moe(x, weights, ids, w13, s13, b13, w2, s2, b2, 1.702, 7.0)
                if i >= 5:
                    times.append(time.perf_counter() - t)
            ms = sorted(times)[len(times) // 2] * 1e3
            gbs = k * expert_bytes / ms / 1e6
            rows.append(dict(threads=threads, case=name, experts_per_call=k, median_ms=ms, gbs=gbs,
                             bandwidth_gbs=bandwidth, pct_of_bandwidth=100 * gbs / bandwidth))
            print(f"threads {threads}  {name:<9} {k} expert(s)  {ms:7.3f} ms  {gbs:6.1f} GB/s  "
                  f"({100 * gbs / bandwidth:4.0f}% of the {bandwidth:.1f} GB/s probed)", flush=True)
    doc = {"benchmark": "cpu_moe_ceiling", "isa": native.isa,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([os.path.relpath(sys.executable)] + sys.argv), "machine": machine_info(),
           "loadavg": os.getloadavg(), "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
