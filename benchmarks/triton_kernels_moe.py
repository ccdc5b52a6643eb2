"""OpenAI's triton_kernels MoE, called the way vLLM 0.32's TRITON MXFP4 backend calls it: the
same-run comparator of benchmarks/gpu_moe.py.

Where the code comes from: `bash benchmarks/fetch_triton_kernels.sh` extracts
`vllm/third_party/triton_kernels/` from the CUDA wheel vllm==0.32.0 into a git-ignored folder
(default benchmarks/.third_party); nothing of it is committed, and vLLM itself is never imported
(the GPU machine has none). What is reproduced from vLLM 0.32 (read in that wheel):
  weights  (fused_moe/oracle/mxfp4.py, TRITON backend; quantization/utils/mxfp4_utils.py
           `_swizzle_mxfp4`): biases to float32; blocks [E, N, K/2] and scales [E, N, K/32]
           transposed to [E, K/2, N] / [E, K/32, N] (the quantization axis on dim 1), wrapped as
           FP4 and converted to `make_default_matmul_mxfp4_w_layout(mx_axis=1)` /
           `make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=8)` (Hopper: the
           HopperMXValue/ScaleLayout swizzles; below sm_90 and in the interpreter: StridedLayout).
           On sm_90 it also pins split_k=1 (vLLM PR 30528) and pads the scales' K/32 to a multiple
           of 4 (vLLM's patch for triton issue 47303). Rows stay gate/up interleaved (even = gate),
           as in the checkpoint: the fused swiglu splits (even, odd) pairs. vLLM pads the expert
           width to a multiple of 64 for this backend (mxfp4_round_up_hidden_size_and_intermediate_size);
           so does `TritonKernelsMoE` (zero rows / columns; 2880 needs none).
  routing  (fused_moe/experts/gpt_oss_triton_kernels_moe.py, triton_kernels API "3.5.1", the one
           vendored in 0.32): from given top-k ids/weights as `make_routing_data` (ids int16,
           weights bf16, `pack_bitmatrix`, weight -1 where id == -1, `routing_from_bitmatrix`),
           which is what OAITritonExperts runs; from router logits as the monolithic path
           (OAITritonMxfp4ExpertsMonolithic -> `triton_kernels.routing.routing(logits, k,
           sm_first=False)`), which is what serving gpt-oss runs.
  experts  (`triton_kernel_fused_experts`): matmul_ogs(x, w13, b13, routing, gather_indx,
           precision w13, fused_activation=swiglu(alpha=1.702, limit=7.0), reduction_n=2,
           y=[1, M*k, I]) then matmul_ogs(act, w2, b2, routing, scatter_indx, precision w2,
           gammas=routing.gate_scal, y=[1, T, H]): the routing weight is applied in GEMM2 and the
           top-k sum is matmul_ogs's scatter reduction.
Only bf16 activations (vLLM asserts it).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

DEFAULT_DIR = Path(__file__).resolve().parent / ".third_party"
EXPECTED_API = "3.5.1"  # what vLLM 0.32's get_triton_kernels_version says of its vendored copy


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def find(path: str | os.PathLike | None = None) -> Path | None:
    """The folder holding `triton_kernels/` (argument, $GPTOSS_TRITON_KERNELS, or the default)."""
    for cand in (path, os.environ.get("GPTOSS_TRITON_KERNELS"), DEFAULT_DIR):
        if cand and (Path(cand) / "triton_kernels" / "__init__.py").is_file():
            return Path(cand).resolve()
    return None


def api_version(tk_root) -> str:
    """vLLM's get_triton_kernels_version rule: 3.8 has no matmul_ogs, 3.5.1 no SparseMatrix."""
    try:
        importlib.import_module("triton_kernels.matmul_ogs")
    except ImportError:
        return "3.8"
    tensor = importlib.import_module("triton_kernels.tensor")
    return "3.6" if hasattr(tensor, "SparseMatrix") else "3.5.1"


_LOADED: dict = {}


def load(path=None):
    """Import triton_kernels from the extracted folder; returns a namespace of what is used.
    Raises ImportError (with the reason) when it is absent or does not import."""
    if "ns" in _LOADED:
        return _LOADED["ns"]
    root = find(path)
    if root is None:
        raise ImportError("triton_kernels not found: run `bash benchmarks/fetch_triton_kernels.sh` "
                          f"(extracts it into {DEFAULT_DIR}) or pass its folder")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import triton
    import triton.language as tl

    ns = type("TK", (), {})()
    ns.root = root
    ns.api = api_version(root)
    if ns.api != EXPECTED_API:
        raise ImportError(f"triton_kernels at {root} has API {ns.api}; this harness follows vLLM 0.32's "
                          f"{EXPECTED_API} path")
    if _interpreting():
        _patch_for_interpreter()
    import triton_kernels.swiglu as swiglu
    from triton_kernels.matmul_ogs import FlexCtx, FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs
    from triton_kernels.matmul_ogs_details import opt_flags
    from triton_kernels.numerics import InFlexData
    from triton_kernels.routing import routing, routing_from_bitmatrix
    from triton_kernels.tensor import FP4, Bitmatrix, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout

    for k, v in dict(swiglu=swiglu, FlexCtx=FlexCtx, FnSpecs=FnSpecs, FusedActivation=FusedActivation,
                     PrecisionConfig=PrecisionConfig, matmul_ogs=matmul_ogs, opt_flags=opt_flags,
                     InFlexData=InFlexData, routing=routing, routing_from_bitmatrix=routing_from_bitmatrix,
                     FP4=FP4, Bitmatrix=Bitmatrix, convert_layout=convert_layout,
                     wrap_torch_tensor=wrap_torch_tensor, layout=layout).items():
        setattr(ns, k, v)

    # vLLM's pack_bitmatrix (gpt_oss_triton_kernels_moe.py, Apache-2.0, itself from triton's
    # python/triton_kernels/bench/distributed.py): top-k ids -> one bit per (row, expert)
    @triton.jit
    def pack_bitmatrix(bitmatrix, topk_ids, n_rows, bm_cols: tl.constexpr, n_expts_act,
                       BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):
        pid_m = tl.program_id(0)
        offsets_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
        offsets_k = tl.arange(0, BLOCK_SIZE_K)
        offsets = offsets_m[:, None] * n_expts_act + offsets_k[None, :]
        mask = (offsets_m < n_rows)[:, None] & (offsets_k < n_expts_act)[None, :]
        indices = tl.load(topk_ids + offsets, mask=mask, other=-1)
        valid = indices >= 0
        div = indices // 32
        rem = indices % 32
        one = tl.cast(1, tl.uint32)
        for i in range(bm_cols):
            offs = tl.arange(0, BLOCK_SIZE_K // 32) + i * (BLOCK_SIZE_K // 32)
            x = tl.where(valid[:, :, None] & (div[:, :, None] == offs[None, None, :]), (one << rem)[:, :, None], 0)
            y = tl.reduce_or(x, axis=1)
            bitmatrix_ptrs = bitmatrix + offsets_m[:, None] * bm_cols + offs[None, :]
            tl.store(bitmatrix_ptrs, y, mask=offsets_m[:, None] < n_rows)

    ns.pack_bitmatrix = pack_bitmatrix
    _LOADED["ns"] = ns
    return ns


def _patch_for_interpreter():
    """What triton_kernels needs to run in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors);
    none of this is applied on a GPU.
      1. `specialize` (triton_kernels/specialize.py) builds the matmul kernels from source with
         `triton.JITFunction(...)` and asserts its input is a JITFunction; under the interpreter
         `@triton.jit` makes InterpretedFunctions and a JITFunction cannot run. The replacement
         builds the same source (same substitution of ACTIVATION_FN / EPILOGUE_FN and the argument
         tuples) and defines it with `@triton.jit` from a real file, so the interpreter's AST
         rewriter can read it.
      2. matmul_ogs passes its own `triton_kernels.tensor.Tensor` (the weight scales) as a kernel
         argument; the GPU launcher takes anything with data_ptr(), the interpreter copies
         arguments through torch storage: such a Tensor is unwrapped to its torch data there.
      3. triton 3.9's `tl.constexpr` lacks the reflected operators `int % constexpr` etc. need
         (`BLOCK_K % MX_PACK_DIVISOR` with a module-level constexpr): in the interpreter constexpr
         arguments are plain ints, so the missing __rmod__/__rand__/... are added.
      4. `_reduce_grouped` masks loads with `x_n_mask & is_valid` (a block of int1 and a loaded
         scalar comparison); triton 3.9's interpreter hands that to numpy as int32 and refuses it
         ("mask has unsupported dtype"): masks are made bool there.
      5. matmul_ogs asks `torch.cuda.get_device_capability()` whether TMA may be used (FP4 weights
         on Hopper: no); with no CUDA it answers (8, 0) here (nothing persistent/TMA is used).
    """
    import hashlib
    import inspect
    import operator
    import re
    import tempfile
    import textwrap

    import numpy as np
    import triton
    import triton.language as tl
    import triton.runtime.interpreter as interp
    from triton.runtime.interpreter import InterpretedFunction

    import triton_kernels.specialize as spec

    jit_types = (triton.runtime.jit.JITFunction, InterpretedFunction)
    srcdir = Path(tempfile.gettempdir()) / "gptoss-tk-interpret"
    srcdir.mkdir(exist_ok=True)

    def specialize(fn, module, constants, tuples, name=None, do_not_specialize=tuple()):
        assert isinstance(fn, jit_types)
        name = name or fn.__name__
        lines = textwrap.dedent(inspect.getsource(fn.fn)).split("\n")
        def_idx = next(i for i, line in enumerate(lines) if line.strip().startswith("def"))
        header_end = def_idx
        while not lines[header_end].rstrip().endswith(":"):
            header_end += 1
        body = lines[header_end + 1:]
        header = " ".join(l.split("#", 1)[0].strip() for l in lines[def_idx:header_end + 1] if l.split("#", 1)[0].strip())
        args = [a.strip() for a in re.search(r"\((.*)\)\s*:", header).group(1).split(",") if a.strip()]
        params = []
        for a in args:
            key = a.split(":")[0].split("=")[0].strip()
            if key not in constants:
                params += tuples.get(key, [a])
        g = fn.fn.__globals__
        if fn.fn.__closure__:
            g = g | {n: c.cell_contents for n, c in zip(fn.fn.__code__.co_freevars, fn.fn.__closure__)}
        g = dict(g) | {v.__name__: v for v in constants.values() if isinstance(v, jit_types)}
        src = "\n".join(["@triton.jit", f"def {name}({', '.join(params)}):"]
                        + [f"    {k}: tl.constexpr = {v.__name__ if callable(v) else v}" for k, v in constants.items()]
                        + [f"    {k} = {'(' + ','.join(v) + (',' if v else '') + ')'}" for k, v in tuples.items()]
                        + body) + "\n"
        path = srcdir / f"{name}_{hashlib.sha1(src.encode()).hexdigest()[:12]}.py"
        if not path.exists():
            path.write_text(src)
        g["__name__"] = module.__name__
        exec(compile(src, str(path), "exec"), g)
        return g[name]

    spec.specialize = specialize
    ib = interp.InterpreterBuilder
    if not getattr(ib, "_gptoss_bool_masks", False):
        load, store = ib.create_masked_load, ib.create_masked_store

        def _bool(mask):
            if mask.data.dtype != np.bool_:
                mask = interp.TensorHandle(mask.data != 0, tl.int1)
            return mask

        ib.create_masked_load = lambda self, ptrs, mask, *a: load(self, ptrs, _bool(mask), *a)
        ib.create_masked_store = lambda self, ptrs, value, mask, *a: store(self, ptrs, value, _bool(mask), *a)
        ib._gptoss_bool_masks = True

    def _reflected(op):
        return lambda self, other: tl.constexpr(op(getattr(other, "value", other), self.value))

    for name, op in (("__rmod__", operator.mod), ("__rand__", operator.and_), ("__ror__", operator.or_),
                     ("__rxor__", operator.xor), ("__rlshift__", operator.lshift), ("__rrshift__", operator.rshift)):
        if name not in vars(tl.constexpr):
            setattr(tl.constexpr, name, _reflected(op))
    if "__lshift__" not in vars(tl.constexpr):
        tl.constexpr.__lshift__ = lambda self, other: tl.constexpr(self.value << getattr(other, "value", other))
    from triton_kernels.tensor import Tensor as TKTensor

    unwrap, rewrap = interp._unwrap_tensor, interp._rewrap_tensor
    interp._unwrap_tensor = lambda t: t.storage.data if isinstance(t, TKTensor) else unwrap(t)
    interp._rewrap_tensor = lambda t, original_tensor: (t if isinstance(original_tensor, TKTensor)
                                                        else rewrap(t, original_tensor))
    import triton_kernels.matmul_ogs as mo

    mo.specialize = specialize
    if not torch.cuda.is_available():
        torch.cuda.get_device_capability = lambda *a, **k: (8, 0)


def _capability():
    if _interpreting() or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()


def _interpret_opt_flags(tk, m, n, k, gemm: int):
    """The interpreter has no device to ask: make_default_opt_flags_nvidia calls
    torch.cuda.get_device_properties. Fixed small, non-persistent flags there (what vLLM's
    heuristics would give below sm_90 for a small problem, with block_k 128 for FP4 weights and
    small blocks to keep the interpreter fast)."""
    return tk.opt_flags.OptFlags(block_m=16, block_n=32, block_k=128 if k >= 128 else 32, num_warps=4, num_stages=1,
                                 group_m=8, xcd_swizzle=1, w_cache_modifier=None, split_k=1, is_persistent=False,
                                 fused_scatter=False, idle_sms=0, epilogue_subtile=1, arch=None,
                                 target_kernel_kwargs=dict())


class TritonKernelsMoE:
    """gpt-oss experts through triton_kernels.matmul_ogs, prepared and called as vLLM 0.32 does.

    Arguments: the checkpoint tensors (uint8 blocks [E, N, K/32, 16] or [E, N, K/2], uint8 E8M0
    scales [E, N, K/32], biases [E, N] any float or None), gate/up rows interleaved.
    """

    def __init__(self, w13_blocks, w13_scales, w13_bias, w2_blocks, w2_scales, w2_bias, tk_path=None,
                 alpha: float = 1.702, limit: float = 7.0, num_warps: int = 8):
        tk = self.tk = load(tk_path)
        E, N13, kb13 = w13_scales.shape
        H, I = kb13 * 32, N13 // 2
        w13 = w13_blocks.reshape(E, N13, kb13 * 16)
        w2 = w2_blocks.reshape(E, H, -1)
        s13, s2 = w13_scales, w2_scales
        dev = w13.device
        b13 = torch.zeros(E, N13, device=dev) if w13_bias is None else w13_bias.float()
        b2 = torch.zeros(E, H, device=dev) if w2_bias is None else w2_bias.float()
        # vLLM: the expert width is padded to a multiple of 64 for this backend (zeros)
        Ip = -(-I // 64) * 64
        if Ip != I:
            pad = Ip - I
            w13 = torch.cat([w13, w13.new_zeros(E, 2 * pad, w13.shape[2])], 1)
            s13 = torch.cat([s13, s13.new_zeros(E, 2 * pad, s13.shape[2])], 1)
            b13 = torch.cat([b13, b13.new_zeros(E, 2 * pad)], 1)
            w2 = torch.cat([w2, w2.new_zeros(E, H, pad // 2)], 2)
            s2 = torch.cat([s2, s2.new_zeros(E, H, pad // 32)], 2)
        self.E, self.H, self.I, self.I_padded = E, H, I, Ip
        self.alpha, self.limit = alpha, limit
        self.b13, self.b2 = b13.contiguous(), b2.contiguous()
        self.cc = _capability()
        self.w13, self.p13, self.layout13 = self._swizzle(w13.contiguous(), s13.contiguous(), num_warps)
        self.w2, self.p2, self.layout2 = self._swizzle(w2.contiguous(), s2.contiguous(), num_warps)
        self.act = tk.FusedActivation(tk.FnSpecs("swiglu", tk.swiglu.swiglu_fn, ("alpha", "limit")),
                                      (alpha, limit), 2)

    def _swizzle(self, quant, scale, num_warps):
        """vLLM 0.32's `_swizzle_mxfp4` (CUDA branch; torch >= 2.8.1)."""
        tk = self.tk
        if self.cc is not None:
            value_layout, value_opts = tk.layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
            scale_layout, scale_opts = tk.layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=num_warps)
        else:  # interpreter: no CUDA target, the layouts' own default below sm_90
            value_layout, value_opts = tk.layout.StridedLayout, {}
            scale_layout, scale_opts = tk.layout.StridedLayout, {}
        if self.cc == (9, 0):
            tk.opt_flags.update_opt_flags_constraints({"split_k": 1})
            pad_k = -scale.shape[-1] % 4
            if pad_k:
                scale = torch.nn.functional.pad(scale, (0, pad_k))
        elif self.cc is not None and self.cc[0] in (10, 12):
            tk.opt_flags.update_opt_flags_constraints({"is_persistent": True, "epilogue_subtile": 1})
        quant = quant.transpose(-2, -1)
        scale = scale.transpose(-2, -1)
        w = tk.convert_layout(tk.wrap_torch_tensor(quant, dtype=tk.FP4), value_layout, **value_opts)
        s = tk.convert_layout(tk.wrap_torch_tensor(scale), scale_layout, **scale_opts)
        prec = tk.PrecisionConfig(weight_scale=s, flex_ctx=tk.FlexCtx(rhs_data=tk.InFlexData()))
        return w, prec, f"{value_layout.__name__}/{scale_layout.__name__}"

    # ------------------------------------------------------------------------------------ routing
    def routing_from_ids(self, topk_ids: torch.Tensor, topk_weights: torch.Tensor):
        """vLLM's make_routing_data (3.5.1 path): what OAITritonExperts does with given ids."""
        tk = self.tk
        ids = topk_ids.to(torch.int16)
        w = topk_weights.to(torch.bfloat16)
        n_rows, k = ids.shape
        bm_cols = -(-self.E // 32)
        bitmatrix = torch.zeros((n_rows, bm_cols), dtype=torch.uint32, device=ids.device)
        tk.pack_bitmatrix[(-(-n_rows // 512),)](bitmatrix, ids, n_rows, bm_cols, k, BLOCK_SIZE_M=512, BLOCK_SIZE_K=32)
        bitmatrix = tk.Bitmatrix(bitmatrix, shape=[n_rows, bm_cols * 32], shape_max=[n_rows, None], scratchpad=None)
        w = torch.where(ids == -1, -1.0, w)
        return tk.routing_from_bitmatrix(bitmatrix, w, ids, self.E, k)

    def routing_from_logits(self, logits: torch.Tensor, k: int):
        """The monolithic path (serving): triton_kernels.routing.routing(logits, k, sm_first=False)."""
        return self.tk.routing(logits, k, sm_first=False)

    # ------------------------------------------------------------------------------------ experts
    def experts(self, x: torch.Tensor, routing, out: torch.Tensor | None = None, act: torch.Tensor | None = None):
        """triton_kernel_fused_experts: the two matmul_ogs calls. x bf16 [T, H] -> [T, H] bf16."""
        if x.dtype != torch.bfloat16:
            raise TypeError("vLLM's triton_kernels path takes bf16 activations only")
        tk = self.tk
        rd, gather, scatter = routing
        T = x.shape[0]
        k = rd.n_expts_act
        if act is None:
            act = torch.empty(1, T * k, self.I_padded, dtype=x.dtype, device=x.device)
        if out is None:
            out = torch.empty(1, T, self.H, dtype=x.dtype, device=x.device)
        else:
            out = out.view(1, T, self.H)
        flags = self._flags_override(T * k)
        try:
            for f in flags[:1]:
                self._set_flags(f)
            tk.matmul_ogs(x, self.w13, self.b13, rd, gather_indx=gather, precision_config=self.p13,
                          gammas=None, fused_activation=self.act, y=act)
            for f in flags[1:]:
                self._set_flags(f)
            tk.matmul_ogs(act.view(T * k, self.I_padded), self.w2, self.b2, rd, scatter_indx=scatter,
                          precision_config=self.p2, gammas=rd.gate_scal, y=out)
        finally:
            if flags:
                self._set_flags(None)
        return out.view(T, self.H)

    def __call__(self, x, topk_weights, topk_ids, out=None):
        return self.experts(x, self.routing_from_ids(topk_ids, topk_weights), out=out)

    def _flags_override(self, m):
        if self.cc is not None:
            return []
        return [_interpret_opt_flags(self.tk, m, 2 * self.I_padded, self.H, 1),
                _interpret_opt_flags(self.tk, m, self.H, self.I_padded, 2)]

    def _set_flags(self, flags):
        mod = self.tk.opt_flags
        mod._opt_flags = None
        if flags is not None:
            mod.set_opt_flags(flags)

    def describe(self) -> dict:
        return {"root": str(self.tk.root), "api": self.tk.api, "layout_w13": self.layout13, "layout_w2": self.layout2,
                "I_padded": self.I_padded, "capability": self.cc,
                "opt_flags_constraints": dict(self.tk.opt_flags._opt_flags_constraints)}
