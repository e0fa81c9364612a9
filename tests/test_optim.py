"""Tests for utils/training/optim.py: parameter groups, optimizer choice, accumulation, weight decay, --lr-fit."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from utils.errors import UserError
from utils.training.optim import (
    GROUP_NAMES,
    OPTIMIZERS,
    build_optimizer,
    fit_learning_rate,
    nominal_accumulation,
    parameter_groups,
    scaled_weight_decay,
)


class TinyNet(nn.Module):
    """Every kind of parameter the grouping must place: conv without bias, linear with bias, four norm layers,
    a shared module, a frozen layer and a bare parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.batch_norm = nn.BatchNorm2d(4)
        self.group_norm = nn.GroupNorm(2, 4)
        self.instance_norm = nn.InstanceNorm2d(4, affine=True)
        self.linear = nn.Linear(4, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.shared = self.linear  # the same parameters reachable twice
        self.frozen = nn.Linear(4, 2)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(4))


def test_every_trainable_parameter_is_in_exactly_one_group() -> None:
    model = TinyNet()
    groups = parameter_groups(model)
    assert tuple(groups) == GROUP_NAMES
    grouped = [id(parameter) for group in groups.values() for parameter in group]
    trainable = [id(parameter) for parameter in model.parameters() if parameter.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert len(grouped) == len(set(grouped))


def test_group_membership() -> None:
    model = TinyNet()
    groups = {name: {id(parameter) for parameter in members} for name, members in parameter_groups(model).items()}
    norms = (model.batch_norm, model.group_norm, model.instance_norm, model.layer_norm)
    assert groups["norm"] == {id(norm.weight) for norm in norms}
    assert groups["bias"] == {id(norm.bias) for norm in norms} | {id(model.linear.bias)}
    assert groups["decay"] == {id(model.conv.weight), id(model.linear.weight), id(model.scale)}


def test_wrapped_model_is_grouped_like_the_plain_one() -> None:
    model = TinyNet()
    plain = parameter_groups(model)
    wrapped = parameter_groups(nn.DataParallel(model))
    assert {name: [id(p) for p in group] for name, group in wrapped.items()} == {
        name: [id(p) for p in group] for name, group in plain.items()
    }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_build_optimizer_groups_and_momentum(name: str) -> None:
    optimizer = build_optimizer(TinyNet(), name, lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert type(optimizer).__name__ == name
    assert [group["name"] for group in optimizer.param_groups] == list(GROUP_NAMES)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.0, 5e-4]
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)
    group = optimizer.param_groups[0]
    if name in ("Adam", "AdamW"):
        assert group["betas"] == (0.9, 0.999)
    else:
        assert group["momentum"] == 0.9
    if name == "SGD":
        assert group["nesterov"] is True
    if name == "RMSprop":
        assert group["alpha"] == 0.9


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_only_the_decay_group_decays(name: str) -> None:
    model = TinyNet()
    optimizer = build_optimizer(model, name, lr=0.1, momentum=0.9, weight_decay=0.1)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # zero gradients: only weight decay can move a parameter
    for group in optimizer.param_groups:
        moved = [not torch.equal(before[id(p)], p) for p in group["params"]]
        assert all(moved) if group["name"] == "decay" else not any(moved), group["name"]


@pytest.mark.parametrize("spelling", ["sgd", "ADAMW", "rmsprop"])
def test_optimizer_names_are_case_insensitive(spelling: str) -> None:
    optimizer = build_optimizer(TinyNet(), spelling, lr=0.01, momentum=0.9, weight_decay=0.0)
    assert type(optimizer).__name__.lower() == spelling.lower()


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown optimizer 'Lion'") as error:
        build_optimizer(TinyNet(), "Lion", lr=0.01, momentum=0.9, weight_decay=0.0)
    assert all(name in str(error.value) for name in OPTIMIZERS)


@pytest.mark.parametrize(("batch_size", "expected"), [(1, 64), (16, 4), (24, 3), (40, 2), (48, 1), (64, 1), (128, 1)])
def test_nominal_accumulation(batch_size: int, expected: int) -> None:
    assert nominal_accumulation(batch_size) == expected


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "expected"), [(16, 4, 5e-4), (128, 1, 1e-3), (24, 3, 5e-4 * 72 / 64), (32, 1, 2.5e-4)]
)
def test_scaled_weight_decay(batch_size: int, accumulate: int, expected: float) -> None:
    assert scaled_weight_decay(5e-4, batch_size, accumulate) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("lr0", "batch_size", "name", "expected"),
    [
        (0.01, 16, "SGD", 0.01),  # 16 x 4 accumulated = 64 images per step: unchanged
        (0.01, 128, "SGD", 0.02),
        (0.01, 48, "SGD", 0.0075),  # 48 images per step (accumulate 1)
        (0.01, 512, "SGD", 0.05),  # clamped to the SGD ceiling
        (1e-5, 48, "SGD", 1e-4),  # clamped to the SGD floor
        (0.01, 64, "Adam", 0.003),
        (1e-3, 128, "AdamW", 0.002),
        (1e-6, 64, "AdamW", 1e-5),
        (1e-3, 32, "RMSprop", 1e-3),  # 32 x 2 accumulated
        (1e-3, 256, "RMSprop", 0.003),
    ],
)
def test_fit_learning_rate(lr0: float, batch_size: int, name: str, expected: float) -> None:
    assert fit_learning_rate(lr0, batch_size, name) == pytest.approx(expected)


def test_fit_learning_rate_logs_the_rate_used(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="utils.training.optim"):
        fit_learning_rate(0.01, 512, "sgd")
    assert "0.01 -> 0.05" in caplog.text


def test_fit_learning_rate_rejects_unknown_optimizer() -> None:
    with pytest.raises(UserError, match="valid optimizers: SGD, Adam, AdamW, RMSprop"):
        fit_learning_rate(0.01, 64, "Adagrad")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_empty_groups_are_kept_in_place(name: str) -> None:
    model = nn.Conv2d(1, 1, 1, bias=False)  # nothing for the bias and norm groups
    optimizer = build_optimizer(model, name, lr=0.01, momentum=0.9, weight_decay=0.0)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()
    optimizer.load_state_dict(optimizer.state_dict())
    assert [len(group["params"]) for group in optimizer.param_groups] == [0, 0, 1]


def test_detection_model_groups() -> None:
    from models.yolo import build_model

    model = build_model("yolov5n.yaml", num_classes=2)
    groups = {name: {id(parameter) for parameter in members} for name, members in parameter_groups(model).items()}
    batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    assert groups["norm"] == {id(norm.weight) for norm in batch_norms}
    assert {id(norm.bias) for norm in batch_norms} <= groups["bias"]
    assert sum(map(len, groups.values())) == len(list(model.parameters()))
