"""gpt-oss hyper-parameters read from config.json, validated once, as a plain dataclass.

Nothing here is specific to gpt-oss-20b or -120b: every size comes from the checkpoint's config.
Bad values stop loading with an error that names the field and the expected and found values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYER_TYPES = ("sliding_attention", "full_attention")
# Format facts have one home, the kernels package (it knows nothing of vLLM): the MXFP4 block
# (elements per E8M0 scale) and gpt-oss's clamped-SwiGLU constants, the defaults of config.json.
from gptoss_kernels.mxfp4 import BLOCK as MXFP4_BLOCK  # noqa: E402,F401
from gptoss_kernels.reference import SWIGLU_ALPHA, SWIGLU_LIMIT  # noqa: E402


def expert_shapes(E: int, H: int, I: int, mxfp4: bool) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's expert tensors in the released checkpoint layout (`mlp.experts.<leaf>`):
    gate_up rows interleave gate and up (row 2j gate, 2j+1 up); MXFP4 blocks hold 16 bytes = 32
    E2M1 codes per E8M0 scale; bf16 experts are stored [E, in, out]."""
    shapes = {"gate_up_proj_bias": (E, 2 * I), "down_proj_bias": (E, H)}
    if mxfp4:
        shapes.update({
            "gate_up_proj_blocks": (E, 2 * I, H // MXFP4_BLOCK, MXFP4_BLOCK // 2),
            "gate_up_proj_scales": (E, 2 * I, H // MXFP4_BLOCK),
            "down_proj_blocks": (E, H, I // MXFP4_BLOCK, MXFP4_BLOCK // 2),
            "down_proj_scales": (E, H, I // MXFP4_BLOCK),
        })
    else:
        shapes.update({"gate_up_proj": (E, H, 2 * I), "down_proj": (E, I, H)})
    return shapes


class GptOssConfigError(ValueError):
    """config.json does not describe a gpt-oss model we can run."""


def _get(cfg: Any, name: str, default: Any = ...) -> Any:
    value = cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)
    if value is ...:
        raise GptOssConfigError(f"config.json: required field '{name}' is missing")
    return value


def _positive_int(cfg: Any, name: str, default: Any = ...) -> int:
    value = _get(cfg, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise GptOssConfigError(f"config.json: '{name}' must be a positive integer, found {value!r}")
    return value


@dataclass(frozen=True)
class GptOssArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_parameters: dict
    max_position_embeddings: int
    rms_norm_eps: float
    swiglu_alpha: float
    swiglu_limit: float
    quant_method: str | None  # "mxfp4" or None (bf16 / float experts)

    def is_sliding(self, layer_idx: int) -> bool:
        return self.layer_types[layer_idx] == "sliding_attention"

    @classmethod
    def from_hf_config(cls, cfg: Any) -> "GptOssArgs":
        n_layers = _positive_int(cfg, "num_hidden_layers")
        n_experts = _positive_int(cfg, "num_local_experts")
        top_k = _positive_int(cfg, "num_experts_per_tok")
        if top_k > n_experts:
            raise GptOssConfigError(
                f"config.json: 'num_experts_per_tok' ({top_k}) must not exceed 'num_local_experts' ({n_experts})")
        n_heads = _positive_int(cfg, "num_attention_heads")
        n_kv = _positive_int(cfg, "num_key_value_heads")
        if n_heads % n_kv:
            raise GptOssConfigError(
                f"config.json: 'num_attention_heads' ({n_heads}) must be a multiple of "
                f"'num_key_value_heads' ({n_kv})")

        layer_types = _get(cfg, "layer_types", None)
        if layer_types is None:  # older configs: sliding on even layers, as the released models
            layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        layer_types = tuple(layer_types)
        if len(layer_types) != n_layers:
            raise GptOssConfigError(
                f"config.json: 'layer_types' has {len(layer_types)} entries, expected {n_layers} "
                f"(num_hidden_layers)")
        for i, t in enumerate(layer_types):
            if t not in LAYER_TYPES:
                raise GptOssConfigError(
                    f"config.json: layer_types[{i}] is {t!r}, expected one of {list(LAYER_TYPES)}")

        rope = _rope_parameters(cfg)

        quant = _get(cfg, "quantization_config", None)
        quant_method = None
        if quant:
            qm = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
            quant_method = "mxfp4" if qm in ("mxfp4", "gpt_oss_mxfp4", "vllm_gptoss_mxfp4") else qm

        args = cls(
            vocab_size=_positive_int(cfg, "vocab_size"),
            hidden_size=_positive_int(cfg, "hidden_size"),
            intermediate_size=_positive_int(cfg, "intermediate_size"),
            num_hidden_layers=n_layers,
            num_experts=n_experts,
            experts_per_token=top_k,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=_positive_int(cfg, "head_dim"),
            sliding_window=_positive_int(cfg, "sliding_window"),
            layer_types=layer_types,
            rope_parameters=rope,
            max_position_embeddings=_positive_int(cfg, "max_position_embeddings"),
            rms_norm_eps=float(_get(cfg, "rms_norm_eps", 1e-5)),
            swiglu_alpha=float(_get(cfg, "swiglu_alpha", SWIGLU_ALPHA)),
            swiglu_limit=float(_get(cfg, "swiglu_limit", SWIGLU_LIMIT)),
            quant_method=quant_method,
        )
        if quant_method == "mxfp4":
            for field in ("hidden_size", "intermediate_size"):
                v = getattr(args, field)
                if v % MXFP4_BLOCK:
                    raise GptOssConfigError(
                        f"config.json: '{field}' must be a multiple of {MXFP4_BLOCK} for MXFP4 experts, found {v}")
        elif quant_method is not None:
            raise GptOssConfigError(
                f"config.json: quantization_config.quant_method {quant_method!r} is not supported by vllm-gptoss "
                f"(expected 'mxfp4' or no quantization_config)")
        return args


def _rope_parameters(cfg: Any) -> dict:
    """YaRN parameters from `rope_parameters` (transformers v5) or `rope_scaling` + `rope_theta` (released files)."""
    params = _get(cfg, "rope_parameters", None) or _get(cfg, "rope_scaling", None)
    if not params:
        raise GptOssConfigError("config.json: neither 'rope_parameters' nor 'rope_scaling' is present")
    params = dict(params)
    if "rope_theta" not in params:
        params["rope_theta"] = _get(cfg, "rope_theta")
    rope_type = params.get("rope_type", params.get("type"))
    params["rope_type"] = rope_type
    if rope_type == "yarn":
        for key in ("factor", "original_max_position_embeddings"):
            if key not in params:
                raise GptOssConfigError(f"config.json: rope_scaling/rope_parameters '{key}' is missing for YaRN")
        params.setdefault("beta_fast", 32.0)
        params.setdefault("beta_slow", 1.0)
        params.setdefault("truncate", True)
    elif rope_type != "default":
        raise GptOssConfigError(
            f"config.json: rope_type must be 'yarn' (gpt-oss) or 'default', found {rope_type!r}")
    return params
