"""Post-processing of decoded model outputs: confidence filtering and class-aware non-maximum suppression."""

from __future__ import annotations

import torch
import torchvision

from utils.boxes import xywh2xyxy

MAX_BOXES_INTO_NMS = 30000


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    classes: list[int] | None = None,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = MAX_BOXES_INTO_NMS,
) -> list[torch.Tensor]:
    """Filter and suppress decoded predictions, one result per image.

    prediction: (b, N, 5 + nc) = xywh in input pixels, objectness, per-class scores (all after sigmoid).
    Returns a list of b tensors (n, 6) = x1, y1, x2, y2, conf, cls with conf = objectness * class score,
    sorted by descending conf and at most ``max_det`` long. Boxes of different classes never suppress each
    other. With ``multi_label`` a box yields one detection per class scoring above ``conf_thres``.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must lie in [0, 1], got {conf_thres} and {iou_thres}")
    output = []
    for image_prediction in prediction:
        # Objectness bounds every class confidence, so this cheap filter drops nothing that could pass below.
        candidates = image_prediction[image_prediction[:, 4] > conf_thres]
        detections = _candidate_detections(candidates, conf_thres, multi_label)
        if classes is not None:
            wanted = torch.tensor(classes, device=detections.device, dtype=detections.dtype)
            detections = detections[(detections[:, 5:6] == wanted).any(1)]
        if detections.shape[0] > max_nms:
            # Bound the NMS cost on untrained models that score everything above the threshold.
            detections = detections[detections[:, 4].topk(max_nms).indices]
        keep = torchvision.ops.batched_nms(detections[:, :4], detections[:, 4], detections[:, 5].long(), iou_thres)
        output.append(detections[keep[:max_det]])
    return output


def _candidate_detections(candidates: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """(k, 5 + nc) decoded rows -> (n, 6) xyxy, conf, cls above ``conf_thres``."""
    boxes = xywh2xyxy(candidates[:, :4])
    scores = candidates[:, 5:] * candidates[:, 4:5]
    if multi_label:
        box_index, class_index = (scores > conf_thres).nonzero(as_tuple=True)
        conf = scores[box_index, class_index]
        return torch.cat((boxes[box_index], conf[:, None], class_index[:, None].to(boxes.dtype)), 1)
    conf, class_index = scores.max(1, keepdim=True)
    detections = torch.cat((boxes, conf, class_index.to(boxes.dtype)), 1)
    return detections[conf.view(-1) > conf_thres]
