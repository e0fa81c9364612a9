"""Tests for utils/evaluation/metrics.py: hand-worked AP, matching rules, agreement with the COCO references."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from utils.evaluation.coco_json import coco_from_arrays, reference_map
from utils.evaluation.metrics import (
    MAP50,
    MAP50_95,
    MATCH_CHUNK_IMAGES,
    METRIC_KEYS,
    PRECISION,
    RECALL,
    ConfusionMatrix,
    DetectionMetrics,
    format_class_table,
    greedy_match,
    rank_within_class,
    sampled_precision,
)

BACKENDS = [name for name in ("pycocotools", "faster_coco_eval") if importlib.util.find_spec(name) is not None]


def random_boxes(rng: np.random.Generator, count: int, size: float = 400.0) -> np.ndarray:
    corner = rng.uniform(0, size, (count, 2))
    return np.c_[corner, corner + rng.uniform(2, size / 3, (count, 2))]


def jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float) -> np.ndarray:
    """Shifted copies of ``boxes`` that stay proper boxes (x2 > x1): COCO ignores negative-area detections."""
    moved = boxes + rng.normal(0, scale, boxes.shape)
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1)
    return moved


def random_case(seed: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Images with empty ground truth, no detections, crowded clusters, duplicates, stray classes and score ties."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(1, 7))
    tie_scores = seed % 3 == 0  # coarse scores exercise COCO's stable tie order
    ground_truth, detections = [], []
    for _ in range(int(rng.integers(1, 25))):
        count = int(rng.choice([0, 1, 3, 8, 20]))
        boxes = random_boxes(rng, count)
        if count and rng.random() < 0.3:  # a crowd: many boxes around one spot
            boxes = jitter(rng, np.repeat(boxes[:1], count, 0), 15)
        classes = rng.integers(0, num_classes, count)
        ground_truth.append(np.c_[classes, boxes])
        if rng.random() < 0.15:
            detections.append(np.zeros((0, 6)))
            continue
        kept = rng.random(count) < 0.8
        copies = int(rng.integers(1, 3))
        true_boxes = np.concatenate([jitter(rng, boxes[kept], rng.uniform(1, 12)) for _ in range(copies)])
        true_classes = np.tile(np.where(rng.random(kept.sum()) < 0.9, classes[kept], 0), copies)
        num_false = int(rng.integers(0, 15))
        # Class ids up to num_classes - 1 may have no ground truth anywhere; COCO drops such classes from mAP.
        false_classes = rng.integers(0, num_classes, num_false)
        boxes = np.r_[true_boxes, random_boxes(rng, num_false)]
        scores = rng.random(len(boxes))
        if tie_scores:
            scores = np.round(scores, 1)
        detections.append(np.c_[boxes, scores, np.r_[true_classes, false_classes]])
    return ground_truth, detections, num_classes


def our_results(ground_truth, detections, num_classes, max_detections=None) -> dict:
    metrics = DetectionMetrics(num_classes, max_detections_per_image=max_detections)
    for labels, predictions in zip(ground_truth, detections):
        metrics.update(predictions, labels)
    return metrics.compute()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(36))
def test_agrees_with_reference_evaluator(seed: int, backend: str) -> None:
    ground_truth, detections, num_classes = random_case(seed)
    ours = our_results(ground_truth, detections, num_classes)
    gt_dict, results = coco_from_arrays(ground_truth, detections, [str(index) for index in range(num_classes)])
    reference = reference_map(gt_dict, results, backend, max_detections=10_000)
    assert ours[MAP50] == pytest.approx(reference[MAP50], abs=1e-3)
    assert ours[MAP50_95] == pytest.approx(reference[MAP50_95], abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_agrees_with_reference_across_matching_chunks(backend: str) -> None:
    # Several hundred images: more than one matching chunk, and images of very different sizes in each.
    cases = [random_case(seed) for seed in range(100, 125)]
    ground_truth = [labels for case in cases for labels in case[0]]
    detections = [predictions for case in cases for predictions in case[1]]
    assert len(ground_truth) > 2 * MATCH_CHUNK_IMAGES
    ours = our_results(ground_truth, detections, 6)
    gt_dict, results = coco_from_arrays(ground_truth, detections, [str(index) for index in range(6)])
    reference = reference_map(gt_dict, results, backend, max_detections=10_000)
    assert ours[MAP50] == pytest.approx(reference[MAP50], abs=1e-3)
    assert ours[MAP50_95] == pytest.approx(reference[MAP50_95], abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("seed", "max_detections"), [(1, 1), (2, 2), (4, 3), (7, 5)])
def test_max_detections_truncates_per_image_and_class_like_coco(seed: int, max_detections: int, backend: str) -> None:
    ground_truth, detections, num_classes = random_case(seed)
    ours = our_results(ground_truth, detections, num_classes, max_detections)
    untruncated = our_results(ground_truth, detections, num_classes)
    gt_dict, results = coco_from_arrays(ground_truth, detections, [str(index) for index in range(num_classes)])
    reference = reference_map(gt_dict, results, backend, max_detections=max_detections)
    assert ours[MAP50_95] == pytest.approx(reference[MAP50_95], abs=1e-3)
    assert ours[MAP50_95] != pytest.approx(untruncated[MAP50_95], abs=1e-6)


def test_hand_worked_average_precision() -> None:
    # Two objects; detections in score order: hit, miss, hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    ground_truth = np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], dtype=np.float64)
    detections = np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 20, 30, 30, 0.7, 0]])
    results = our_results([ground_truth], [detections], 1)
    expected = (51 * 1.0 + 50 * 2 / 3) / 101  # recall points 0..0.50 see precision 1, the other 50 see 2/3
    assert results[MAP50] == pytest.approx(expected)
    assert results[MAP50_95] == pytest.approx(expected)


def test_perfect_detections_score_one_and_missing_detections_zero() -> None:
    rng = np.random.default_rng(0)
    ground_truth = [np.c_[rng.integers(0, 3, 5), random_boxes(rng, 5)] for _ in range(4)]
    perfect = [np.c_[labels[:, 1:], np.full(len(labels), 0.9), labels[:, 0]] for labels in ground_truth]
    results = our_results(ground_truth, perfect, 3)
    assert [results[key] for key in METRIC_KEYS] == pytest.approx([1.0, 1.0, 1.0, 1.0], abs=1e-3)
    empty = our_results(ground_truth, [np.zeros((0, 6))] * 4, 3)
    assert [empty[key] for key in METRIC_KEYS] == [0.0, 0.0, 0.0, 0.0]


def test_no_ground_truth_gives_zero_and_no_classes() -> None:
    results = our_results([np.zeros((0, 5))], [np.array([[0, 0, 5, 5, 0.5, 0]])], 2)
    assert results[MAP50_95] == 0.0 and results["per_class"] == []
    assert our_results([], [], 2)[MAP50] == 0.0


def test_classes_without_ground_truth_do_not_count() -> None:
    ground_truth = np.array([[0, 0, 0, 10, 10]], dtype=np.float64)
    detections = np.array([[0, 0, 10, 10, 0.9, 0], [40, 40, 50, 50, 0.95, 1]])
    results = our_results([ground_truth], [detections], 2)
    assert results[MAP50_95] == pytest.approx(1.0)
    assert [entry["class"] for entry in results["per_class"]] == [0]


def test_higher_score_takes_the_better_ground_truth() -> None:
    # Detection 0 overlaps both objects, best with object 1; detection 1 then must take object 0.
    ious = [np.array([[0.6, 0.9], [0.7, 0.0]])]
    matched = greedy_match(ious)[0]
    assert matched[:, 0].tolist() == [True, True]  # IoU 0.5: both match
    assert matched[:, 6].tolist() == [True, False]  # IoU 0.8: only the first (with object 1)


def test_equal_ious_go_to_the_last_ground_truth_like_cocoeval() -> None:
    matched = greedy_match([np.array([[0.8, 0.8], [0.8, 0.0]])])[0]
    assert matched[:, 0].tolist() == [True, True]  # the first took object 1, leaving object 0 to the second


def test_torch_and_numpy_inputs_agree() -> None:
    ground_truth, detections, num_classes = random_case(5)
    from_numpy = our_results(ground_truth, detections, num_classes)
    from_torch = our_results(
        [torch.from_numpy(labels).float() for labels in ground_truth],
        [torch.from_numpy(predictions).float() for predictions in detections],
        num_classes,
    )
    assert from_torch[MAP50_95] == pytest.approx(from_numpy[MAP50_95], abs=1e-4)


def test_precision_and_recall_at_best_f1() -> None:
    ground_truth = np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], dtype=np.float64)
    # One true hit at 0.9, then a false positive at 0.2.
    detections = np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.2, 0]])
    results = our_results([ground_truth], [detections], 1)
    # The best F1 lies between the two scores, where yolov5's curves interpolate linearly between detections.
    assert 0.9 < results[PRECISION] < 1.0
    assert results[RECALL] == pytest.approx(0.5, abs=1e-3)


def test_update_rejects_unknown_class_ids() -> None:
    with pytest.raises(ValueError, match="class ids"):
        DetectionMetrics(2).update(np.array([[0, 0, 5, 5, 0.5, 2]]), np.zeros((0, 5)))


@pytest.mark.parametrize(
    ("classes", "expected"), [([0, 0, 1, 0, 1], [0, 1, 0, 2, 1]), ([], []), ([3, 3, 3], [0, 1, 2])]
)
def test_rank_within_class(classes: list[int], expected: list[int]) -> None:
    assert rank_within_class(np.array(classes, dtype=np.int64)).tolist() == expected


def test_sampled_precision_without_detections_is_zero() -> None:
    assert sampled_precision(np.zeros((0, 10), bool), 3).sum() == 0


def test_confusion_matrix_counts_matches_misses_and_false_positives() -> None:
    matrix = ConfusionMatrix(2)
    ground_truth = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 40, 40, 50, 50]], dtype=np.float64)
    detections = np.array(
        [
            [0, 0, 10, 10, 0.9, 0],  # correct class 0
            [20, 20, 30, 30, 0.8, 0],  # class 1 object predicted as class 0
            [70, 70, 80, 80, 0.7, 1],  # background predicted as class 1
            [40, 40, 50, 50, 0.1, 1],  # below the 0.25 confidence: object 2 counts as missed
        ]
    )
    matrix.update(detections, ground_truth)
    assert matrix.matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]


def test_per_class_table_lists_all_and_each_class() -> None:
    ground_truth, detections, num_classes = random_case(3)
    metrics = DetectionMetrics(num_classes, names=[f"class_{index}" for index in range(num_classes)])
    for labels, predictions in zip(ground_truth, detections):
        metrics.update(predictions, labels)
    results = metrics.compute()
    table = format_class_table(results).splitlines()
    assert table[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert table[1].split()[:3] == ["all", str(len(ground_truth)), str(results["num_instances"])]
    assert [line.split()[0] for line in table[2:]] == [entry["name"] for entry in results["per_class"]]
