"""Training-run plots: lr.png (the learning rate of each parameter group over the run)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_lr(epoch_axis: Sequence[float], learning_rates: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Write lr.png: one line per parameter group, x in epochs (fractions inside an epoch), warmup included.

    The values are held until the next point (a step plot), which is how the optimizer sees them; feed it
    ``utils.training.schedule.learning_rate_curve(...)`` for the whole run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(figsize=(8, 5), tight_layout=True)
    line_styles = ("-", "--", ":")  # after warmup the groups coincide; dashes keep each one visible
    for index, (group, rates) in enumerate(learning_rates.items()):
        style = line_styles[index % len(line_styles)]
        axes.plot(epoch_axis, rates, drawstyle="steps-post", linestyle=style, linewidth=1.5, label=group)
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.set_title("learning rate per parameter group")
    axes.grid(alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
