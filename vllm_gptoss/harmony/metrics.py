"""Prometheus counter of harmony recoveries, by kind, served on vLLM's ``/metrics``.

vLLM's ``/metrics`` route exposes `vllm.v1.metrics.prometheus.get_prometheus_registry()`: the
default ``prometheus_client.REGISTRY`` in a single API-server process, or, when
``PROMETHEUS_MULTIPROC_DIR`` is set (several API-server processes), a fresh registry fed by
``MultiProcessCollector`` from the per-process files. A plain `Counter` registered in the default
registry covers both: prometheus_client writes its values to those files by itself in
multiprocess mode. Our parser runs in the API-server process, so that is where it counts.

Exposed as ``vllm_gptoss:harmony_recoveries_total{kind="..."}``; every kind of
`parser.RECOVERY_KINDS` is present from the first request on (at 0), so dashboards see the series.
"""

from __future__ import annotations

import threading

from ..vllm_compat import registered_collector

NAME = "vllm_gptoss:harmony_recoveries"
_lock = threading.Lock()
_counter = None


def recoveries():
    """The counter, created on first use (in the process that parses)."""
    global _counter
    if _counter is None:
        with _lock:
            if _counter is None:
                from prometheus_client import REGISTRY, Counter

                from .parser import RECOVERY_KINDS

                existing = registered_collector(REGISTRY, NAME + "_total")
                if existing is not None:  # re-imported module (tests): reuse the series
                    _counter = existing
                else:
                    _counter = Counter(
                        NAME,
                        "Malformed harmony output from gpt-oss that vllm-gptoss recovered, by kind.",
                        ["kind"],
                    )
                for kind in RECOVERY_KINDS:
                    _counter.labels(kind=kind)
    return _counter


def record(kind: str) -> None:
    """Count one recovery (the parser's `on_recovery` callback)."""
    recoveries().labels(kind=kind).inc()


def value(kind: str) -> float:
    """Current count of one kind in this process (for tests)."""
    recoveries()
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(NAME + "_total", {"kind": kind}) or 0.0


# --- rejected requests (request_checks.py) -------------------------------------------------------
# ``vllm_gptoss:rejected_requests_total{param="..."}``: requests the harmony server answered with a
# 400 from its request checks, by the offending field. List indices are folded
# (``tools[3].function.name`` -> ``tools[].function.name``) so the label set stays small.

REJECTED_NAME = "vllm_gptoss:rejected_requests"
_rejected = None


def rejected():
    global _rejected
    if _rejected is None:
        with _lock:
            if _rejected is None:
                from prometheus_client import REGISTRY, Counter

                existing = registered_collector(REGISTRY, REJECTED_NAME + "_total")
                _rejected = existing or Counter(
                    REJECTED_NAME,
                    "Requests that vllm-gptoss rejected with a 400 before they ran, by parameter.",
                    ["param"],
                )
    return _rejected


def param_label(param: str | None) -> str:
    import re

    return re.sub(r"\[\d+\]", "[]", param) if param else "unknown"


def record_rejection(param: str | None) -> None:
    rejected().labels(param=param_label(param)).inc()


def rejections(param: str | None) -> float:
    """Current count for one parameter in this process (for tests)."""
    rejected()
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(REJECTED_NAME + "_total", {"param": param_label(param)}) or 0.0
