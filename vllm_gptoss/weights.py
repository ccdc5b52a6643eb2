"""Checkpoint -> vLLM parameters for gpt-oss, with an explicit name map and strict checks.

Checkpoint names are those of the released Hugging Face checkpoints (see checkpoint.py). Every
tensor is checked against the shape and dtype the config implies before it is copied; a tensor the
model does not have, a tensor missing at the end, a wrong shape or dtype: each stops loading with a
`CheckpointError` naming the tensor and the expected and found values. Nothing is ever left at its
initial (uninitialised) value.

A bf16 checkpoint (a fine-tune, say) served with `--quantization vllm_gptoss_mxfp4` gets MXFP4
experts: each expert's weights are quantized here, one expert at a time on the parameter's device,
as they stream in (OCP scale rule and round-half-to-even of `gptoss_kernels.mxfp4.quantize`, the
same encoder that writes MXFP4 checkpoints), so no bf16 copy of all experts is ever held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from gptoss_kernels.mxfp4 import quantize
from vllm.model_executor.models.utils import is_pp_missing_parameter

from . import checkpoint_pages, vllm_compat
from .config import MXFP4_BLOCK, GptOssArgs, expert_shapes


class CheckpointError(ValueError):
    """The checkpoint does not match the gpt-oss model its config.json describes."""


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    kind: str  # "float" or "uint8"


def expected_tensors(args: GptOssArgs) -> dict[str, Expected]:
    """Every tensor a gpt-oss checkpoint with this config holds, with its full (unsharded) shape."""
    H, I, E, V = args.hidden_size, args.intermediate_size, args.num_experts, args.vocab_size
    nq, nkv, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    f = lambda *s: Expected(tuple(s), "float")  # noqa: E731
    u8 = lambda *s: Expected(tuple(s), "uint8")  # noqa: E731
    out = {
        "model.embed_tokens.weight": f(V, H),
        "model.norm.weight": f(H),
        "lm_head.weight": f(V, H),
    }
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": f(H),
            p + "post_attention_layernorm.weight": f(H),
            p + "self_attn.q_proj.weight": f(nq * d, H),
            p + "self_attn.q_proj.bias": f(nq * d),
            p + "self_attn.k_proj.weight": f(nkv * d, H),
            p + "self_attn.k_proj.bias": f(nkv * d),
            p + "self_attn.v_proj.weight": f(nkv * d, H),
            p + "self_attn.v_proj.bias": f(nkv * d),
            p + "self_attn.o_proj.weight": f(H, nq * d),
            p + "self_attn.o_proj.bias": f(H),
            p + "self_attn.sinks": f(nq),
            p + "mlp.router.weight": f(E, H),
            p + "mlp.router.bias": f(E),
        })
        for leaf, shape in expert_shapes(E, H, I, args.quant_method == "mxfp4").items():
            out[p + "mlp.experts." + leaf] = (u8 if leaf.endswith(("_blocks", "_scales")) else f)(*shape)
    return out


def check_tensor(name: str, t: torch.Tensor, expected: dict[str, Expected]) -> Expected:
    exp = expected.get(name)
    if exp is None:
        hint = ""
        if name.endswith(("_blocks", "_scales")):
            hint = " (MXFP4 expert tensors, but config.json has no quantization_config with quant_method 'mxfp4')"
        elif name.endswith((".gate_up_proj", ".down_proj")):
            hint = " (unquantized expert weights, but config.json declares MXFP4 experts)"
        raise CheckpointError(f"checkpoint tensor '{name}' is not part of a gpt-oss model with this config.json{hint}")
    if tuple(t.shape) != exp.shape:
        raise CheckpointError(
            f"checkpoint tensor '{name}': expected shape {list(exp.shape)}, found {list(t.shape)}")
    if exp.kind == "uint8" and t.dtype != torch.uint8:
        raise CheckpointError(f"checkpoint tensor '{name}': expected dtype uint8 (MXFP4), found {t.dtype}")
    if exp.kind == "float" and not t.dtype.is_floating_point:
        raise CheckpointError(f"checkpoint tensor '{name}': expected a floating-point dtype, found {t.dtype}")
    return exp


def check_all_present(seen: set[str], expected: dict[str, Expected]) -> None:
    missing = sorted(set(expected) - seen)
    if missing:
        shown = ", ".join(f"'{m}' {list(expected[m].shape)}" for m in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}{more}")


def _corner(param: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """The leading corner of `param` a shard of `shape` fills; the rest is padding, zeroed here."""
    if len(shape) != param.dim() or any(s > p for s, p in zip(shape, param.shape)):
        raise CheckpointError(
            f"checkpoint tensor '{name}': shard of shape {list(shape)} does not fit parameter "
            f"{list(param.shape)}")
    if tuple(shape) != tuple(param.shape):
        param.data.zero_()
    return param.data[tuple(slice(0, s) for s in shape)]


def _copy(param: torch.Tensor, src: torch.Tensor, name: str) -> None:
    _corner(param, tuple(src.shape), name).copy_(src.to(param.dtype))


# checkpoint expert tensor (leaf name) -> vLLM's RoutedExperts parameter
_EXPERT_PARAMS = {
    "gate_up_proj_blocks": "w13_weight", "gate_up_proj_scales": "w13_weight_scale",
    "gate_up_proj_bias": "w13_bias", "gate_up_proj": "w13_weight",
    "down_proj_blocks": "w2_weight", "down_proj_scales": "w2_weight_scale",
    "down_proj_bias": "w2_bias", "down_proj": "w2_weight",
}


def _local_experts(t: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    """The experts this rank holds, in local-id order (expert parallelism); all without EP."""
    if expert_map is None:
        return t
    emap = expert_map.cpu()
    global_ids = (emap >= 0).nonzero(as_tuple=True)[0]
    return t[global_ids[emap[global_ids].argsort()]]


def _to_param_layout(leaf: str, t: torch.Tensor, lo: int, hi: int, moe_tp_rank: int) -> torch.Tensor:
    """Slice [lo, hi) of the intermediate dimension and change the checkpoint layout to vLLM's."""
    if leaf in ("gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_bias"):
        t = t[:, 2 * lo: 2 * hi]  # rows interleave gate/up, so 2j and 2j+1 travel together
        if leaf == "gate_up_proj_blocks":
            t = t.flatten(-2)  # [E, 2I, H/32, 16] -> vLLM's [E, 2I, H/2]
    elif leaf == "down_proj_blocks":
        t = t[:, :, lo // MXFP4_BLOCK: hi // MXFP4_BLOCK].flatten(-2)
    elif leaf == "down_proj_scales":
        t = t[:, :, lo // MXFP4_BLOCK: hi // MXFP4_BLOCK]
    elif leaf == "down_proj_bias":
        if moe_tp_rank != 0:  # the TP all-reduce sums the ranks' outputs: add the bias once
            t = torch.zeros_like(t)
    elif leaf == "gate_up_proj":  # bf16 [E, H, 2I] -> [E, 2I_local, H]
        t = t[:, :, 2 * lo: 2 * hi].transpose(1, 2)
    elif leaf == "down_proj":  # bf16 [E, I, H] -> [E, H, I_local]
        t = t[:, lo:hi, :].transpose(1, 2)
    return t


class GptOssWeightLoader:
    """Streams (name, tensor) pairs from vLLM's loader into a `GptOssForCausalLM`."""

    _QKV = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}

    def __init__(self, model: torch.nn.Module, args: GptOssArgs, attn_tp_rank: int, attn_tp_size: int):
        self.model = model
        self.args = args
        # the rank in the tensor-parallel group of attention (the sinks are sliced by head);
        # the MoE's own sharding comes from its layer (`_intermediate_slice`)
        self.attn_tp_rank, self.attn_tp_size = attn_tp_rank, attn_tp_size
        self.params = dict(model.named_parameters())
        self.expected = expected_tensors(args)

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        seen: set[str] = set()
        loaded: set[str] = set()
        for name, t in weights:
            check_tensor(name, t, self.expected)
            if name in seen:
                raise CheckpointError(f"checkpoint tensor '{name}' appears twice")
            seen.add(name)
            if is_pp_missing_parameter(name, self.model):
                continue  # checked above; it lives on another pipeline stage
            loaded.update(self._load_one(name, t))
            checkpoint_pages.release(t)  # copied: its mapped file pages need not wait for the shard's end
        check_all_present(seen, self.expected)
        return loaded

    # -- one tensor ---------------------------------------------------------------------------
    def _param(self, name: str) -> torch.nn.Parameter:
        try:
            return self.params[name]
        except KeyError:  # a bug in the name map, not in the checkpoint
            raise RuntimeError(f"vllm-gptoss: no parameter '{name}' in the model") from None

    def _load_one(self, name: str, t: torch.Tensor) -> tuple[str, ...]:
        if ".mlp.experts." in name:
            return self._load_expert_tensor(name, t)
        module, _, leaf = name.rpartition(".")
        if module.endswith(("q_proj", "k_proj", "v_proj")):
            base, _, proj = module.rpartition(".")
            pname = f"{base}.qkv_proj.{leaf}"
            param = self._param(pname)
            param.weight_loader(param, t, self._QKV[proj])
            return (pname,)
        if leaf == "sinks":
            param = self._param(name)
            heads = param.shape[0]
            _copy(param, t.narrow(0, self.attn_tp_rank * heads, heads), name)
            return (name,)
        param = self._param(name)
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            _copy(param, t, name)
        else:
            loader(param, t)
        return (name,)

    def _load_expert_tensor(self, name: str, t: torch.Tensor) -> tuple[str, ...]:
        """One checkpoint expert tensor into its parameter, in four steps: this rank's experts
        (expert parallelism), this rank's slice of the intermediate dimension (the MoE's tensor
        parallelism), vLLM's layout, and, for bf16 experts in an MXFP4 model, quantization."""
        layer_prefix, _, leaf = name.partition(".mlp.experts.")
        routed = self.model.get_submodule(f"{layer_prefix}.mlp.experts.routed_experts")
        pname = f"{layer_prefix}.mlp.experts.routed_experts.{_EXPERT_PARAMS[leaf]}"
        # Experts held as MXFP4: an MXFP4 checkpoint, or a bf16 one quantized while loading.
        quantized = routed.w13_weight.dtype == torch.uint8
        t = _local_experts(t, vllm_compat.expert_map(routed))
        lo, hi, moe_tp_rank = self._intermediate_slice(routed, quantized, name)
        t = _to_param_layout(leaf, t, lo, hi, moe_tp_rank)
        if quantized and leaf in ("gate_up_proj", "down_proj"):
            return self._quantize_into(pname, t, name)
        _copy(self._param(pname), t, name)
        return (pname,)

    def _intermediate_slice(self, routed, quantized: bool, name: str) -> tuple[int, int, int]:
        """[lo, hi) of the intermediate dimension this rank's MoE holds, and its MoE TP rank (not
        the attention TP rank `attn_tp_rank`: with expert parallelism the MoE does not slice)."""
        I = self.args.intermediate_size
        use_ep, moe_tp_size, moe_tp_rank = vllm_compat.expert_sharding(routed)
        if use_ep:
            moe_tp_size, moe_tp_rank = 1, 0
        if quantized and I % MXFP4_BLOCK:
            raise CheckpointError(
                f"MXFP4 experts need intermediate_size to be a multiple of {MXFP4_BLOCK}: config.json "
                f"has {I} ('{name}')")
        step = MXFP4_BLOCK if quantized else 1  # MXFP4 shards hold whole scale blocks
        per_rank = -(-(I // step) // moe_tp_size) * step
        return min(moe_tp_rank * per_rank, I), min((moe_tp_rank + 1) * per_rank, I), moe_tp_rank

    def _quantize_into(self, base: str, t: torch.Tensor, name: str) -> tuple[str, ...]:
        """bf16 experts [E, N, K] -> MXFP4 blocks `base` [E, N, K/2] and scales `base`_scale [E, N, K/32],
        one expert at a time on the parameters' device."""
        blocks_param, scales_param = self._param(base), self._param(base + "_scale")
        E, N, K = t.shape
        # written straight into the parameters: no second, all-experts staging copy
        blocks = _corner(blocks_param, (E, N, K // 2), name)
        scales = _corner(scales_param, (E, N, K // MXFP4_BLOCK), name)
        for e in range(E):
            b, sc = quantize(t[e].to(blocks_param.device, torch.float32))
            blocks[e], scales[e] = b.flatten(-2), sc
        return base, base + "_scale"
