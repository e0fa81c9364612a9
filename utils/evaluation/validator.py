"""Validation: run a detector over a val loader, post-process, and score it (metrics, losses, txt, json)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.boxes import scale_boxes, xywhn2xyxy
from utils.evaluation.coco_json import (
    coco_ground_truth,
    detection_results,
    ground_truth_annotations,
    image_entry,
    write_json,
)
from utils.evaluation.label_txt import write_label_txt
from utils.evaluation.metrics import CLASS_TABLE_HEADER, MAP50_95, DetectionMetrics, format_class_table
from utils.evaluation.postprocess import non_max_suppression

LossFunction = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Validation:
    """Everything one validation pass produced: scalar metrics by name, the accumulator and timings."""

    metrics: dict[str, float]
    results: dict  # DetectionMetrics.compute(): adds per_class, num_images, num_instances
    accumulator: DetectionMetrics
    speed_ms: dict[str, float]  # per image: preprocess, inference, nms
    coco_ground_truth: dict | None = None
    coco_results: list[dict] = field(default_factory=list)

    def table(self, per_class: bool = True, header: bool = True) -> str:
        """yolov5's per-class table; ``header=False`` after a progress bar, which shows the header."""
        return format_class_table(self.results, per_class, header)

    def class_maps(self, num_classes: int) -> np.ndarray:
        """(num_classes,) mAP@0.5:0.95 per class; a class without ground truth here gets the overall mAP (yolov5)."""
        maps = np.full(num_classes, self.metrics[MAP50_95])
        for entry in self.results["per_class"]:
            maps[entry["class"]] = entry[MAP50_95]
        return maps


def validate(model: nn.Module, dataloader: Iterable, names: list[str], **options: Any) -> dict[str, float]:
    """Score ``model`` on ``dataloader``: the four metric names plus val/*_loss when ``loss_fn`` is given.

    Takes ``run_validation``'s keyword options. Silent unless ``progress`` or ``verbose``.
    """
    return run_validation(model, dataloader, names, **options).metrics


@torch.no_grad()
def run_validation(
    model: nn.Module,
    dataloader: Iterable,
    names: list[str],
    *,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    device: torch.device | str = "cpu",
    loss_fn: LossFunction | None = None,
    half: bool = False,
    save_dir: Path | None = None,
    save_json: bool = False,
    save_txt: bool = False,
    verbose: bool = False,
    progress: bool = False,
    max_detections_per_image: int | None = None,
) -> Validation:
    """``validate`` with what val.py needs: the accumulator, per-class results, timings and COCO json. ``progress``:
    yolov5's bar, the table header as its description (the caller prints the rows); ``max_detections_per_image``
    keeps the top N per image and class when scoring (COCO uses 100)."""
    device = torch.device(device)
    # Autocast, not model.half(): the EMA must stay float32. half: fp16 on CUDA, bf16 on a CPU (--cpu-fast asks).
    use_autocast = half and device.type in ("cuda", "cpu")
    autocast_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    save_dir = Path(save_dir) if save_dir is not None else None
    accumulator = DetectionMetrics(len(names), names, max_detections_per_image)
    collector = _Collector(accumulator, save_dir, save_txt, save_json)
    was_training = model.training
    model.eval()
    try:
        for images, targets, paths, shapes in validation_progress(dataloader, progress):
            start = time.perf_counter()
            images = images.to(device, non_blocking=True).float() / 255
            targets = targets.to(device)
            after_preprocess = _synchronized_time(device)
            with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=use_autocast):
                decoded, raw = model(images)
            after_inference = _synchronized_time(device)
            if loss_fn is not None:
                collector.add_losses(loss_fn([level.float() for level in raw], targets)[1])
            detections = non_max_suppression(decoded.float(), conf_thres, iou_thres, max_det=max_det)
            after_nms = time.perf_counter()
            collector.timings += (
                after_preprocess - start,
                after_inference - after_preprocess,
                after_nms - after_inference,
            )
            collector.num_batches += 1
            for index, image_detections in enumerate(detections):
                labels = targets[targets[:, 0] == index, 1:].cpu().numpy()
                image_detections = image_detections.cpu().numpy()
                pixels = _to_original_pixels(image_detections, labels, images.shape[2:], shapes[index])
                collector.add_image(paths[index], *pixels)
    finally:
        model.train(was_training)
    validation = collector.finish(names)
    if verbose:
        print(validation.table(per_class=True, header=not progress))
    return validation


def validation_progress(dataloader: Iterable, enabled: bool) -> Iterable:
    """A tqdm bar over the loader described by the table header, as yolov5 shows it; the bare loader when off."""
    return tqdm(dataloader, desc=CLASS_TABLE_HEADER, bar_format="{l_bar}{bar:10}{r_bar}") if enabled else dataloader


@dataclass
class _Collector:
    """Per-image sink of one validation pass: metrics, summed losses, timings, and the optional txt/json outputs."""

    accumulator: DetectionMetrics
    save_dir: Path | None
    save_txt: bool
    save_json: bool
    loss_sums: dict[str, float] = field(default_factory=dict)
    timings: np.ndarray = field(default_factory=lambda: np.zeros(3))
    num_batches: int = 0
    coco_images: list[dict] = field(default_factory=list)
    coco_annotations: list[dict] = field(default_factory=list)
    coco_results: list[dict] = field(default_factory=list)

    def add_losses(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(value)

    def add_image(self, path: str, detections: np.ndarray, ground_truth: np.ndarray, shape: tuple[int, int]) -> None:
        """detections (n, 6) and ground truth (m, 5) in the pixels of an image of ``shape`` (h, w)."""
        self.accumulator.update(detections, ground_truth)
        if self.save_txt and self.save_dir is not None:
            # val.py's --save-txt has always written the confidence; detect.py asks for it with --save-conf.
            write_label_txt(self.save_dir / "labels" / f"{Path(path).stem}.txt", detections, shape, save_conf=True)
        if self.save_json:
            image_id = len(self.coco_images)
            self.coco_images.append(image_entry(image_id, Path(path).name, *shape))
            self.coco_annotations += ground_truth_annotations(image_id, ground_truth, len(self.coco_annotations) + 1)
            self.coco_results += detection_results(image_id, detections)

    def finish(self, names: list[str]) -> Validation:
        """Compute metrics, average the losses over batches and write the json files."""
        results = self.accumulator.compute()
        metrics = {key: value for key, value in results.items() if isinstance(value, float)}
        for name, total in self.loss_sums.items():
            metrics[f"val/{name}"] = total / max(self.num_batches, 1)
        per_image_ms = self.timings * 1000 / max(results["num_images"], 1)
        validation = Validation(
            metrics, results, self.accumulator, dict(zip(("preprocess", "inference", "nms"), per_image_ms.tolist()))
        )
        if self.save_json:
            validation.coco_ground_truth = coco_ground_truth(self.coco_images, self.coco_annotations, names)
            validation.coco_results = self.coco_results
            if self.save_dir is not None:
                write_json(self.save_dir / "ground_truth.json", validation.coco_ground_truth)
                write_json(self.save_dir / "predictions.json", self.coco_results)
        return validation


def _synchronized_time(device: torch.device) -> float:
    """perf_counter after queued CUDA work has finished, so the speed split is honest on GPUs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _to_original_pixels(
    detections: np.ndarray, labels: np.ndarray, batch_shape: tuple[int, int], shapes: tuple | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Detections (n, 6) in batch pixels and labels (m, 5) cls xywhn -> both in original-image pixels (xyxy).

    Without letterbox information (``shapes`` None) everything stays in batch pixels.
    """
    height, width = batch_shape
    ground_truth = np.concatenate((labels[:, :1], xywhn2xyxy(labels[:, 1:5], width, height)), 1)
    if shapes is None:
        return detections, ground_truth, (height, width)
    original_shape, ratio_pad = shapes
    detections = detections.copy()
    detections[:, :4] = scale_boxes(detections[:, :4], (height, width), original_shape, ratio_pad)
    ground_truth[:, 1:] = scale_boxes(ground_truth[:, 1:], (height, width), original_shape, ratio_pad)
    return detections, ground_truth, tuple(int(size) for size in original_shape)
