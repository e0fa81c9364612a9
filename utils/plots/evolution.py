"""Evolution plots: evolve.png (fitness against each evolved hyp) and fitness.png (fitness by child)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from utils.files import write_atomic


def point_density(x: np.ndarray, y: np.ndarray, bins: int = 20) -> np.ndarray:
    """How crowded each point's neighbourhood is: the count of its cell in a 2-D histogram (0 for NaN points)."""
    density = np.zeros(len(x))
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2:
        return density + finite
    counts, x_edges, y_edges = np.histogram2d(x[finite], y[finite], bins=bins)
    x_cell = np.clip(np.digitize(x[finite], x_edges[1:-1]), 0, bins - 1)
    y_cell = np.clip(np.digitize(y[finite], y_edges[1:-1]), 0, bins - 1)
    density[finite] = counts[x_cell, y_cell]
    return density


def grid_shape(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels, roughly square and wider than tall (any number of keys)."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / columns), columns


def save_figure(figure: object, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def new_figure(rows: int, columns: int, panel_size: float) -> tuple[object, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=(panel_size * columns, panel_size * rows), squeeze=False)
    return figure, axes


def plot_evolve(children: Sequence[FrozenTrial], keys: Sequence[str], path: Path) -> None:
    """One panel per evolved key: value on x, fitness on y, coloured by density; the best child is a star.

    A key whose values are names (a choice gene such as ``optimizer``) gets a strip per name with its median.
    """
    import matplotlib.pyplot as plt

    fitness = np.array([child.value for child in children], dtype=float)
    best = int(np.argmax(fitness))
    rows, columns = grid_shape(len(keys))
    figure, axes = new_figure(rows, columns, panel_size=2.5)
    for panel, key in zip(axes.flat, keys):
        raw = [child.user_attrs["hyp"].get(key, math.nan) for child in children]
        if any(isinstance(value, str) for value in raw):
            draw_choice_panel(panel, key, [str(value) for value in raw], fitness, best)
            continue
        values = np.array(raw, dtype=float)
        panel.scatter(values, fitness, c=point_density(values, fitness), cmap="viridis", s=12, alpha=0.8)
        panel.plot(values[best], fitness[best], "k*", markersize=12)
        panel.set_title(f"{key} = {values[best]:.3g}", fontsize=9)
        panel.tick_params(labelsize=7)
    for panel in list(axes.flat)[len(keys) :]:
        panel.axis("off")
    # tight_layout costs seconds on a large grid; fixed spacing fits the short titles and tick labels.
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.05, top=0.95, hspace=0.45, wspace=0.35)
    save_figure(figure, path)
    plt.close(figure)


def draw_choice_panel(panel: object, key: str, names: Sequence[str], fitness: np.ndarray, best: int) -> None:
    """Fitness per choice: each child a dot, jittered within its choice's strip, a bar at each choice's median."""
    categories = sorted(set(names))
    position = np.array([categories.index(name) for name in names], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(names))  # fixed: the same study draws the same png
    panel.scatter(position + jitter, fitness, s=12, alpha=0.8)
    for index in range(len(categories)):
        median = float(np.median(fitness[position == index]))
        panel.plot([index - 0.3, index + 0.3], [median, median], color="k", linewidth=1)
    panel.plot(position[best] + jitter[best], fitness[best], "k*", markersize=12)
    panel.set_xticks(range(len(categories)), categories)
    panel.set_xlim(-0.5, len(categories) - 0.5)
    panel.set_title(f"{key} = {names[best]}", fontsize=9)
    panel.tick_params(labelsize=7)


def plot_fitness(trials: Sequence[FrozenTrial], path: Path, overlay: NoiseOverlay | None = None) -> None:
    """Fitness against child index with the running best.

    Completed children are dots. Pruned children are grey crosses at their last reported fitness. Failed
    children have no fitness: they are red triangles along the bottom edge of the plot. With an overlay, the
    base's mean +/- the study's noise sd is a shaded band (children inside it are indistinguishable from the base
    by one run), each child's extra seeds are small dots above it, and the confirmed winner is ringed.
    """
    import matplotlib.pyplot as plt

    trials = sorted(trials, key=lambda trial: trial.number)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None]
    pruned = [trial for trial in trials if trial.state == TrialState.PRUNED and trial.intermediate_values]
    failed = [trial for trial in trials if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus")]
    figure, axes = new_figure(1, 1, panel_size=5)
    panel = axes[0, 0]
    if complete:
        numbers = np.array([trial.number for trial in complete])
        values = np.array([trial.value for trial in complete], dtype=float)
        panel.plot(numbers, values, "o", markersize=4, label="completed")
        panel.step(numbers, np.maximum.accumulate(values), where="post", color="k", label="best so far")
    if pruned:
        last_values = [trial.intermediate_values[max(trial.intermediate_values)] for trial in pruned]
        panel.plot([trial.number for trial in pruned], last_values, "x", color="grey", label="pruned")
    if failed:
        bottom = panel.get_ylim()[0] if complete or pruned else 0.0
        panel.plot([trial.number for trial in failed], [bottom] * len(failed), "v", color="red", label="failed")
    if overlay is not None:
        draw_noise(panel, overlay)
    panel.set_xlabel("child")
    panel.set_ylabel("fitness")
    if complete or pruned or failed:
        panel.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


@dataclass(frozen=True)
class NoiseOverlay:
    """What fitness.png adds from the evolution's trust report (plain values: plots know nothing of evolution)."""

    base_mean: float | None = None
    noise_sd: float | None = None  # the study's pooled seed noise; None while unknown
    repeats: tuple[tuple[int, float], ...] = ()  # (child, fitness) of runs with other seeds
    winner: tuple[int, float] | None = None  # (child, mean over its fresh seeds) once confirmed


def draw_noise(panel: object, overlay: NoiseOverlay) -> None:
    """The noise band around the base's mean, the extra seeds of repeated children, and the confirmed winner."""
    if overlay.base_mean is not None and overlay.noise_sd is not None:
        low, high = overlay.base_mean - overlay.noise_sd, overlay.base_mean + overlay.noise_sd
        panel.axhspan(low, high, color="tab:orange", alpha=0.2, label=f"base mean ± noise sd ({overlay.noise_sd:.2g})")
    if overlay.repeats:
        numbers, values = zip(*overlay.repeats)
        panel.plot(numbers, values, ".", color="tab:green", markersize=5, label="other seeds")
    if overlay.winner is not None:
        panel.plot(*overlay.winner, "o", markersize=12, markerfacecolor="none", markeredgecolor="k",
                   label="confirmed winner (mean)")  # fmt: skip


def plot_fidelity(
    numbers: Sequence[int], short: Sequence[float], long: Sequence[float], title: str, long_label: str, path: Path
) -> None:
    """fidelity.png: each retrained child's short fitness (x) against its full-length fitness (y), labelled."""
    import matplotlib.pyplot as plt

    figure, axes = new_figure(1, 1, panel_size=5)
    panel = axes[0, 0]
    panel.plot(short, long, "o")
    for number, x, y in zip(numbers, short, long):
        panel.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    panel.set_title(title, fontsize=10)
    panel.set_xlabel("fitness, child length")
    panel.set_ylabel(long_label)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
