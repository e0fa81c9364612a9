"""Tests for utils/training/ema.py: the ramped-decay formula, what is averaged, wrapped models, state round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from utils.training.ema import ModelEMA


def tiny_model(value: float = 1.0) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.fill_(value)
    return model


def set_model(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.fill_(value)
            else:
                tensor.fill_(7)


def test_one_update_by_hand() -> None:
    model = tiny_model(1.0)
    ema = ModelEMA(model, decay=0.9, tau=1)
    set_model(model, 3.0)
    ema.update(model)
    keep = 0.9 * (1 - math.exp(-1))  # 0.5689085
    for key, tensor in ema.state_dict().items():
        if tensor.dtype.is_floating_point:
            assert torch.allclose(tensor, torch.full_like(tensor, 3 - 2 * keep)), key  # 1.862183
    assert ema.updates == 1


def test_integer_buffers_are_not_averaged() -> None:
    model = tiny_model()
    ema = ModelEMA(model)
    set_model(model, 2.0)
    ema.update(model)
    assert ema.ema[1].num_batches_tracked.item() == 0
    assert not torch.equal(ema.ema[1].running_mean, torch.ones(3))  # floating buffers are averaged


@pytest.mark.parametrize(("updates", "expected"), [(0, 0.0), (2000, 0.9999 * (1 - math.exp(-1))), (10**6, 0.9999)])
def test_default_decay_ramp(updates: int, expected: float) -> None:
    assert ModelEMA(tiny_model()).decay_at(updates) == pytest.approx(expected)


def test_copy_is_frozen_in_eval_mode_and_independent() -> None:
    model = tiny_model()
    ema = ModelEMA(model.train())
    assert not ema.ema.training and model.training
    assert not any(parameter.requires_grad for parameter in ema.ema.parameters())
    set_model(model, 5.0)
    assert torch.equal(ema.ema[0].weight, torch.ones(3, 2))


def test_wrapped_model_is_unwrapped() -> None:
    model = tiny_model()
    ema = ModelEMA(nn.DataParallel(model))
    assert set(ema.state_dict()) == set(model.state_dict())
    set_model(model, 3.0)
    ema.update(nn.DataParallel(model))
    assert ema.ema[0].weight[0, 0].item() > 1.0


def test_state_round_trip_continues_exactly() -> None:
    model = tiny_model()
    ema = ModelEMA(model)
    for value in (2.0, 3.0, 4.0):
        set_model(model, value)
        ema.update(model)
    restored = ModelEMA(tiny_model(0.0))
    restored.load_state_dict(ema.state_dict(), ema.updates)
    assert restored.updates == 3
    set_model(model, 9.0)
    ema.update(model)
    restored.update(model)
    for key, tensor in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[key], tensor), key
