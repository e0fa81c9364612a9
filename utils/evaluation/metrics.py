"""Detection metrics: metric names, COCO-style AP/mAP, yolov5-style P/R at best F1, and the confusion matrix.

AP follows pycocotools' COCOeval for ``iouType="bbox"`` with area range "all" and no crowd annotations
(we have neither ``iscrowd`` nor area ranges): per image and class, detections in descending score order take
the best-IoU unmatched ground truth at each of 10 IoU thresholds 0.50:0.05:0.95; per class, the precision
envelope is sampled at 101 recall points with ``searchsorted(side="left")`` and averaged; mAP is the mean
over classes that have ground truth. COCOeval keeps ``maxDets=100`` top detections per image *and class*;
we keep everything the NMS produced (``max_det=300`` per image) unless ``max_detections_per_image`` is set,
which truncates per image and class exactly like COCOeval does (100 reproduces COCO's number).
Boxes must be proper (x2 >= x1, y2 >= y1): COCOeval silently ignores unmatched negative-area detections (their
area falls outside the "all" range), while we count them as false positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PRECISION = "metrics/precision"
RECALL = "metrics/recall"
MAP50 = "metrics/mAP_0.5"
MAP50_95 = "metrics/mAP_0.5:0.95"
VAL_BOX_LOSS, VAL_OBJ_LOSS, VAL_CLS_LOSS = "val/box_loss", "val/obj_loss", "val/cls_loss"
TRAIN_BOX_LOSS, TRAIN_OBJ_LOSS, TRAIN_CLS_LOSS = "train/box_loss", "train/obj_loss", "train/cls_loss"
METRIC_KEYS = (PRECISION, RECALL, MAP50, MAP50_95)
VAL_LOSS_KEYS = (VAL_BOX_LOSS, VAL_OBJ_LOSS, VAL_CLS_LOSS)
TRAIN_LOSS_KEYS = (TRAIN_BOX_LOSS, TRAIN_OBJ_LOSS, TRAIN_CLS_LOSS)
METRIC_ALIASES = {"P": PRECISION, "R": RECALL, "mAP50": MAP50, "mAP50-95": MAP50_95}

# Same construction as COCOeval.Params so the float values agree bit for bit.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
CONFIDENCE_POINTS = np.linspace(0, 1, 1000)
MATCH_CHUNK_IMAGES = 128


def _as_numpy(array: np.ndarray | torch.Tensor, columns: int) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64).reshape(-1, columns)


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of (n, 4) and (m, 4) xyxy boxes -> (n, m) float64, without eps, as COCO's maskApi computes it."""
    (x1, y1, x2, y2), (u1, v1, u2, v2) = boxes1.T[:, :, None], boxes2.T[:, None, :]
    inter_width = np.minimum(x2, u2) - np.maximum(x1, u1)
    inter_height = np.minimum(y2, v2) - np.maximum(y1, v1)
    inter = np.clip(inter_width, 0, None) * np.clip(inter_height, 0, None)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1[:, None] + area2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def rank_within_class(classes: np.ndarray) -> np.ndarray:
    """For rows already in score order, the 0-based position of each row among rows of its own class."""
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_classes)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(classes)]))
    ranks = np.empty(len(classes), dtype=np.int64)
    ranks[order] = np.arange(len(classes)) - run_start
    return ranks


def greedy_match(candidate_ious: list[np.ndarray]) -> list[np.ndarray]:
    """COCO greedy matching for many images at once.

    candidate_ious: per image (d, m) IoU of detections (in descending score order) to ground truth, zero across
    classes. Returns per image (d, T) bool: matched at each IoU threshold. Detection k of every image is
    processed in the same step, all thresholds together, so the Python loop runs max(d) times per chunk.
    """
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    num_images = len(candidate_ious)
    max_dets = max((iou.shape[0] for iou in candidate_ious), default=0)
    max_gts = max((iou.shape[1] for iou in candidate_ious), default=0)
    if max_dets == 0 or max_gts == 0:
        return [np.zeros((iou.shape[0], len(thresholds)), bool) for iou in candidate_ious]
    padded = np.full((num_images, max_dets, max_gts), -1.0)
    for index, iou in enumerate(candidate_ious):
        padded[index, : iou.shape[0], : iou.shape[1]] = iou
    gt_taken = np.zeros((num_images, len(thresholds), max_gts), bool)
    matched = np.zeros((num_images, max_dets, len(thresholds)), bool)
    image_index, threshold_index = np.ogrid[:num_images, : len(thresholds)]
    for k in range(max_dets):
        available = np.where(gt_taken, -1.0, padded[:, None, k, :])
        # COCOeval keeps the last ground truth among equal best IoUs, hence the argmax over the reversed axis.
        best = max_gts - 1 - available[..., ::-1].argmax(-1)
        hit = available[image_index, threshold_index, best] >= thresholds
        gt_taken[image_index, threshold_index, best] |= hit
        matched[:, k] = hit
    return [matched[index, : iou.shape[0]] for index, iou in enumerate(candidate_ious)]


def sampled_precision(true_positive: np.ndarray, num_ground_truth: int) -> np.ndarray:
    """(n, T) matches in descending score order -> (T, 101) precision envelope at COCO's recall points."""
    num_detections, num_thresholds = true_positive.shape
    sampled = np.zeros((num_thresholds, len(RECALL_POINTS)))
    if num_detections == 0:
        return sampled
    tp_sum = np.cumsum(true_positive, 0, dtype=np.float64)
    fp_sum = np.cumsum(~true_positive, 0, dtype=np.float64)
    recall = tp_sum / num_ground_truth
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1], 0)[::-1]
    for t in range(num_thresholds):
        index = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
        reached = index < num_detections
        sampled[t, reached] = envelope[index[reached], t]
    return sampled


def smooth(values: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter over ``2 * fraction`` of the length, padding with the edge values (yolov5's F1 smoothing)."""
    width = round(len(values) * fraction * 2) // 2 + 1
    padded = np.concatenate((np.full(width // 2, values[0]), values, np.full(width // 2, values[-1])))
    return np.convolve(padded, np.ones(width) / width, mode="valid")


@dataclass
class ImageRecord:
    """What one image contributes: detections in score order, their classes and COCO matches, GT classes."""

    scores: np.ndarray
    classes: np.ndarray
    candidate_rows: np.ndarray
    candidate_ious: np.ndarray
    gt_classes: np.ndarray


@dataclass
class Evaluation:
    """Per-class arrays for classes with ground truth, plus the curves the plots need."""

    class_ids: np.ndarray
    images: np.ndarray
    instances: np.ndarray
    pr_sampled: np.ndarray  # (C, T, 101) precision at RECALL_POINTS
    precision_curve: np.ndarray  # (C, 1000) at CONFIDENCE_POINTS, IoU 0.5
    recall_curve: np.ndarray
    f1_curve: np.ndarray
    best_index: int

    @property
    def ap(self) -> np.ndarray:
        """(C, T) average precision per class and IoU threshold."""
        return self.pr_sampled.mean(-1)


class ConfusionMatrix:
    """yolov5-style confusion matrix, ``matrix[predicted, true]`` with background as the last row and column."""

    def __init__(self, num_classes: int, conf_thres: float = 0.25, iou_thres: float = 0.45) -> None:
        self.num_classes = num_classes
        self.conf_thres = conf_thres
        self.iou_thres = iou_thres
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, detections: np.ndarray | torch.Tensor, ground_truth: np.ndarray | torch.Tensor) -> None:
        """detections (n, 6) xyxy, conf, cls; ground_truth (m, 5) cls, xyxy, both in the same pixels."""
        detections = _as_numpy(detections, 6)
        ground_truth = _as_numpy(ground_truth, 5)
        self.update_from_iou(detections, ground_truth, pairwise_iou(detections[:, :4], ground_truth[:, 1:]))

    def update_from_iou(self, detections: np.ndarray, ground_truth: np.ndarray, iou: np.ndarray) -> None:
        """``update`` with the (n, m) detection-to-ground-truth IoU already computed (any classes)."""
        confident = detections[:, 4] > self.conf_thres
        detection_classes = detections[confident, 5].astype(np.int64)
        gt_classes = ground_truth[:, 0].astype(np.int64)
        background = self.num_classes
        iou = iou[confident]
        det_index, gt_index = np.nonzero(iou > self.iou_thres)
        # One match per detection, then per ground truth, always keeping the highest IoU (yolov5's rule).
        order = np.argsort(-iou[det_index, gt_index], kind="stable")
        gt_index, det_index = gt_index[order], det_index[order]
        first = np.sort(np.unique(det_index, return_index=True)[1])
        gt_index, det_index = gt_index[first], det_index[first]
        first = np.unique(gt_index, return_index=True)[1]
        gt_index, det_index = gt_index[first], det_index[first]
        np.add.at(self.matrix, (detection_classes[det_index], gt_classes[gt_index]), 1)
        unmatched_gt = np.ones(len(gt_classes), bool)
        unmatched_gt[gt_index] = False
        np.add.at(self.matrix, (background, gt_classes[unmatched_gt]), 1)
        # yolov5 counts unmatched detections only in images where something matched; we count them everywhere.
        unmatched_det = np.ones(len(detection_classes), bool)
        unmatched_det[det_index] = False
        np.add.at(self.matrix, (detection_classes[unmatched_det], background), 1)


class DetectionMetrics:
    """Accumulates per-image detections and ground truth; ``compute()`` returns the metric dict."""

    def __init__(
        self, num_classes: int, names: list[str] | None = None, max_detections_per_image: int | None = None
    ) -> None:
        self.num_classes = num_classes
        self.names = list(names) if names is not None else [str(index) for index in range(num_classes)]
        self.max_detections_per_image = max_detections_per_image
        self.confusion = ConfusionMatrix(num_classes)
        self._records: list[ImageRecord] = []
        self._evaluation: Evaluation | None = None

    def update(self, detections: np.ndarray | torch.Tensor, ground_truth: np.ndarray | torch.Tensor) -> None:
        """Add one image: detections (n, 6) x1, y1, x2, y2, conf, cls; ground_truth (m, 5) cls, x1, y1, x2, y2."""
        detections = _as_numpy(detections, 6)
        ground_truth = _as_numpy(ground_truth, 5)
        for array, column in ((detections, 5), (ground_truth, 0)):
            if len(array) and (array[:, column].min() < 0 or array[:, column].max() >= self.num_classes):
                raise ValueError(f"class ids must lie in [0, {self.num_classes}), got {array[:, column]}")
        # Stable sort, like COCOeval's mergesort, so ties keep their input order.
        detections = detections[np.argsort(-detections[:, 4], kind="stable")]
        iou = pairwise_iou(detections[:, :4], ground_truth[:, 1:])
        self.confusion.update_from_iou(detections, ground_truth, iou)
        classes = detections[:, 5].astype(np.int64)
        if self.max_detections_per_image is not None:
            keep = rank_within_class(classes) < self.max_detections_per_image
            detections, classes, iou = detections[keep], classes[keep], iou[keep]
        gt_classes = ground_truth[:, 0].astype(np.int64)
        iou[classes[:, None] != gt_classes[None, :]] = 0.0
        # Only detections that reach the lowest threshold somewhere can ever match; the rest are false positives.
        candidate_rows = np.flatnonzero((iou >= IOU_THRESHOLDS[0]).any(1))
        self._records.append(ImageRecord(detections[:, 4], classes, candidate_rows, iou[candidate_rows], gt_classes))
        self._evaluation = None

    def _match_all(self) -> list[np.ndarray]:
        """Per image (n, T) bool matches; images are grouped by candidate count to keep padding small."""
        matches = [np.zeros((len(record.scores), len(IOU_THRESHOLDS)), bool) for record in self._records]
        by_size = sorted(range(len(self._records)), key=lambda index: len(self._records[index].candidate_rows))
        for start in range(0, len(by_size), MATCH_CHUNK_IMAGES):
            chunk = by_size[start : start + MATCH_CHUNK_IMAGES]
            for index, matched in zip(chunk, greedy_match([self._records[i].candidate_ious for i in chunk])):
                matches[index][self._records[index].candidate_rows] = matched
        return matches

    def evaluate(self) -> Evaluation:
        """Match everything seen so far and build per-class precision/recall (cached until the next update)."""
        if self._evaluation is not None:
            return self._evaluation
        matches = self._match_all()
        empty = np.zeros(0)
        scores = np.concatenate([record.scores for record in self._records] or [empty])
        classes = np.concatenate([record.classes for record in self._records] or [empty]).astype(np.int64)
        true_positive = np.concatenate(matches or [np.zeros((0, len(IOU_THRESHOLDS)), bool)])
        gt_classes = [record.gt_classes for record in self._records]
        instances = np.bincount(np.concatenate(gt_classes or [empty]).astype(np.int64), minlength=self.num_classes)
        images = np.bincount(
            np.concatenate([np.unique(c) for c in gt_classes] or [empty]).astype(np.int64), minlength=self.num_classes
        )
        # One stable sort groups detections by class in descending score, ties in image order as COCOeval does.
        order = np.lexsort((-scores, classes))
        scores, classes, true_positive = scores[order], classes[order], true_positive[order]
        bounds = np.searchsorted(classes, np.arange(self.num_classes + 1))
        class_ids = np.flatnonzero(instances > 0)
        pr_sampled = np.zeros((len(class_ids), len(IOU_THRESHOLDS), len(RECALL_POINTS)))
        precision_curve = np.zeros((len(class_ids), len(CONFIDENCE_POINTS)))
        recall_curve = np.zeros_like(precision_curve)
        for row, class_id in enumerate(class_ids):
            segment = slice(bounds[class_id], bounds[class_id + 1])
            pr_sampled[row] = sampled_precision(true_positive[segment], instances[class_id])
            if segment.stop > segment.start:
                tp_sum = np.cumsum(true_positive[segment, 0])
                confidence = -scores[segment]  # ascending, as np.interp needs
                recall_curve[row] = np.interp(-CONFIDENCE_POINTS, confidence, tp_sum / instances[class_id], left=0)
                precision = tp_sum / np.arange(1, len(tp_sum) + 1)
                precision_curve[row] = np.interp(-CONFIDENCE_POINTS, confidence, precision, left=1)
        f1_curve = 2 * precision_curve * recall_curve / (precision_curve + recall_curve + 1e-16)
        best_index = int(smooth(f1_curve.mean(0), 0.1).argmax()) if len(class_ids) else 0
        self._evaluation = Evaluation(
            class_ids, images[class_ids], instances[class_ids], pr_sampled, precision_curve, recall_curve, f1_curve,
            best_index,
        )  # fmt: skip
        return self._evaluation

    def compute(self) -> dict:
        """The four metric names -> float, plus ``per_class`` (list of dicts), ``num_images`` and ``num_instances``.

        P and R are taken at the confidence that maximises the smoothed mean F1 (IoU 0.5), as yolov5 reports them.
        """
        evaluation = self.evaluate()
        ap = evaluation.ap
        precision = evaluation.precision_curve[:, evaluation.best_index]
        recall = evaluation.recall_curve[:, evaluation.best_index]
        per_class = [
            {
                "class": int(class_id),
                "name": self.names[class_id],
                "images": int(evaluation.images[row]),
                "instances": int(evaluation.instances[row]),
                PRECISION: float(precision[row]),
                RECALL: float(recall[row]),
                MAP50: float(ap[row, 0]),
                MAP50_95: float(ap[row].mean()),
            }
            for row, class_id in enumerate(evaluation.class_ids)
        ]
        has_classes = len(per_class) > 0
        return {
            PRECISION: float(precision.mean()) if has_classes else 0.0,
            RECALL: float(recall.mean()) if has_classes else 0.0,
            MAP50: float(ap[:, 0].mean()) if has_classes else 0.0,
            MAP50_95: float(ap.mean()) if has_classes else 0.0,
            "per_class": per_class,
            "num_images": len(self._records),
            "num_instances": int(evaluation.instances.sum()),
        }


CLASS_TABLE_HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
CLASS_ROW_FORMAT = "%22s" + "%11i" * 2 + "%11.3g" * 4


def format_class_table(results: dict, per_class: bool = True, header: bool = True) -> str:
    """yolov5's validation table: an ``all`` row, then one row per class with ground truth.

    ``header=False`` leaves out ``CLASS_TABLE_HEADER`` (a progress bar already shows it, as in yolov5)."""
    rows = [CLASS_TABLE_HEADER] if header else []
    rows.append(CLASS_ROW_FORMAT % ("all", results["num_images"], results["num_instances"], *_metric_values(results)))
    if per_class:
        for entry in results["per_class"]:
            rows.append(CLASS_ROW_FORMAT % (entry["name"], entry["images"], entry["instances"], *_metric_values(entry)))
    return "\n".join(rows)


def _metric_values(entry: dict) -> tuple[float, ...]:
    return tuple(entry[key] for key in METRIC_KEYS)
