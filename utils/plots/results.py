"""results.png: every results.csv column against epoch, one panel each."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PANELS = (
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
)


def read_results(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a yolov5-style results.csv by (stripped) name."""
    lines = [line for line in Path(csv_path).read_text().splitlines() if line.strip()]
    names = [name.strip() for name in lines[0].split(",")]
    rows = np.array([[float(value) for value in line.split(",")] for line in lines[1:]], dtype=float).reshape(
        -1, len(names)
    )
    return {name: rows[:, index] for index, name in enumerate(names)}


def plot_results(csv_path: str | Path, path: str | Path) -> Path:
    """Draw the loss and metric panels of ``csv_path`` into ``path`` (2 rows of 5, yolov5's layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = read_results(csv_path)
    figure, axes = plt.subplots(2, 5, figsize=(12, 6), tight_layout=True)
    for axis, name in zip(axes.ravel(), PANELS):
        values = columns.get(name)
        if values is not None:
            axis.plot(columns["epoch"], values, marker=".", linewidth=2, markersize=8)
        axis.set_title(name, fontsize=12)
    path = Path(path)
    figure.savefig(path, dpi=200)
    plt.close(figure)
    return path
