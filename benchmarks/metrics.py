"""Times our mAP against pycocotools and faster-coco-eval (evaluate + accumulate) on the same synthetic data.

Usage: python benchmarks/metrics.py [--images 500] [--detections 300] [--classes 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib  # noqa: E402
import io  # noqa: E402

from utils.evaluation.coco_json import build_evaluator, coco_from_arrays  # noqa: E402
from utils.evaluation.metrics import MAP50, MAP50_95, DetectionMetrics  # noqa: E402


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corner = rng.uniform(0, 540, (count, 2))
    return np.c_[corner, corner + rng.uniform(4, 200, (count, 2))]


def jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float) -> np.ndarray:
    moved = boxes + rng.normal(0, scale, boxes.shape)
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1)
    return moved


def synthetic_dataset(
    num_images: int, detections_per_image: int, num_classes: int, crowded: bool, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image 0-20 objects (20 when ``crowded``) and ``detections_per_image`` detections.

    Sparse: one jittered detection per object, the rest random boxes (few can match). Crowded: every detection
    is a jittered copy of some object, as raw low-threshold NMS output looks, so every one enters the matching.
    """
    rng = np.random.default_rng(seed)
    ground_truth, detections = [], []
    for _ in range(num_images):
        count = 20 if crowded else int(rng.integers(0, 21))
        boxes = random_boxes(rng, count)
        classes = rng.integers(0, num_classes, count)
        ground_truth.append(np.c_[classes, boxes])
        if crowded:
            source = rng.integers(0, count, detections_per_image)
            predicted = jitter(rng, boxes[source], 8)
            scores = rng.random(detections_per_image)
            predicted_classes = np.where(rng.random(detections_per_image) < 0.8, classes[source], 0)
        else:
            num_random = detections_per_image - count
            predicted = np.r_[jitter(rng, boxes, 4), random_boxes(rng, num_random)]
            scores = np.r_[rng.uniform(0.3, 1.0, count), rng.uniform(0.0, 0.6, num_random)]
            predicted_classes = np.r_[classes, rng.integers(0, num_classes, num_random)]
        detections.append(np.c_[predicted, scores, predicted_classes])
    return ground_truth, detections


def ours(ground_truth: list[np.ndarray], detections: list[np.ndarray], num_classes: int) -> dict[str, float]:
    """Update + compute of our accumulator over every image."""
    metrics = DetectionMetrics(num_classes)
    for labels, predictions in zip(ground_truth, detections):
        metrics.update(predictions, labels)
    return metrics.compute()


def reference_run(evaluator) -> dict[str, float]:
    """evaluate + accumulate of a COCOeval, then mAP over classes with ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]
    valid = precision > -1
    return {MAP50: float(precision[0][valid[0]].mean()), MAP50_95: float(precision[valid].mean())}


def best_time(function: Callable[[], dict], repeats: int) -> tuple[float, dict]:
    """Fastest wall time of ``repeats`` calls and the last result."""
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare(ground_truth: list[np.ndarray], detections: list[np.ndarray], num_classes: int, repeats: int) -> None:
    """Time and print ours against both reference evaluators on one data set."""
    gt_dict, results = coco_from_arrays(ground_truth, detections, [str(index) for index in range(num_classes)])
    max_dets = max(len(predictions) for predictions in detections)  # no truncation on either side
    # The reference evaluators load their json indexes outside the timer: we time evaluate + accumulate only.
    runs = {"ours (update+compute)": lambda: ours(ground_truth, detections, num_classes)}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = build_evaluator(backend, gt_dict, results, max_dets)
        runs[f"{backend} (evaluate+accumulate)"] = lambda evaluator=evaluator: reference_run(evaluator)
    timings = {}
    for name, function in runs.items():
        seconds, result = best_time(function, repeats)
        timings[name] = seconds
        print(f"  {name:38s} {seconds:8.3f} s  mAP50 {result[MAP50]:.6f}  mAP50-95 {result[MAP50_95]:.6f}")
    our_time = timings["ours (update+compute)"]
    for name, seconds in list(timings.items())[1:]:
        print(f"  speed-up over {name}: {seconds / our_time:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--detections", type=int, default=300)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for crowded in (False, True):
        print(f"{'crowded' if crowded else 'sparse'}: {args.images} images x {args.detections} detections, "
              f"{args.classes} classes, best of {args.repeats}")  # fmt: skip
        ground_truth, detections = synthetic_dataset(args.images, args.detections, args.classes, crowded)
        compare(ground_truth, detections, args.classes, args.repeats)


if __name__ == "__main__":
    main()
