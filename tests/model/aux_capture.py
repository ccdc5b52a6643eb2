"""Functions `LLM.apply_model` runs in vLLM's workers, to read the EAGLE-3 aux hidden states our model
hands a draft head. They live in an importable module (not the runner's __main__) because vLLM
pickles them by reference."""


def install_aux_capture(model) -> None:
    """Keep the aux hidden states of the first forward that returns any (the prompt's prefill).

    Wraps the instance's `forward` rather than registering a forward hook: vLLM's
    `@support_torch_compile` wrapper (on our GptOssModel, as on vLLM's own) calls `self.forward`
    directly from `__call__`, so nn.Module hooks never run. The runs using this are eager."""
    inner = model.model
    forward = inner.forward

    def capturing_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        if isinstance(output, tuple) and not hasattr(inner, "captured_aux"):
            inner.captured_aux = [t.float().cpu().tolist() for t in output[1]]
        return output

    inner.forward = capturing_forward


def captured_aux(model):
    return getattr(model.model, "captured_aux", None)
