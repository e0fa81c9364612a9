"""Tests for utils/training/loss.py: gain scaling, target assignment, loss values, gradients and focal loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.yolo import build_model
from utils.training.loss import FocalLoss, YoloLoss

HYP = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
}
IMG = 64


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("yolov5n", num_classes=3)


def many_targets(batch_size: int, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, batch_size, (count, 1), generator=generator).float()
    cls = torch.randint(0, 3, (count, 1), generator=generator).float()
    xy = torch.rand(count, 2, generator=generator) * 0.8 + 0.1
    wh = torch.rand(count, 2, generator=generator) * 0.6 + 0.02
    return torch.cat((image, cls, xy, wh), 1)


@pytest.mark.parametrize("num_targets", [0, 1, 40])
@pytest.mark.parametrize("fl_gamma", [0.0, 1.5])
def test_loss_finite_and_non_negative(model: nn.Module, num_targets: int, fl_gamma: float) -> None:
    loss_fn = YoloLoss(model, dict(HYP, fl_gamma=fl_gamma), label_smoothing=0.1)
    preds = model(torch.rand(2, 3, IMG, IMG))
    total, terms = loss_fn(preds, many_targets(2, num_targets))
    assert total.ndim == 0 and torch.isfinite(total) and total >= 0
    assert set(terms) == {"box_loss", "obj_loss", "cls_loss"}
    assert all(not term.requires_grad and term >= 0 for term in terms.values())
    assert (terms["box_loss"] > 0) == (num_targets > 0)
    combined = sum(terms.values()) * 2
    torch.testing.assert_close(total.detach(), combined)


def test_gradients_reach_every_parameter(model: nn.Module) -> None:
    model.zero_grad()
    loss_fn = YoloLoss(model, HYP)
    total, _ = loss_fn(model(torch.rand(2, 3, IMG, IMG)), many_targets(2, 60))
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    model.zero_grad()


def test_single_class_has_no_class_loss() -> None:
    single = build_model("yolov5n", num_classes=1)
    targets = many_targets(1, 10)
    targets[:, 1] = 0
    _, terms = YoloLoss(single, HYP)(single(torch.rand(1, 3, IMG, IMG)), targets)
    assert terms["cls_loss"] == 0 and terms["box_loss"] > 0


def test_assignment_includes_two_neighbour_cells(model: nn.Module) -> None:
    # level 0 is an 8x8 grid at 64 px; centre (2.4, 4.8) cells; 0.5-cell box only fits anchor 0 (1.25 x 1.625)
    target = torch.tensor([[1.0, 2.0, 2.4 / 8, 4.8 / 8, 0.5 / 8, 0.5 / 8]])
    preds = [torch.zeros(2, 3, IMG // s, IMG // s, 8) for s in (8, 16, 32)]
    levels = YoloLoss(model, HYP).build_targets(preds, target)
    image, anchor, cell_y, cell_x, box, cls, anchor_wh = levels[0]
    # own cell (2, 4); left (1, 4) since x is in the left half; below (2, 5) since y is in the lower half
    assert list(zip(cell_x.tolist(), cell_y.tolist())) == [(2, 4), (1, 4), (2, 5)]
    assert image.tolist() == [1, 1, 1] and anchor.tolist() == [0, 0, 0] and cls.tolist() == [2, 2, 2]
    torch.testing.assert_close(box[:, :2], torch.tensor([[0.4, 0.8], [1.4, 0.8], [0.4, -0.2]]))
    torch.testing.assert_close(box[:, 2:], torch.full((3, 2), 0.5))
    torch.testing.assert_close(anchor_wh, model.detect.anchors[0, [0, 0, 0]])
    assert all(level[0].numel() == 0 for level in levels[1:])


@pytest.mark.parametrize(
    "size_pixels, expected_anchors",
    [((12.0, 12.0), [0, 1, 2]), ((66.0, 12.0), [2])],  # a square box fits all level-0 anchors within 4x
)
def test_assignment_anchor_ratio_threshold(model: nn.Module, size_pixels, expected_anchors) -> None:
    width, height = size_pixels
    target = torch.tensor([[0.0, 0.0, 3.5 / 8, 3.5 / 8, width / IMG, height / IMG]])
    preds = [torch.zeros(1, 3, IMG // s, IMG // s, 8) for s in (8, 16, 32)]
    anchor = YoloLoss(model, HYP).build_targets(preds, target)[0][1]
    ratios = torch.tensor([width, height]) / 8 / model.detect.anchors[0]
    fits = (torch.max(ratios, 1 / ratios).max(1).values < 4).nonzero().flatten().tolist()
    assert fits == expected_anchors
    assert sorted(set(anchor.tolist())) == expected_anchors


def test_border_target_has_no_outside_neighbours(model: nn.Module) -> None:
    target = torch.tensor([[0.0, 0.0, 0.2 / 8, 0.2 / 8, 0.5 / 8, 0.5 / 8]])  # top-left cell, left/upper halves
    preds = [torch.zeros(1, 3, IMG // s, IMG // s, 8) for s in (8, 16, 32)]
    _, _, cell_y, cell_x, *_ = YoloLoss(model, HYP).build_targets(preds, target)[0]
    assert cell_x.tolist() == [0] and cell_y.tolist() == [0]


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_formula(gamma: float) -> None:
    logits = torch.tensor([-2.0, 0.0, 3.0])
    target = torch.tensor([0.0, 1.0, 1.0])
    focal = FocalLoss(nn.BCEWithLogitsLoss(reduction="none"), gamma=gamma, alpha=0.25)(logits, target)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probability = logits.sigmoid()
    p_t = target * probability + (1 - target) * (1 - probability)
    expected = bce * (target * 0.25 + (1 - target) * 0.75) * (1 - p_t) ** gamma
    torch.testing.assert_close(focal, expected)


def test_focal_loss_down_weights_objectness(model: nn.Module) -> None:
    preds = model(torch.rand(1, 3, IMG, IMG))
    targets = many_targets(1, 5)
    _, plain = YoloLoss(model, HYP)(preds, targets)
    _, focal = YoloLoss(model, dict(HYP, fl_gamma=1.5))(preds, targets)
    assert 0 < focal["obj_loss"] < plain["obj_loss"]
    torch.testing.assert_close(focal["box_loss"], plain["box_loss"])


def test_label_smoothing_changes_class_loss(model: nn.Module) -> None:
    preds = model(torch.rand(1, 3, IMG, IMG))
    targets = many_targets(1, 5)
    _, sharp = YoloLoss(model, HYP)(preds, targets)
    _, smooth = YoloLoss(model, HYP, label_smoothing=0.2)(preds, targets)
    assert smooth["cls_loss"] != sharp["cls_loss"]
    torch.testing.assert_close(smooth["obj_loss"], sharp["obj_loss"])


def test_loss_reads_anchors_live(model: nn.Module) -> None:
    loss_fn = YoloLoss(model, HYP)
    target = torch.tensor([[0.0, 0.0, 3.5 / 8, 3.5 / 8, 40 / IMG, 10 / IMG]])
    preds = [torch.zeros(1, 3, IMG // s, IMG // s, 8) for s in (8, 16, 32)]
    saved = model.detect.anchors.clone()
    model.detect.anchors[0] = torch.tensor([5.0, 1.25])  # as autoanchor would, after the loss was built
    try:
        anchor = loss_fn.build_targets(preds, target)[0][1]
    finally:
        model.detect.anchors.copy_(saved)
    assert sorted(set(anchor.tolist())) == [0, 1, 2]


def test_loss_under_autocast_channels_last() -> None:
    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=3).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, IMG, IMG).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(images)
        total, terms = YoloLoss(model, HYP)(preds, many_targets(2, 10))
    assert preds[0].dtype == torch.bfloat16 and total.dtype == torch.float32
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_accepts_a_wrapped_model(model: nn.Module) -> None:
    class Wrapper(nn.Module):  # stands in for DistributedDataParallel, which keeps the model in .module
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    preds = model(torch.rand(1, 3, IMG, IMG))
    targets = many_targets(1, 5)
    wrapped_total, _ = YoloLoss(Wrapper(model), HYP)(preds, targets)
    torch.testing.assert_close(wrapped_total, YoloLoss(model, HYP)(preds, targets)[0])
