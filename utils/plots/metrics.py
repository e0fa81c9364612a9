"""Validation plots: PR curve, F1/P/R versus confidence, and the confusion matrix, as PNGs in a run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.evaluation.metrics import CONFIDENCE_POINTS, RECALL_POINTS, DetectionMetrics

MAX_LEGEND_CLASSES = 20  # beyond this a per-class legend hides the plot, as in yolov5
MAX_ANNOTATED_CLASSES = 30
PLOT_DPI = 120


def _figure(size: tuple[float, float]):
    # A bare Figure renders through Agg on savefig without touching pyplot's global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=size, tight_layout=True)


def plot_pr_curve(
    recall: np.ndarray, precision: np.ndarray, names: list[str], average_precision: np.ndarray, path: Path
) -> Path:
    """precision (C, R) sampled at ``recall`` (R,), IoU 0.5; one line per class plus the class mean."""
    figure = _figure((9, 6))
    axes = figure.add_subplot()
    show_legend = 0 < len(names) <= MAX_LEGEND_CLASSES
    for row, name in enumerate(names):
        label = f"{name} {average_precision[row]:.3f}" if show_legend else None
        axes.plot(recall, precision[row], linewidth=1, label=label)
    if len(names):
        mean_label = f"all classes {average_precision.mean():.3f} mAP@0.5"
        axes.plot(recall, precision.mean(0), linewidth=3, color="blue", label=mean_label)
    _finish(axes, "Recall", "Precision", "Precision-Recall Curve")
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def plot_confidence_curve(values: np.ndarray, names: list[str], ylabel: str, path: Path) -> Path:
    """values (C, 1000) at CONFIDENCE_POINTS; one line per class and the class mean with its peak."""
    figure = _figure((9, 6))
    axes = figure.add_subplot()
    show_legend = 0 < len(names) <= MAX_LEGEND_CLASSES
    for row, name in enumerate(names):
        axes.plot(CONFIDENCE_POINTS, values[row], linewidth=1, label=name if show_legend else None)
    if len(names):
        mean = values.mean(0)
        peak = int(mean.argmax())
        label = f"all classes {mean[peak]:.2f} at {CONFIDENCE_POINTS[peak]:.3f}"
        axes.plot(CONFIDENCE_POINTS, mean, linewidth=3, color="blue", label=label)
    _finish(axes, "Confidence", ylabel, f"{ylabel}-Confidence Curve")
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], path: Path) -> Path:
    """``matrix[predicted, true]`` with background last, each column normalised by its true-class count."""
    column_sums = matrix.sum(0, keepdims=True)
    normalised = np.divide(matrix, column_sums, out=np.zeros(matrix.shape), where=column_sums > 0)
    labels = [*names, "background"]
    figure = _figure((12, 9))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes)
    if len(names) < MAX_ANNOTATED_CLASSES:
        axes.set_xticks(range(len(labels)), labels, rotation=90)
        axes.set_yticks(range(len(labels)), labels)
        for (row, column), value in np.ndenumerate(normalised):
            if value >= 0.005:
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_xlabel("True")
    axes.set_ylabel("Predicted")
    axes.set_title("Confusion Matrix")
    figure.savefig(path, dpi=PLOT_DPI)
    return path


def plot_validation(metrics: DetectionMetrics, save_dir: Path) -> list[Path]:
    """Write PR_curve.png, F1_curve.png, P_curve.png, R_curve.png and confusion_matrix.png (yolov5's names)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    evaluation = metrics.evaluate()
    names = [metrics.names[class_id] for class_id in evaluation.class_ids]
    pr_at_50 = evaluation.pr_sampled[:, 0]
    return [
        plot_pr_curve(RECALL_POINTS, pr_at_50, names, evaluation.ap[:, 0], save_dir / "PR_curve.png"),
        plot_confidence_curve(evaluation.f1_curve, names, "F1", save_dir / "F1_curve.png"),
        plot_confidence_curve(evaluation.precision_curve, names, "Precision", save_dir / "P_curve.png"),
        plot_confidence_curve(evaluation.recall_curve, names, "Recall", save_dir / "R_curve.png"),
        plot_confusion_matrix(metrics.confusion.matrix, metrics.names, save_dir / "confusion_matrix.png"),
    ]


def _finish(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
