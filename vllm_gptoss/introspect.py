"""Which model class and MoE method a running vLLM engine actually uses.

`LLM(...).apply_model(describe_model)` returns, per worker, the model class and the quantization
method of every MoE layer, as "module:Class" strings, how many experts each rank holds and in how
many layers, and which modules vLLM's torch.compile machinery took on (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 when the engine runs in another process).
"""

from __future__ import annotations


def _qualname(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__name__}"


def describe_model(model) -> dict:
    from .vllm_compat import routed_experts_class

    routed = [m for m in model.modules() if isinstance(m, routed_experts_class())]
    return {
        "model_class": _qualname(model),
        "moe_methods": sorted({_qualname(m.quant_method) for m in routed}),
        "local_experts": sorted({m.local_num_experts for m in routed}),
        "moe_layers": len(routed),  # layers this rank holds (all of them unless pipeline parallel)
        "compile": compile_state(model),
        "vocab_tables": vocab_tables(model),
        "dense_gemms": dense_gemms(model),
    }


def dense_gemms(model) -> dict:
    """How many bf16/float linear layers (attention projections, router, lm_head) got the native
    bf16 GEMM (`cpu_dense`) and how many kept vLLM's own."""
    from .cpu_dense import NATIVE_GEMM_ATTR
    from .vllm_compat import cpu_gemm_prepacked

    counts = {"native": 0, "vllm": 0}
    for module in model.modules():
        if getattr(module, NATIVE_GEMM_ATTR, False):
            counts["native"] += 1
        elif cpu_gemm_prepacked(module):
            counts["vllm"] += 1
    return counts


def vocab_tables(model) -> dict:
    """How the embedding and lm_head tables are held: elements of each `weight` parameter and
    whether vLLM-CPU built a packed GEMM copy beside it (`vllm_compat.vocab_tables_packed_once`)."""
    from .vllm_compat import cpu_gemm_prepacked

    out = {}
    for name, layer in (("embed_tokens", getattr(model.model, "embed_tokens", None)),
                        ("lm_head", getattr(model, "lm_head", None))):
        weight = getattr(layer, "weight", None)
        if weight is not None:
            out[name] = {"weight_elements": weight.numel(), "gemm_prepacked": cpu_gemm_prepacked(layer)}
    return out


def compile_state(model) -> dict:
    """vLLM's own compile bookkeeping, read back: every submodule that `@support_torch_compile`
    decorated (it sets `do_not_compile`), whether vLLM compiles it (`do_not_compile` False, set from
    the compilation mode at construction) and whether that has happened (`compiled`, set by the
    first compiled forward of the warm-up), plus vLLM's and Dynamo's process-wide counters."""
    from torch._dynamo.utils import counters
    from .vllm_compat import compilation_counters

    modules = {}
    for name, m in model.named_modules():
        if hasattr(m, "do_not_compile"):
            modules[name or "."] = {"class": _qualname(m), "do_not_compile": bool(m.do_not_compile),
                                    "compiled": bool(getattr(m, "compiled", False))}
    return {"modules": modules,
            **compilation_counters(),
            # Dynamo's own counters in this process: a graph break or a second graph (a
            # recompilation, e.g. per batch size) would show here
            "graph_breaks": sum(counters["graph_break"].values()),
            "unique_graphs": counters["stats"]["unique_graphs"]}
