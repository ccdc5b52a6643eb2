"""Functions `LLM.apply_model` runs in vLLM's workers, to read the EAGLE-3 aux hidden states our model
hands a draft head. They live in an importable module (not the runner's __main__) because vLLM
pickles them by reference."""


def install_aux_capture(model) -> None:
    """Keep the aux hidden states of the first forward that returns any (the prompt's prefill)."""

    def hook(module, args, output):
        if isinstance(output, tuple) and not hasattr(module, "captured_aux"):
            module.captured_aux = [t.float().cpu().tolist() for t in output[1]]

    model.model.register_forward_hook(hook)


def captured_aux(model):
    return getattr(model.model, "captured_aux", None)
