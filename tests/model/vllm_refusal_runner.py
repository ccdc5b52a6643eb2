"""Starts vLLM (CPU) on several checkpoints that it must refuse, one after another in one process,
and writes each refusal's text as JSON: `python vllm_refusal_runner.py SPEC.json OUT.json`.

Why one process: a refusal happens while the engine loads the model, a fraction of a second after
vLLM is imported, but every fresh interpreter pays ~30 s of imports and engine start on the CI
machine; the refusal tests share those here. The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so a refusal is the exception `LLM(...)` raises, with its whole
chain, and the next engine starts clean. (What a user sees in the multiprocess engine's log, the
same exception logged by the worker, is covered by test_pipeline_parallel_ranks_check_every_tensor,
which runs vllm_runner.py.)
SPEC: {"runs": {NAME: {model, dtype, and any other keyword of vllm.LLM}}}
OUT:  {NAME: {"refused": bool, "error": the traceback text, "" if it loaded}}
"""

import json
import os
import sys
import traceback


def main(spec_path: str, out_path: str) -> None:
    spec = json.load(open(spec_path))
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from vllm import LLM

    out = {}
    for name, kwargs in spec["runs"].items():
        try:
            llm = LLM(skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=256,
                      seed=0, **kwargs)
        except Exception as e:  # the refusal under test: keep its text, go on with the next checkpoint
            out[name] = {"refused": True, "error": "".join(traceback.format_exception(e))}
            continue
        out[name] = {"refused": False, "error": ""}
        llm.llm_engine.engine_core.shutdown()
    with open(out_path, "w") as f:
        json.dump(out, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as llm_exit.shutdown_and_exit: no interpreter teardown race after the results are written


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
