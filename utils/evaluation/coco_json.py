"""COCO-format json for detections and ground truth, and the pycocotools / faster-coco-eval reference mAP."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np

from utils.evaluation.metrics import MAP50, MAP50_95

REFERENCE_BACKENDS = ("pycocotools", "faster_coco_eval")


def image_entry(image_id: int, file_name: str, height: int, width: int) -> dict:
    """One COCO ``images`` entry."""
    return {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}


def ground_truth_annotations(image_id: int, ground_truth: np.ndarray, first_id: int) -> list[dict]:
    """(m, 5) cls, x1, y1, x2, y2 pixels -> COCO annotations with ids from ``first_id``; no crowd, area = w * h."""
    annotations = []
    for offset, (class_id, x1, y1, x2, y2) in enumerate(np.asarray(ground_truth, dtype=np.float64).reshape(-1, 5)):
        width, height = x2 - x1, y2 - y1
        annotations.append(
            {
                "id": first_id + offset,
                "image_id": image_id,
                "category_id": int(class_id),
                "bbox": [float(x1), float(y1), float(width), float(height)],
                "area": float(width * height),
                "iscrowd": 0,
            }
        )
    return annotations


def detection_results(image_id: int, detections: np.ndarray) -> list[dict]:
    """(n, 6) x1, y1, x2, y2, conf, cls pixels -> COCO result entries (bbox is x, y, w, h)."""
    results = []
    for x1, y1, x2, y2, conf, class_id in np.asarray(detections, dtype=np.float64).reshape(-1, 6):
        bbox = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
        results.append({"image_id": image_id, "category_id": int(class_id), "bbox": bbox, "score": float(conf)})
    return results


def coco_ground_truth(images: list[dict], annotations: list[dict], names: list[str]) -> dict:
    """Assemble a COCO ground-truth dict; category ids are our class indices."""
    categories = [{"id": index, "name": name} for index, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_from_arrays(
    ground_truth: list[np.ndarray], detections: list[np.ndarray], names: list[str]
) -> tuple[dict, list[dict]]:
    """Per-image (m, 5) ground truth and (n, 6) detections -> (COCO ground-truth dict, result list).

    Image ids follow list order, which is also the order our accumulator sees the images in.
    """
    images, annotations, results = [], [], []
    for image_id, (labels, predictions) in enumerate(zip(ground_truth, detections)):
        images.append(image_entry(image_id, f"{image_id}.jpg", 0, 0))
        annotations += ground_truth_annotations(image_id, labels, first_id=len(annotations) + 1)
        results += detection_results(image_id, predictions)
    return coco_ground_truth(images, annotations, names), results


def write_json(path: Path, content: dict | list) -> Path:
    """Write ``content`` as json, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def available_backend() -> str | None:
    """The first installed reference evaluator, or None."""
    return next((name for name in REFERENCE_BACKENDS if importlib.util.find_spec(name) is not None), None)


def reference_map(
    ground_truth: dict, results: list[dict], backend: str | None = None, max_detections: int = 100
) -> dict[str, float]:
    """mAP50 and mAP50-95 computed by pycocotools or faster-coco-eval over classes with ground truth.

    Returns {} when no backend is installed. An empty result list scores 0 on every class with ground truth.
    """
    backend = backend or available_backend()
    if backend is None:
        return {}
    if not results:
        return {MAP50: 0.0, MAP50_95: 0.0}
    evaluator = build_evaluator(backend, ground_truth, results, max_detections)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]  # (T, R, K)
    valid = precision > -1
    if not valid.any():
        return {MAP50: 0.0, MAP50_95: 0.0}
    return {MAP50: float(precision[0][valid[0]].mean()), MAP50_95: float(precision[valid].mean())}


def build_evaluator(backend: str, ground_truth: dict, results: list[dict], max_detections: int = 100):
    """COCOeval of the chosen backend over in-memory dicts: bbox, area "all", ``maxDets=[max_detections]``."""
    evaluator = _load_evaluator(backend, ground_truth, results)
    evaluator.params.maxDets = [max_detections]
    evaluator.params.areaRng = [[0**2, 1e5**2]]
    evaluator.params.areaRngLbl = ["all"]
    return evaluator


def _load_evaluator(backend: str, ground_truth: dict, results: list[dict]):
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = ground_truth
            coco_gt.createIndex()
            return COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(ground_truth)
            coco_dt = coco_gt.loadRes(results)
            return COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *_: None)
    raise ValueError(f"unknown reference backend {backend!r}; expected one of {REFERENCE_BACKENDS}")
