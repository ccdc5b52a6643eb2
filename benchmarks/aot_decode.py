"""Static evidence for the MoE GEMMs on sm_90 (no GPU): build the 120b / 20b layer's GEMM1 and
GEMM2 for each weight layout and the tile variants the GPU sweep times, exactly as `fused_moe`
launches them (gptoss_kernels.aot records the real host code's launches), and report registers,
spills, shared memory, MMA kind, the layout conversions left in the Triton GPU IR and SASS counts.
Decode variants at T=1 and T=16, prefill variants (one program per tile vs the persistent grid,
issue 14 part 3) at T=4096.

    env -u TRITON_INTERPRET PYTHONPATH=kernels python benchmarks/aot_decode.py --json out.json
    (PYTHONPATH=/path/to/triton-3.6/site:kernels ... builds with that triton instead)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from gptoss_kernels import aot
from gptoss_kernels.moe import TileConfig

# the default decode tile (pick_config) and the variants the GPU sweep also times
DECODE = {
    "default": None,  # pick_config's own choice
    "swap": TileConfig(16, 64, 256, 4, 3, swap_ab=True, evict_w=True),
    "swap-n128-k128-s4": TileConfig(16, 128, 128, 4, 4, swap_ab=True, evict_w=True),
    "s4": TileConfig(16, 64, 256, 4, 4, evict_w=True),
}
# prefill: pick_config's tile, then the persistent grid (TileConfig.persistent programs per SM) with
# that tile and with larger row blocks (each dequantized weight tile serves 128 rows)
PREFILL = {
    "default": None,
    "persist2": TileConfig(64, 128, 64, 4, 4, persistent=2),
    "m128-persist1": TileConfig(128, 128, 64, 8, 3, persistent=1),
    "m128-n256-persist1": TileConfig(128, 256, 64, 8, 3, persistent=1),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--cc", type=int, default=90)
    ap.add_argument("--shapes", default="120b-tp1,20b-tp1")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--which", default="decode,prefill", help="comma list: decode (T=1, 16), prefill (T=4096)")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET")
    import triton

    aot.SHAPES = [s for s in aot.SHAPES if s[0] in a.shapes.split(",")]
    rows = []
    cc = (a.cc // 10, a.cc % 10)
    groups = {"decode": ((1, 16), DECODE), "prefill": ((4096,), PREFILL)}
    for which in a.which.split(","):
        tokens, variants = groups[which]
        for name, cfg in variants.items():
            if cfg is None:
                aot.TOKENS = tokens
                got = aot.build([cc], {"bf16": torch.bfloat16}, jobs=a.jobs, log=lambda m: None)
                got = [r for r in got if r["kernel"].startswith("_gemm")]
            else:
                got = aot.build([cc], {"bf16": torch.bfloat16}, jobs=a.jobs, log=lambda m: None,
                                configs={t: [cfg] for t in tokens})
            for r in got:
                r["variant"] = f"{which}:{name}"
            rows += got
    print(f"triton {triton.__version__}, sm_{a.cc}, bf16")
    print(f"{'variant':>26} {'kernel':>13} {'layout':>10} {'tile':>16} {'regs':>4} {'spill':>5} {'smem':>6} {'mma':>6} "
          f"{'cvt':>3} {'alloc':>5} {'LDS':>4} {'STS':>4} {'LDSM':>4} {'LDG128':>6} {'EF':>3} {'instr':>6}  where")
    for r in rows:
        c, s = r["constexprs"], r["sass"]
        tile = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']}" + ("S" if c.get("SWAP_AB") else "") + \
            (f"k{c['SPLIT_K']}" if c.get("SPLIT_K", 1) > 1 else "") + ("P" if c.get("PERSISTENT") else "")
        mma = "wgmma" if r["ptx_wgmma"] else ("mma" if r["ptx_mma"] else "none")
        print(f"{r['variant']:>26} {r['kernel']:>13} {'k16' if c.get('K16') else 'checkpoint':>10} {tile:>16} "
              f"{r['registers']:>4} {r['spill_bytes']:>5} {r['shared_bytes']:>6} {mma:>6} {r['ttgir_convert_layout']:>3} "
              f"{r['ttgir_local_alloc']:>5} {s['LDS']:>4} {s['STS']:>4} {s['LDSM']:>4} {s['LDG.128']:>6} {s['LDG.EF']:>3} "
              f"{s['instructions']:>6}  {r['where'].split(' TileConfig')[0]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"triton": triton.__version__, "cc": a.cc, "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
