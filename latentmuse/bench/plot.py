"""``--plot``: frames/s per graph, per pipeline stage and end to end, one bar per backend (log scale).

matplotlib is imported here only, and only its object-oriented API with the Agg canvas: no pyplot, no
global backend switch, no display needed. The PNG is written atomically (:func:`latentmuse.files.atomic_path`).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import LatentmuseError
from ..files import atomic_path

COLOURS = {"torch": "#4c72b0", "ort": "#dd8452", "trt": "#55a868"}


def plot_items(result: dict) -> list[tuple[str, dict[str, float | None]]]:
    """(label, backend -> frames/s) for every graph, every per-frame stage, and end to end."""
    backends = result["backends"]
    items: list[tuple[str, dict[str, float | None]]] = []
    for graph, entry in result["graphs"].items():
        items.append((f"{graph}\n({entry['frames_per_call']} f/call)",
                      {b: (entry.get(b) or {}).get("frames_per_s") for b in backends}))
    e2e = result.get("end_to_end") or {}
    stages: dict[str, None] = {}
    for backend in backends:
        for name, stage in ((e2e.get(backend) or {}).get("stages") or {}).items():
            if stage.get("frames_per_s"):
                stages[name] = None
    for name in stages:
        items.append(("stage\n" + "\n".join(name.removeprefix("generate.").split(".")),
                      {b: (((e2e.get(b) or {}).get("stages") or {}).get(name) or {}).get("frames_per_s") for b in backends}))
    if any((e2e.get(b) or {}).get("frames_per_s") for b in backends):
        items.append(("end to end", {b: (e2e.get(b) or {}).get("frames_per_s") for b in backends}))
    return items


def write_plot(result: dict, path: Path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise LatentmuseError(f"--plot needs matplotlib ({exc}).", "pip install 'latentmuse[bench]'.") from exc

    items = plot_items(result)
    backends = [b for b in result["backends"] if any(row.get(b) for _label, row in items)]
    skipped = [b for b in result["backends"] if b not in backends]
    width = 0.8 / max(1, len(backends))
    figure = Figure(figsize=(max(8.0, 1.25 * len(items) + 2), 6.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = [v for _label, row in items for v in row.values() if v]
    for k, backend in enumerate(backends):
        xs = [i + (k - (len(backends) - 1) / 2) * width for i in range(len(items))]
        ys = [row.get(backend) or 0 for _label, row in items]
        bars = axes.bar(xs, [y if y > 0 else math.nan for y in ys], width, label=backend,
                        color=COLOURS.get(backend))
        for bar, y in zip(bars, ys):
            if y > 0:
                axes.annotate(f"{y:.3g}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                              fontsize=7, xytext=(0, 2), textcoords="offset points")
    axes.set_xticks(range(len(items)), [label for label, _row in items], fontsize=8)
    axes.set_yscale("log")
    if values:
        axes.set_ylim(min(values) / 2, max(values) * 3)
    axes.set_ylabel("frames per second (log scale)")
    machine = result.get("machine") or {}
    where = (machine.get("gpu") or {}).get("name") or f"{machine.get('cpus', '?')} CPUs"
    axes.set_title(f"latentmuse bench: {result['generator']}, {result['weights']} weights, {result['device']} "
                   f"({where}), batch {result['batch_size']}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    axes.grid(axis="y", which="both", alpha=0.3)
    axes.legend(title="backend")
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
