"""Tests for utils/training/schedule.py: every schedule's values, warmup on each, plateau memory, resume, flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.errors import UserError
from utils.plots.training import plot_lr
from utils.training.hyp import StepHyp
from utils.training.optim import OPTIMIZERS, build_optimizer
from utils.training.schedule import (
    SCHEDULERS,
    Scheduler,
    apply_iteration,
    build_scheduler,
    close_mosaic_epoch,
    iteration_settings,
    learning_rate_curve,
    warmup_iterations,
    warmup_trap,
)

STEP = StepHyp(lr0=0.01, momentum=0.937, warmup_momentum=0.8, warmup_bias_lr=0.1)


def scheduler(name: str, **params: object) -> Scheduler:
    return build_scheduler(name, epochs=10, lrf=0.1, **params)


@pytest.mark.parametrize(
    ("name", "params", "epoch", "expected"),
    [
        ("linear", {}, 0, 1.0),
        ("linear", {}, 5, 0.55),
        ("linear", {}, 10, 0.1),
        ("cos", {}, 0, 1.0),
        ("cos", {}, 3, 0.8145033),  # (1 - cos(0.3 pi)) / 2 * (0.1 - 1) + 1
        ("cos", {}, 5, 0.55),
        ("cos", {}, 10, 0.1),
        ("step", {"step_size": 3, "gamma": 0.5}, 2, 1.0),
        ("step", {"step_size": 3, "gamma": 0.5}, 3, 0.5),
        ("step", {"step_size": 3, "gamma": 0.5}, 9, 0.125),
        ("step", {"step_size": 3, "gamma": 0.1}, 6, 0.1),  # 0.01 held at lrf
        ("step", {}, 3, 0.1),  # default step_size 10 // 3 = 3, gamma 0.1
        ("multistep", {"milestones": [4, 7], "gamma": 0.5}, 3, 1.0),
        ("multistep", {"milestones": [4, 7], "gamma": 0.5}, 4, 0.5),
        ("multistep", {"milestones": [4, 7], "gamma": 0.5}, 7, 0.25),
        ("multistep", {"gamma": 0.5}, 6, 1.0),  # default milestones 7 and 9
        ("multistep", {"gamma": 0.5}, 7, 0.5),
        ("multistep", {"gamma": 0.5}, 9, 0.25),
        ("exp", {}, 0, 1.0),
        ("exp", {}, 5, 0.31622777),  # 0.1 ** 0.5
        ("exp", {}, 10, 0.1),
        ("plateau", {}, 7, 1.0),  # nothing reported yet
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 0, 1.0),
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 2, 1.0),  # cosine from epoch 2 to epoch 7
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 3, 0.91405765),  # 0.1 + 0.45 * (1 + cos(0.2 pi))
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 6, 0.18594235),  # 0.1 + 0.45 * (1 + cos(0.8 pi))
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 7, 0.1),  # held minimum
        ("warmcos", {"warmup_epochs": 2, "hold_epochs": 3}, 9, 0.1),
        ("warmcos", {"warmup_epochs": 1.5, "hold_epochs": 0}, 2, 1.0),  # decay starts at ceil(1.5)
        ("warmcos", {"warmup_epochs": 0, "hold_epochs": 0}, 5, 0.55),
    ],
)
def test_factor(name: str, params: dict, epoch: int, expected: float) -> None:
    assert scheduler(name, **params).factor(epoch) == pytest.approx(expected)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_schedule_starts_at_one_and_stays_within_lrf_and_one(name: str) -> None:
    schedule = scheduler(name, warmup_epochs=3, hold_epochs=2, gamma=0.3, patience=0)
    for epoch, fitness in enumerate([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]):
        schedule.step(epoch, fitness)
    factors = [schedule.factor(epoch) for epoch in range(10)]
    assert factors[0] == 1.0
    assert all(0.1 - 1e-12 <= factor <= 1.0 for factor in factors)
    assert factors[-1] < 1.0


def test_plateau_memory() -> None:
    schedule = scheduler("plateau", gamma=0.5, patience=1)
    fitnesses = [0.5, 0.4, 0.4, 0.6, None, 0.1, 0.1, float("nan"), 0.1, 0.1]  # cuts after epochs 2, 6 and 8
    for epoch, fitness in enumerate(fitnesses):
        schedule.step(epoch, fitness)
    factors = [schedule.factor(epoch) for epoch in range(12)]
    assert factors == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.125])
    assert schedule.best == 0.6
    schedule.step(10, 0.1)
    schedule.step(11, 0.1)
    assert schedule.factor(12) == 0.1  # 0.0625 held at lrf


@pytest.mark.parametrize("name", SCHEDULERS)
def test_restored_scheduler_continues_exactly(name: str, tmp_path) -> None:
    params = {"warmup_epochs": 1, "hold_epochs": 2, "gamma": 0.5, "patience": 1, "step_size": 2}
    original = scheduler(name, **params)
    for epoch, fitness in enumerate([0.3, 0.2, 0.2, 0.4]):
        original.step(epoch, fitness)
    torch.save({"scheduler": original.state_dict()}, tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)["scheduler"]
    restored = build_scheduler(name, epochs=99, lrf=0.5)  # parameters come back from the state too
    restored.load_state_dict(state)
    assert restored.state_dict() == original.state_dict()
    for epoch, fitness in zip(range(4, 10), [0.3, 0.3, 0.3, 0.5, 0.1, 0.1]):
        original.step(epoch, fitness)
        restored.step(epoch, fitness)
        assert restored.factor(epoch + 1) == original.factor(epoch + 1)
    assert restored.state_dict() == original.state_dict()


def test_loading_another_schedules_state_is_a_user_error() -> None:
    with pytest.raises(UserError, match="scheduler is 'cos', not 'linear'"):
        scheduler("linear").load_state_dict(scheduler("cos").state_dict())


@pytest.mark.parametrize("spelling", ["Cos", "WARMCOS", "plateau"])
def test_scheduler_names_are_case_insensitive(spelling: str) -> None:
    assert scheduler(spelling).name == spelling.lower()


def test_unknown_scheduler_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unknown scheduler 'onecycle'") as error:
        scheduler("onecycle")
    assert all(name in str(error.value) for name in SCHEDULERS)


@pytest.mark.parametrize(
    ("name", "params", "flag"),
    [
        ("step", {"step_size": 0}, "--lr-step-size"),
        ("multistep", {"milestones": [5, 3]}, "--lr-milestones"),
        ("multistep", {"milestones": [0, 3]}, "--lr-milestones"),
        ("step", {"gamma": 1.5}, "--lr-gamma"),
        ("plateau", {"gamma": 0.0}, "--lr-gamma"),
        ("plateau", {"patience": -1}, "--lr-patience"),
        ("warmcos", {"hold_epochs": 10}, "--min-lr-epochs"),
    ],
)
def test_bad_schedule_parameters_are_user_errors(name: str, params: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag):
        scheduler(name, **params)


@pytest.mark.parametrize(
    ("warmup_epochs", "batches_per_epoch", "expected"),
    [(3.0, 100, 300), (3.0, 10, 100), (0.0, 500, 100), (0.5, 401, 200)],
)
def test_warmup_iterations(warmup_epochs: float, batches_per_epoch: int, expected: int) -> None:
    assert warmup_iterations(warmup_epochs, batches_per_epoch) == expected


@pytest.mark.parametrize("name", SCHEDULERS)
def test_warmup_on_top_of_every_schedule(name: str) -> None:
    schedule = scheduler(name, warmup_epochs=3)
    start = iteration_settings(0, 0, 100, schedule, STEP, batch_size=16)
    assert start.learning_rates == {"bias": 0.1, "norm": 0.0, "decay": 0.0}
    assert (start.momentum, start.accumulate) == (0.8, 1)
    middle = iteration_settings(50, 0, 100, schedule, STEP, batch_size=16)
    ramp = 0.25 if name == "warmcos" else 0.5  # warmcos ramps quadratically
    assert middle.learning_rates["bias"] == pytest.approx(0.1 + (0.01 - 0.1) * ramp)
    assert middle.learning_rates["decay"] == middle.learning_rates["norm"] == pytest.approx(0.01 * ramp)
    assert middle.momentum == pytest.approx(0.8685)
    after = iteration_settings(250, 2, 100, schedule, STEP, batch_size=16)
    assert list(after.learning_rates.values()) == pytest.approx([0.01 * schedule.factor(2)] * 3)
    assert (after.momentum, after.accumulate) == (0.937, 4)


def test_warmup_rises_towards_the_current_epochs_factor() -> None:
    settings = iteration_settings(150, 1, 300, scheduler("linear"), STEP, batch_size=64)  # factor(1) = 0.91
    assert settings.learning_rates == pytest.approx({"bias": 0.05455, "norm": 0.00455, "decay": 0.00455})


@pytest.mark.parametrize(
    ("iteration", "batch_size", "expected"),
    [(0, 16, 1), (10, 16, 1), (20, 16, 2), (50, 16, 2), (60, 16, 3), (99, 16, 4), (100, 16, 4), (5000, 16, 4)]
    + [(0, 128, 1), (50, 128, 1), (5000, 128, 1), (50, 8, 4), (5000, 8, 8)],
)
def test_accumulation_ramp(iteration: int, batch_size: int, expected: int) -> None:
    settings = iteration_settings(iteration, iteration // 1000, 100, scheduler("linear"), STEP, batch_size)
    assert settings.accumulate == expected


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_apply_iteration_sets_each_group(name: str) -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), name, lr=0.01, momentum=0.937, weight_decay=0.0)
    settings = iteration_settings(50, 0, 100, scheduler("linear"), STEP, batch_size=16)
    apply_iteration(optimizer, settings)
    for group in optimizer.param_groups:
        assert group["lr"] == settings.learning_rates[group["name"]]
        momentum = group["betas"][0] if "betas" in group else group["momentum"]
        assert momentum == pytest.approx(0.8685)
        if "betas" in group:
            assert group["betas"][1] == 0.999


def test_learning_rate_curve_covers_warmup_and_every_epoch() -> None:
    schedule = build_scheduler("linear", epochs=3, lrf=0.1)
    axis, curve = learning_rate_curve(schedule, STEP, batches_per_epoch=50, warmup_iters=100)
    assert len(axis) == 102  # 100 warmup iterations, the start of epoch 2, the end of the run
    assert axis[0] == 0 and axis[-1] == 3 and axis == sorted(axis)
    assert (curve["bias"][0], curve["decay"][0]) == (0.1, 0.0)
    assert curve["bias"][50] == pytest.approx(0.0535)  # halfway through warmup, rising to 0.01 * factor(1) = 0.007
    assert curve["norm"][50] == pytest.approx(0.0035)
    assert [curve[group][-1] for group in curve] == pytest.approx([0.004] * 3)  # factor(2) = 0.4


def test_plot_lr_writes_a_png(tmp_path) -> None:
    axis, curve = learning_rate_curve(scheduler("warmcos", warmup_epochs=3, hold_epochs=2), STEP, 20, 60)
    path = plot_lr(axis, curve, tmp_path / "run" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("epochs", "close_mosaic", "expected"), [(10, 0, 10), (10, 3, 7), (10, 15, 0)])
def test_close_mosaic_epoch(epochs: int, close_mosaic: int, expected: int) -> None:
    assert close_mosaic_epoch(epochs, close_mosaic) == expected


def test_close_mosaic_must_not_be_negative() -> None:
    with pytest.raises(UserError, match="--close-mosaic"):
        close_mosaic_epoch(10, -1)


@pytest.mark.parametrize(
    ("warmup_epochs", "batches", "epochs", "minimum", "warns"),
    [
        (3.0, 3, 10, 100, True),  # 46 images at batch 16: yolov5's floor swallows the whole run
        (0.0, 3, 10, 15, False),  # warmup is exactly half the run: not yet a trap
        (0.0, 3, 10, 16, True),  # one iteration more than half
        (5.0, 3, 10, 0, False),  # 15 of 30 from warmup_epochs alone
        (5.1, 3, 10, 0, False),  # round(15.3) = 15: still exactly half
        (5.2, 3, 10, 0, True),  # round(15.6) = 16: one over
        (3.0, 25, 30, 100, False),  # the built-in data at batch 16: 100 of 750
    ],
)
def test_warmup_trap_warns_exactly_above_half_the_run(warmup_epochs, batches, epochs, minimum, warns) -> None:
    message = warmup_trap(warmup_epochs, batches, epochs, minimum)
    assert (message is not None) is warns
    if message is not None:
        assert f"of this run's {batches * epochs} iterations" in message and "--min-warmup-iters" in message
