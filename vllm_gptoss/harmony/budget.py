"""A reasoning budget for gpt-oss: ``thinking_token_budget`` with no extra flag.

vLLM 0.32's own ``thinking_token_budget`` needs ``--reasoning-config`` start/end strings and
counts one section between them (vllm/v1/sample/thinking_budget_state.py); a harmony turn has
several analysis messages, each opened by a header and closed by ``<|end|>``. Here:

- the request field ``thinking_token_budget`` (chat completions; also accepted on Responses
  requests), or the server default ``VLLM_GPTOSS_THINKING_BUDGET``, is validated (a 400 naming
  the parameter) and moved into the request's ``vllm_xargs`` (`apply`, called where vLLM adjusts
  every harmony request), so vLLM's own budget check never sees it;
- `HarmonyBudgetLogitsProcessor`, added to gpt-oss engines' logits processors (hooks.py wraps
  ``EngineArgs.create_engine_config``), follows the harmony structure of each budgeted request's
  output token by token and counts every content token of every ``analysis`` message. When the
  count reaches the budget inside an analysis message, the next tokens are forced to
  ``<|end|><|start|>assistant<|channel|>final<|message|>``; at a message header (budget 0, or a
  new message after the budget ran out) to ``<|channel|>final<|message|>``. Then the model answers
  unconstrained. A request whose reasoning stays under the budget is never touched (identical
  tokens). Engines with speculative decoding (vLLM refuses custom logits processors there) or
  vLLM's Model Runner V2 (another processor interface; not implemented yet) get no processor,
  and a budget is then a 400 saying why.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

PARAM = "thinking_token_budget"
from ..envs import THINKING_BUDGET as DEFAULT_ENV
XARG = "vllm_gptoss_thinking_budget"
PROCESSOR = "vllm_gptoss.harmony.budget:HarmonyBudgetLogitsProcessor"


def _invalid(value: Any, parameter: str):
    from vllm.exceptions import VLLMValidationError

    return VLLMValidationError(
        f"{parameter}={value!r} is not a reasoning budget; expected a non-negative integer "
        "(tokens of analysis per turn), or -1 for unlimited.",
        parameter=parameter,
        value=value,
    )


def server_default() -> int | None:
    raw = os.environ.get(DEFAULT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"{DEFAULT_ENV}={raw!r} is not a reasoning budget; expected a non-negative integer.")
    return int(raw)


def check(value: Any, parameter: str = PARAM) -> int | None:
    """vLLM's own rule (a non-negative integer, or -1 for unlimited -> None), 400 naming it."""
    from ..vllm_compat import validate_thinking_token_budget

    try:
        return validate_thinking_token_budget(value)
    except ValueError:  # VLLMValidationError is one; re-raised naming `parameter`
        raise _invalid(value, parameter) from None


def apply(request: Any) -> int | None:
    """Resolve the budget of a chat/Responses request and move it into ``vllm_xargs``.

    Chat completions arrive validated by vLLM (``-1``, vLLM's "unlimited", is already None
    there, so it means "unset": the server default applies); the Responses request model has no
    such field, so it is checked here by the same rule.
    """
    value = getattr(request, PARAM, None)
    if value is not None:
        value = check(value)
        setattr(request, PARAM, None)  # vLLM's own budget would refuse it without --reasoning-config
    budget = value if value is not None else server_default()
    if budget is None:
        return None
    if not _installed:
        if value is None:  # the server default, on an engine without the processor: warned at start
            return None
        from vllm.exceptions import VLLMValidationError

        raise VLLMValidationError(
            f"{PARAM} is not available on this server: its engine has no gpt-oss budget logits "
            + ("processor for vLLM's Model Runner V2 yet (serve with VLLM_USE_V2_MODEL_RUNNER=0 to "
               "use it)." if _v2 else
               "processor (vLLM refuses custom logits processors with speculative decoding)."),
            parameter=PARAM,
            value=budget,
        )
    xargs = dict(getattr(request, "vllm_xargs", None) or {})
    xargs[XARG] = budget
    request.vllm_xargs = xargs
    return budget


_installed: list[bool] = []  # set when this process built a gpt-oss engine config with the processor
_v2: list[bool] = []  # set when it did not because the engine runs Model Runner V2


def add_to_engine_config(config: Any) -> None:
    """Add the processor to a gpt-oss VllmConfig (called on EngineArgs.create_engine_config)."""
    model_config = getattr(config, "model_config", None)
    hf = getattr(model_config, "hf_config", None)
    if getattr(hf, "model_type", None) != "gpt_oss":
        return
    default = server_default()  # a bad VLLM_GPTOSS_THINKING_BUDGET stops start-up
    # Model Runner V2 (vLLM's default on GPUs with Triton) loads logits processors of another
    # interface (vllm/v1/worker/gpu/sample/logits_processor/interface.py) and refuses ours at
    # start-up; there, as with speculative decoding, the budget is not offered (a 400 says so)
    # rather than breaking the server.
    why = None
    if getattr(config, "speculative_config", None):
        why = "speculative decoding"
    elif getattr(config, "use_v2_model_runner", False):
        why = "Model Runner V2 (VLLM_USE_V2_MODEL_RUNNER=0 enables it)"
        _v2.append(True)
    if why is not None or getattr(model_config, "runner_type", "generate") == "pooling":
        if default is not None and why is not None:
            import logging

            logging.getLogger(__name__).warning(
                "vllm-gptoss: %s=%d ignored: no reasoning budget with %s", DEFAULT_ENV, default, why)
        return
    procs = list(model_config.logits_processors or [])
    if PROCESSOR not in procs:
        procs.append(PROCESSOR)
    model_config.logits_processors = procs
    _installed.append(True)


# --- engine side --------------------------------------------------------------------------------


@cache
def _ids() -> dict[str, int]:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    special = {name: enc.encode(f"<|{name}|>", allowed_special="all")[0]
               for name in ("start", "end", "message", "channel", "return", "call", "constrain")}  # fmt: skip
    (assistant,) = enc.encode("assistant")
    (final,) = enc.encode("final")
    return {**special, "assistant": assistant, "final": final}


@cache
def _decode_one(token: int) -> str:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS).decode([token])


class BudgetState:
    """The harmony position of one request's output, and the tokens still to force.

    The prompt ends with ``<|start|>assistant``, so the output starts in a header (state
    ``header``). States: ``header`` (after the role), ``channel`` (after ``<|channel|>``, reading
    the channel name), ``content`` (after ``<|message|>``), ``between`` (after ``<|end|>``),
    ``role`` (after ``<|start|>``).
    """

    def __init__(self, budget: int):
        self.ids = _ids()
        self.budget = budget
        self.used = 0  # analysis content tokens so far
        self.state = "header"
        self.channel_text = ""
        self.in_analysis = False
        self.forced: list[int] = []
        self.done = False  # the final channel was opened by us: nothing more to do
        self.seen = 0

    def feed(self, tok: int) -> None:
        i = self.ids
        if self.forced and tok == self.forced[0]:
            self.forced.pop(0)
            if not self.forced:
                self.done = True
        if tok == i["channel"] and self.state in ("header", "role"):
            self.state, self.channel_text = "channel", ""
        elif tok == i["message"] and self.state in ("header", "channel"):
            self.in_analysis = self.channel_text.strip().split(" ")[0] == "analysis"
            self.state = "content"
        elif tok in (i["end"], i["return"], i["call"]):
            self.state, self.in_analysis = "between", False
        elif tok == i["start"]:
            self.state = "role"
        elif self.state == "role":
            self.state = "header"
        elif self.state == "channel":
            self.channel_text += _decode_one(tok)
        elif self.state == "content" and self.in_analysis:
            self.used += 1

    def plan(self) -> None:
        """Decide what to force once the budget is spent."""
        if self.done or self.forced or self.used < self.budget:
            return
        i = self.ids
        opening = [i["channel"], i["final"], i["message"]]
        if self.state == "content" and self.in_analysis:
            self.forced = [i["end"], i["start"], i["assistant"], *opening]
        elif self.state == "header":
            self.forced = opening
        elif self.state == "channel" and not self.channel_text:
            self.forced = opening[1:]
        elif self.state == "between":
            self.forced = [i["start"], i["assistant"], *opening]

    def __call__(self, output_ids: list[int], logits):
        for tok in output_ids[self.seen :]:
            self.feed(tok)
        self.seen = len(output_ids)
        self.plan()
        if self.forced:
            keep = logits[self.forced[0]].clone()
            logits.fill_(float("-inf"))
            logits[self.forced[0]] = keep if bool(keep.isfinite()) else 0.0
        return logits


def _make_processor_class():
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    class HarmonyBudgetLogitsProcessor(AdapterLogitsProcessor):
        """Per-request harmony reasoning budget (see the module docstring)."""

        @classmethod
        def validate_params(cls, sampling_params):
            extra = getattr(sampling_params, "extra_args", None) or {}
            if XARG in extra:
                check(extra[XARG], PARAM)

        def is_argmax_invariant(self) -> bool:
            return False  # it forces tokens

        def new_req_logits_processor(self, params):
            extra = getattr(params, "extra_args", None) or {}
            budget = extra.get(XARG)
            if budget is None:
                return None
            return BudgetState(int(budget))

    return HarmonyBudgetLogitsProcessor


def __getattr__(name: str):
    # Built lazily: importing vLLM's logits-processor module is only needed where an engine runs.
    if name == "HarmonyBudgetLogitsProcessor":
        cls = _make_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
