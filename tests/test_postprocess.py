"""Tests for utils/evaluation/postprocess.py: thresholds, class-aware suppression, caps and multi-label output."""

from __future__ import annotations

import pytest
import torch

from utils.evaluation.postprocess import non_max_suppression


def prediction_rows(rows: list[tuple[float, float, float, float, float, list[float]]]) -> torch.Tensor:
    """[(x, y, w, h, objectness, class scores)] -> (1, N, 5 + nc) as the model's eval output."""
    return torch.tensor([[*row[:5], *row[5]] for row in rows], dtype=torch.float32)[None]


def test_overlapping_boxes_of_different_classes_both_survive() -> None:
    prediction = prediction_rows([(50, 50, 20, 20, 0.9, [0.9, 0.1]), (51, 50, 20, 20, 0.8, [0.1, 0.9])])
    (output,) = non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45)
    assert sorted(output[:, 5].tolist()) == [0.0, 1.0]


def test_overlapping_boxes_of_one_class_keep_the_best() -> None:
    prediction = prediction_rows([(50, 50, 20, 20, 0.8, [0.9]), (51, 50, 20, 20, 0.9, [0.9]), (90, 90, 5, 5, 0.5, [1])])
    (output,) = non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45)
    assert output[:, 4].tolist() == pytest.approx([0.81, 0.5])
    assert output[0, :4].tolist() == pytest.approx([41, 40, 61, 60])  # xywh became xyxy


def test_confidence_is_objectness_times_class_score_and_thresholded() -> None:
    prediction = prediction_rows([(10, 10, 4, 4, 0.5, [0.6]), (30, 30, 4, 4, 0.5, [0.4])])
    (output,) = non_max_suppression(prediction, conf_thres=0.25)
    assert output[:, 4].tolist() == pytest.approx([0.3])


@pytest.mark.parametrize("max_det", [1, 5, 30])
def test_max_det_caps_and_keeps_the_highest_scores(max_det: int) -> None:
    generator = torch.Generator().manual_seed(0)
    num_boxes = 200
    centres = torch.rand(num_boxes, 2, generator=generator) * 1000
    # Small, far-apart boxes: nothing is suppressed, so only the cap limits the output.
    prediction = torch.cat((centres, torch.full((num_boxes, 2), 1.0), torch.rand(num_boxes, 3, generator=generator)), 1)
    (output,) = non_max_suppression(prediction[None], conf_thres=0.0, iou_thres=0.5, max_det=max_det)
    assert len(output) == max_det
    best = (prediction[:, 4:5] * prediction[:, 5:]).max(1).values.topk(max_det).values
    assert output[:, 4] == pytest.approx(best)


def test_multi_label_gives_one_row_per_class_above_threshold() -> None:
    prediction = prediction_rows([(50, 50, 20, 20, 1.0, [0.9, 0.6, 0.1])])
    (single,) = non_max_suppression(prediction, conf_thres=0.25)
    (multiple,) = non_max_suppression(prediction, conf_thres=0.25, multi_label=True)
    assert single[:, 5].tolist() == [0.0]
    assert multiple[:, 5].tolist() == [0.0, 1.0]


def test_classes_filter_and_batch_of_empty_images() -> None:
    prediction = torch.cat(
        (prediction_rows([(50, 50, 20, 20, 0.9, [0.9, 0.1]), (90, 90, 20, 20, 0.9, [0.1, 0.9])]), torch.zeros(1, 2, 7))
    )
    filtered, empty = non_max_suppression(prediction, conf_thres=0.25, classes=[1])
    assert filtered[:, 5].tolist() == [1.0]
    assert empty.shape == (0, 6)


def test_max_nms_keeps_only_the_most_confident_candidates() -> None:
    prediction = prediction_rows([(10.0 * index, 10, 2, 2, 0.1 + index / 100, [1.0]) for index in range(10)])
    (output,) = non_max_suppression(prediction, conf_thres=0.01, max_nms=3)
    assert output[:, 4].tolist() == pytest.approx([0.19, 0.18, 0.17])
