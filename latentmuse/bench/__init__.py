"""``latentmuse bench``: every graph of a generator on every backend side by side, then the pipeline end to end.

* :mod:`.suite` plans the measurements (checking options first), exports ONNX for ONNX Runtime when
  the engines folder lacks it, and runs each (backend, item) in its own worker process;
* :mod:`.worker` is that process (``python -m latentmuse.bench.worker REQUEST.json RESULT.json``);
* :mod:`.measure` holds its clocks (warm-up, synchronised calls, p50/p90) and memory gauges;
* :mod:`.plot` draws ``--plot``.

Speed is measured here, never asserted in tests. The JSON records the machine, so that numbers from
different machines are never compared by accident.
"""


__all__ = ["BACKENDS", "BenchOptions", "Plan", "no_backend_ran", "prepare", "run_bench", "write_json"]


def __getattr__(name: str):
    """The suite's names, imported on first use: the worker process (``-m latentmuse.bench.worker``)
    imports this package first and should pay only for what its job needs."""
    if name in __all__:
        from . import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
