"""The YOLOv5 training loss: target assignment, CIoU box loss and BCE (or focal) objectness and class losses."""

from __future__ import annotations

import torch
from torch import nn

from utils.boxes import complete_iou

# Objectness weight per output level, fine to coarse: small-object levels have many more cells to stay quiet in.
LEVEL_BALANCE = {3: [4.0, 1.0, 0.4]}
LEVEL_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]
NEIGHBOUR_OFFSET = 0.5  # a target also claims the neighbouring cell on the side of its centre's half-cell
FOCAL_ALPHA = 0.25


class FocalLoss(nn.Module):
    """Focal loss around an element-wise BCE criterion: down-weights easy examples by ``(1 - p_t) ** gamma``."""

    def __init__(self, criterion: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = FOCAL_ALPHA) -> None:
        super().__init__()
        self.criterion = criterion
        self.reduction = criterion.reduction
        self.criterion.reduction = "none"  # the modulation needs per-element losses
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(logits, target)
        probability = torch.sigmoid(logits)
        p_t = target * probability + (1 - target) * (1 - probability)
        alpha_factor = target * self.alpha + (1 - target) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def _make_criterion(pos_weight: float, focal_gamma: float) -> nn.Module:
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
    return FocalLoss(criterion, focal_gamma) if focal_gamma > 0 else criterion


class YoloLoss:
    """yolov5's ComputeLoss. ``hyp`` should already be scaled by ``scale_loss_gains``.

    Call with ``raw_preds`` (list of (b, na, ny, nx, 5 + nc) maps from the model in train mode, or the raw
    list from eval mode) and ``targets`` (n, 6) [image_index, cls, x, y, w, h] normalised. Returns
    (total loss * batch size, {"box_loss", "obj_loss", "cls_loss"} detached).
    """

    def __init__(self, model: nn.Module, hyp: dict[str, float], label_smoothing: float = 0.0) -> None:
        detect = getattr(model, "module", model).detect  # DistributedDataParallel keeps the model in .module
        self.detect = detect  # anchors are read at every call: autoanchor may replace them later
        self.num_classes = detect.num_classes
        self.num_anchors = detect.num_anchors
        self.box_gain, self.obj_gain, self.cls_gain = hyp["box"], hyp["obj"], hyp["cls"]
        self.anchor_t = hyp["anchor_t"]
        focal_gamma = hyp.get("fl_gamma", 0.0)
        self.class_criterion = _make_criterion(hyp["cls_pw"], focal_gamma)
        self.object_criterion = _make_criterion(hyp["obj_pw"], focal_gamma)
        self.positive_target = 1.0 - 0.5 * label_smoothing
        self.negative_target = 0.5 * label_smoothing
        self.balance = LEVEL_BALANCE.get(detect.num_layers, LEVEL_BALANCE_DEFAULT)

    def __call__(
        self, raw_preds: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = raw_preds[0].device
        self.class_criterion.to(device)  # the pos_weight buffers follow the predictions' device
        self.object_criterion.to(device)
        targets = targets.to(device=device, dtype=torch.float32)
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for level, (pred, assignment) in enumerate(zip(raw_preds, self.build_targets(raw_preds, targets))):
            pred = pred.float()  # the loss runs in float32 even when the model runs under autocast
            image, anchor, cell_y, cell_x, target_box, target_class, anchor_wh = assignment
            object_target = torch.zeros(pred.shape[:4], device=device)
            if image.numel():
                pxy, pwh, _, pcls = pred[image, anchor, cell_y, cell_x].split((2, 2, 1, self.num_classes), 1)
                pred_box = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchor_wh), 1)
                iou = complete_iou(pred_box, target_box)
                box_loss = box_loss + (1.0 - iou).mean()
                # objectness learns to predict the box quality; gr = 1.0 means the plain IoU, negatives clamped
                object_target[image, anchor, cell_y, cell_x] = iou.detach().clamp(0)
                if self.num_classes > 1:
                    class_target = torch.full_like(pcls, self.negative_target)
                    class_target[torch.arange(len(target_class), device=device), target_class] = self.positive_target
                    cls_loss = cls_loss + self.class_criterion(pcls, class_target)
            obj_loss = obj_loss + self.object_criterion(pred[..., 4], object_target) * self.balance[level]
        box_loss, obj_loss, cls_loss = box_loss * self.box_gain, obj_loss * self.obj_gain, cls_loss * self.cls_gain
        batch_size = raw_preds[0].shape[0]
        terms = {"box_loss": box_loss.detach(), "obj_loss": obj_loss.detach(), "cls_loss": cls_loss.detach()}
        return (box_loss + obj_loss + cls_loss) * batch_size, terms

    @torch.no_grad()
    def build_targets(self, raw_preds: list[torch.Tensor], targets: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Assign each target to anchors and cells, per level.

        A target matches an anchor when both its w/h ratios (either way round) are below ``anchor_t``; each match
        claims its own cell plus the horizontal and vertical neighbours nearest to its centre. Per level returns
        (image, anchor, cell_y, cell_x, box (m, 4) xywh relative to the cell in grid units, class, anchor wh).
        """
        device = targets.device
        num_targets = targets.shape[0]
        anchor_index = torch.arange(self.num_anchors, device=device, dtype=torch.float32)
        anchor_index = anchor_index.view(-1, 1).expand(-1, num_targets)
        # (na, nt, 7): [image, cls, x, y, w, h, anchor]
        per_anchor = torch.cat((targets.expand(self.num_anchors, -1, -1), anchor_index[..., None]), 2)
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * NEIGHBOUR_OFFSET
        assignments = []
        for level, pred in enumerate(raw_preds):
            anchors = self.detect.anchors[level].to(device)
            grid_h, grid_w = pred.shape[2], pred.shape[3]
            gain = torch.tensor([1, 1, grid_w, grid_h, grid_w, grid_h, 1], device=device, dtype=torch.float32)
            scaled = per_anchor * gain  # boxes in grid units of this level
            ratio = scaled[..., 4:6] / anchors[:, None]
            matched = scaled[torch.max(ratio, 1 / ratio).max(2).values < self.anchor_t]  # (m, 7)
            centre = matched[:, 2:4]
            centre_inverse = gain[[2, 3]] - centre
            left, up = ((centre % 1 < NEIGHBOUR_OFFSET) & (centre > 1)).T
            right, down = ((centre_inverse % 1 < NEIGHBOUR_OFFSET) & (centre_inverse > 1)).T
            keep = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, m)
            matched = matched.expand(5, -1, -1)[keep]
            cell_offsets = (torch.zeros_like(centre)[None] + offsets[:, None])[keep]
            cell = (matched[:, 2:4] - cell_offsets).long()
            cell_x = cell[:, 0].clamp(0, grid_w - 1)
            cell_y = cell[:, 1].clamp(0, grid_h - 1)
            anchor = matched[:, 6].long()
            target_box = torch.cat((matched[:, 2:4] - cell, matched[:, 4:6]), 1)
            image, target_class = matched[:, 0].long(), matched[:, 1].long()
            assignments.append((image, anchor, cell_y, cell_x, target_box, target_class, anchors[anchor]))
        return assignments
