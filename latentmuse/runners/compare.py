"""Compare runners on the same inputs (Polygraphy's ``Comparator.run(runners, feeds)`` + ``compare_accuracy``).

Export validation, ``latentmuse build``'s checks and the parity tests all ask the same question: do
two runners of one graph compute the same function on the spec's seeded inputs? The criteria:

* :func:`compare`: every element within ``atol + rtol * |reference|`` and finite (Optimum's rule, for
  fp32 files against PyTorch fp32);
* :func:`cosine` and :func:`max_abs_error`: for fp16 files, whose error is judged as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import Runner

Outputs = dict[str, np.ndarray]


def run_all(runners: Sequence[Runner], feeds: Mapping[str, torch.Tensor]) -> list[Outputs]:
    """Each runner's outputs on ``feeds``, as float64-comparable numpy arrays, in the runners' order."""
    results = []
    for runner in runners:
        out = runner(feeds)
        results.append({name: value.detach().float().cpu().numpy() for name, value in out.items()})
    return results


def _pairs(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]):
    for name, b in ref.items():
        yield got[name].astype(np.float64), b.astype(np.float64)


def compare(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], atol: float,
            rtol: float) -> tuple[float, float, bool]:
    """(max-abs error, max-abs error / max |ref|, every element within atol + rtol * |ref| and finite)."""
    max_abs, scale, ok = 0.0, 0.0, True
    for a, b in _pairs(got, ref):
        if a.shape != b.shape:
            return float("inf"), float("inf"), False
        diff = np.abs(a - b)
        ok &= bool(np.isfinite(a).all()) and bool((diff <= atol + rtol * np.abs(b)).all())
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        scale = max(scale, float(np.abs(b).max(initial=0.0)))
    return max_abs, max_abs / scale if scale > 0 else max_abs, ok


def cosine(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """Cosine similarity of all outputs flattened together; NaN when ``got`` is not finite."""
    pairs = list(_pairs(got, ref))
    a = np.concatenate([p[0].ravel() for p in pairs])
    b = np.concatenate([p[1].ravel() for p in pairs])
    if not np.isfinite(a).all():
        return float("nan")
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def max_abs_error(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    return max(float(np.abs(a - b).max(initial=0.0)) for a, b in _pairs(got, ref))
