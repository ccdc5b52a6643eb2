"""Which model class and MoE method a running vLLM engine actually uses.

`LLM(...).apply_model(describe_model)` returns, per worker, the model class and the quantization
method of every MoE layer, as "module:Class" strings, how many experts each rank holds and in how
many layers (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 when the engine runs in another process).
"""

from __future__ import annotations


def _qualname(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__name__}"


def describe_model(model) -> dict:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    routed = [m for m in model.modules() if isinstance(m, RoutedExperts)]
    return {
        "model_class": _qualname(model),
        "moe_methods": sorted({_qualname(m.quant_method) for m in routed}),
        "local_experts": sorted({m.local_num_experts for m in routed}),
        "moe_layers": len(routed),  # layers this rank holds (all of them unless pipeline parallel)
    }
