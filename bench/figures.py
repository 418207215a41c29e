"""bench/compare.py's figures, after the paper's Figures 4-8, drawn from a results.json (compare.py's output):

    loss.png        training loss against samples seen, one panel per batch size, one colour per system, one thin
                    line per repeat (each point the mean loss of a run of consecutive steps: runtime.metrics.loss_curve)
    held_out.png    held-out AUC (top row) and accuracy (bottom row) against samples seen, per batch size: the
                    final parameters of every repeat, one marker each. There is no evaluation during training: it
                    would take time from the runs whose samples/s the comparison measures.
    throughput.png  samples/s per batch size and system: bars at the median over the repeats, error bars from the
                    slowest to the fastest repeat

    python bench/figures.py RESULTS.json [--out DIR]    # redraw from an earlier run (default: beside the file)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

COLOURS = {"ceiling": "tab:gray", "tf-ps": "tab:orange", "ours-insecure": "tab:blue", "ours-ratls": "tab:green"}
FILES = {"loss": "loss.png", "held_out": "held_out.png", "throughput": "throughput.png"}
DPI = 100


def _ok_runs(results: dict[str, Any], batch: int, system: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["batch_size"] == batch and r["system"] == system and r["error"] is None]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _systems(results: dict[str, Any]) -> list[str]:
    """The systems of the run, in the order compare.py ran them."""
    return list(dict.fromkeys(r["system"] for r in results["runs"]))


def _panels(columns: int, rows: int = 1) -> tuple[Figure, list[list[Any]]]:
    figure = Figure(figsize=(max(7.0, 5.5 * columns), 3.8 * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [list(row) for row in axes]


def loss_figure(results: dict[str, Any]) -> Figure:
    batches = results["batch_sizes"]
    figure, axes = _panels(len(batches))
    for ax, batch in zip(axes[0], batches, strict=True):
        for system in _systems(results):
            curves = [r["loss_curve"] for r in _ok_runs(results, batch, system) if r["loss_curve"]]
            for i, curve in enumerate(curves):
                x, y = zip(*curve, strict=True)
                ax.plot(x, y, color=COLOURS.get(system), linewidth=1.0, alpha=0.7,
                        label=system if i == 0 else None)
        ax.set(title=f"training loss, batch {batch} per worker", xlabel="samples seen", ylabel="training loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return figure


def held_out_figure(results: dict[str, Any]) -> Figure:
    batches = results["batch_sizes"]
    figure, axes = _panels(len(batches), rows=2)
    metrics = (("held_out_auc", "held-out AUC"), ("held_out_accuracy", "held-out accuracy"))
    for row, (key, name) in zip(axes, metrics, strict=True):
        for ax, batch in zip(row, batches, strict=True):
            for system in _systems(results):
                points = [(r["samples_seen"], r[key]) for r in _ok_runs(results, batch, system)
                          if len(_finite([r["samples_seen"], r[key]])) == 2]
                if points:
                    x, y = zip(*points, strict=True)
                    ax.plot(x, y, color=COLOURS.get(system), marker="o", linestyle="none", label=system)
            ax.set(title=f"{name}, final parameters, batch {batch}", xlabel="samples seen", ylabel=name)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
    figure.suptitle("one marker per repeat; no evaluation during training\n(it would perturb the samples/s measured)",
                    fontsize="medium")
    return figure


def throughput_figure(results: dict[str, Any]) -> Figure:
    batches = results["batch_sizes"]
    systems = _systems(results)
    figure, axes = _panels(1)
    ax = axes[0][0]
    width = 0.8 / len(systems)
    for s, system in enumerate(systems):
        medians, below, above = [], [], []
        for batch in batches:
            rates = _finite([r["samples_per_s"] for r in _ok_runs(results, batch, system)])
            median = statistics.median(rates) if rates else 0.0
            medians.append(median)
            below.append(median - min(rates) if rates else 0.0)
            above.append(max(rates) - median if rates else 0.0)
        ax.bar([b + (s - (len(systems) - 1) / 2) * width for b in range(len(batches))], medians, width,
               yerr=[below, above], capsize=3, color=COLOURS.get(system), label=system)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set(title="training samples/s: median, error bars min..max over repeats", ylabel="samples/s")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return figure


def draw(results: dict[str, Any]) -> dict[str, Figure]:
    """The three figures of a compare.py run, by name (the keys of FILES)."""
    return {"loss": loss_figure(results), "held_out": held_out_figure(results),
            "throughput": throughput_figure(results)}


def save(figures: dict[str, Figure], out: Path) -> list[Path]:
    """Write each figure as PNG into out; returns the paths."""
    paths = []
    for name, figure in figures.items():
        path = out / FILES[name]
        figure.savefig(path, format="png")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/figures.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results.json written by bench/compare.py")
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: the results file's)")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        drawn = draw(results)
    except (OSError, ValueError) as error:
        print(f"figures: error: {args.results}: {error}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as error:
        print(f"figures: error: {args.results}: not a results.json of this compare.py (missing or wrong {error})",
              file=sys.stderr)
        return 1
    for path in save(drawn, args.out or args.results.parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
