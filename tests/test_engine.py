"""Tests for utils/training/engine.py: loss terms by name, accumulation, non-finite losses, EMA updates, warmup."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from utils.data.prepared import prepare_data
from utils.errors import UserError
from utils.training.ema import ModelEMA
from utils.training.engine import LOSS_TERMS, NonFiniteLossError, StepContext, epoch_progress, train_one_epoch
from utils.training.hyp import StepHyp
from utils.training.optim import GROUP_NAMES, OPTIMIZERS, build_optimizer
from utils.training.options import OutputOptions, TrainOptions
from utils.training.schedule import build_scheduler, iteration_settings
from utils.training.trainer import build_detector, build_step_context, build_train_loader

STEP = StepHyp(lr0=0.01, momentum=0.937, warmup_momentum=0.8, warmup_bias_lr=0.1)
NUM_BATCHES = 8
BATCH_SIZE = 4
IMAGE_SIZE = 8
TERM_NAMES = tuple(f"train/{name}" for name in LOSS_TERMS)


def tiny_model() -> nn.Module:
    """A conv + norm + linear net: every optimizer group (bias, norm, decay) gets parameters."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, len(LOSS_TERMS))
    )


def tiny_loader(num_batches: int = NUM_BATCHES) -> list[tuple]:
    """Batches as the real loaders give them: uint8 images (b, 3, h, w), targets (n, 6), paths and shapes."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(num_batches):
        images = torch.randint(0, 256, (BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator, dtype=torch.uint8)
        targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]])
        batches.append((images, targets, [f"{index}.jpg" for index in range(BATCH_SIZE)], [None] * BATCH_SIZE))
    return batches


class RecordingLoss:
    """Squared outputs as the three loss terms; records each call's terms and the optimizer's groups at that time.

    ``poison`` makes the total of call number ``poison_call`` (0-based) that value (NaN, inf).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, poison: float | None = None, poison_call: int = 0) -> None:
        self.optimizer = optimizer
        self.poison, self.poison_call = poison, poison_call
        self.terms: list[dict[str, float]] = []
        self.groups: list[dict[str, dict]] = []

    def __call__(self, predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.groups.append({group["name"]: dict(group, params=None) for group in self.optimizer.param_groups})
        squared = (predictions**2).mean(0)  # (3,) one value per term
        terms = {name: squared[index].detach() for index, name in enumerate(LOSS_TERMS)}
        self.terms.append({name: value.item() for name, value in terms.items()})
        total = squared.sum()
        if self.poison is not None and len(self.terms) - 1 == self.poison_call:
            total = total * self.poison
        return total, terms


def make_context(
    model: nn.Module,
    optimizer_name: str = "SGD",
    batch_size: int = BATCH_SIZE,
    nominal_batch: int = 16,
    warmup_iters: int = 0,
    ema: bool = True,
    poison: float | None = None,
    poison_call: int = 0,
    num_batches: int = NUM_BATCHES,
) -> StepContext:
    optimizer = build_optimizer(model, optimizer_name, STEP.lr0, STEP.momentum, weight_decay=5e-4)
    return StepContext(
        optimizer=optimizer,
        scheduler=build_scheduler("linear", epochs=10, lrf=0.1),
        loss_fn=RecordingLoss(optimizer, poison, poison_call),
        ema=ModelEMA(model) if ema else None,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        step_hyp=STEP,
        device=torch.device("cpu"),
        batch_size=batch_size,
        nominal_batch=nominal_batch,
        warmup_iters=warmup_iters,
        num_batches=num_batches,
    )


def count_steps(context: StepContext) -> list[int]:
    """Wrap ``optimizer.step`` so that each call records how many batches the loss had seen by then."""
    calls: list[int] = []
    original = context.optimizer.step

    def step(*args, **kwargs):
        calls.append(len(context.loss_fn.terms) - 1)
        return original(*args, **kwargs)

    context.optimizer.step = step
    return calls


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_returns_mean_loss_terms_by_name_and_changes_weights(optimizer_name: str) -> None:
    model = tiny_model()
    context = make_context(model, optimizer_name)
    before = weights(model)
    means = train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    assert tuple(means) == TERM_NAMES
    recorded = context.loss_fn.terms
    assert len(recorded) == NUM_BATCHES
    for name in LOSS_TERMS:
        assert math.isfinite(means[f"train/{name}"])
        expected = sum(terms[name] for terms in recorded) / len(recorded)
        assert means[f"train/{name}"] == pytest.approx(expected, rel=1e-5)
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert "0.weight" in changed and "4.weight" in changed and "1.weight" in changed  # decay and norm groups


@pytest.mark.parametrize(
    ("batch_size", "nominal_batch", "expected_steps"),
    [
        (4, 16, [3, 7]),  # accumulate 4
        (4, 8, [1, 3, 5, 7]),  # accumulate 2
        (4, 4, [0, 1, 2, 3, 4, 5, 6, 7]),  # no accumulation
        (2, 16, [7]),  # accumulate 8
        (16, 4, [0, 1, 2, 3, 4, 5, 6, 7]),  # a batch above nominal never accumulates below one
    ],
)
def test_optimizer_steps_once_per_accumulated_nominal_batch(
    batch_size: int, nominal_batch: int, expected_steps: list[int]
) -> None:
    model = tiny_model()
    context = make_context(model, batch_size=batch_size, nominal_batch=nominal_batch)
    steps = count_steps(context)
    train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    assert steps == expected_steps
    assert context.last_optimizer_step == expected_steps[-1]
    assert context.ema.updates == len(expected_steps)


def test_accumulation_cadence_continues_across_epochs() -> None:
    model = tiny_model()
    context = make_context(model, nominal_batch=16, num_batches=6)
    steps = count_steps(context)
    for epoch in range(2):
        train_one_epoch(model, tiny_loader(6), context, epoch=epoch, epochs=10, show_progress=False)
    # global iterations 0-11 with accumulate 4: steps at 3, 7 and 11, i.e. batches 3 of epoch 0 and 1 and 5 of epoch 1
    assert steps == [3, 7, 11]
    assert context.last_optimizer_step == 11


def test_accumulation_ramps_up_from_one_during_warmup() -> None:
    model = tiny_model()
    context = make_context(model, nominal_batch=16, warmup_iters=NUM_BATCHES)
    steps = count_steps(context)
    train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    assert steps[:2] == [0, 1]  # accumulate 1 at the start of warmup
    gaps = [later - earlier for earlier, later in zip(steps, steps[1:])]
    assert gaps == sorted(gaps) and max(gaps) <= 4 and len(steps) > 2  # about 16 / 4 by the end


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_loss_raises_naming_epoch_and_batch(poison: float) -> None:
    model = tiny_model()
    context = make_context(model, nominal_batch=4, poison=poison, poison_call=2)
    with pytest.raises(NonFiniteLossError, match=rf"loss became {poison} at epoch 3, batch 2\b") as error:
        train_one_epoch(model, tiny_loader(), context, epoch=3, epochs=10, show_progress=False)
    assert isinstance(error.value, UserError)
    assert context.last_optimizer_step == 3 * NUM_BATCHES + 1  # batches 0 and 1 stepped, the poisoned one did not
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values() if tensor.is_floating_point())


def test_ema_updates_once_per_optimizer_step() -> None:
    model = tiny_model()
    context = make_context(model, nominal_batch=8)
    initial_ema = weights(context.ema.ema)
    steps = count_steps(context)
    train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    assert context.ema.updates == len(steps) == 4
    assert not torch.equal(context.ema.ema.state_dict()["0.weight"], initial_ema["0.weight"])
    assert context.ema.ema.training is False


def test_without_ema_training_still_steps() -> None:
    model = tiny_model()
    context = make_context(model, nominal_batch=8, ema=False)
    before = weights(model)
    steps = count_steps(context)
    means = train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    assert context.ema is None
    assert steps == [1, 3, 5, 7]
    assert not torch.equal(model.state_dict()["0.weight"], before["0.weight"])
    assert tuple(means) == TERM_NAMES


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_warmup_writes_iteration_settings_into_param_groups(optimizer_name: str) -> None:
    model = tiny_model()
    context = make_context(model, optimizer_name, warmup_iters=20)
    train_one_epoch(model, tiny_loader(), context, epoch=0, epochs=10, show_progress=False)
    first = context.loss_fn.groups[0]
    assert {name: group["lr"] for name, group in first.items()} == {"bias": 0.1, "norm": 0.0, "decay": 0.0}
    first_momentum = first["decay"]["betas"][0] if "betas" in first["decay"] else first["decay"]["momentum"]
    assert first_momentum == STEP.warmup_momentum
    for iteration, groups in enumerate(context.loss_fn.groups):
        settings = iteration_settings(
            iteration, 0, context.warmup_iters, context.scheduler, context.step_hyp, context.batch_size,
            context.nominal_batch,
        )  # fmt: skip
        assert set(groups) == set(GROUP_NAMES)
        for name, group in groups.items():
            assert group["lr"] == pytest.approx(settings.learning_rates[name], abs=1e-12), (iteration, name)
            momentum = group["betas"][0] if "betas" in group else group["momentum"]
            assert momentum == pytest.approx(settings.momentum), (iteration, name)


def test_after_warmup_every_group_uses_the_scheduled_rate() -> None:
    model = tiny_model()
    context = make_context(model, warmup_iters=4)
    train_one_epoch(model, tiny_loader(), context, epoch=2, epochs=10, show_progress=False)
    target = STEP.lr0 * context.scheduler.factor(2)  # 0.01 * (1 - 0.2 * 0.9)
    assert target == pytest.approx(0.0082)
    for groups in context.loss_fn.groups:
        assert all(group["lr"] == pytest.approx(target) for group in groups.values())
        assert all(group["momentum"] == STEP.momentum for group in groups.values())


def test_progress_prints_yolov5_columns(capsys: pytest.CaptureFixture[str]) -> None:
    loader = tiny_loader(2)
    assert epoch_progress(loader, 0, 10, enabled=False) is loader
    model = tiny_model()
    train_one_epoch(model, loader, make_context(model), epoch=3, epochs=10, show_progress=True)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    for column in ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"):
        assert column in text
    assert "3/9" in text


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path):
    return prepare_data(tiny_dataset, 64)


def test_real_detector_and_loss_train_one_epoch(prepared, default_hyp: dict) -> None:
    hyp = {key: float(value) for key, value in default_hyp.items()}
    options = TrainOptions(
        epochs=2, batch_size=4, workers=0, autoanchor=False, outputs=OutputOptions(show_progress=False, plots=False)
    )
    torch.manual_seed(0)
    model = build_detector(hyp, options, prepared)
    _, loader = build_train_loader(hyp, options, prepared)
    context = build_step_context(model, hyp, options, prepared, num_batches=len(loader))
    before = weights(model)
    means = train_one_epoch(model, loader, context, epoch=0, epochs=options.epochs, show_progress=False)
    assert tuple(means) == TERM_NAMES
    assert all(math.isfinite(value) and value >= 0 for value in means.values())
    assert means["train/box_loss"] > 0 and means["train/obj_loss"] > 0
    assert context.ema.updates >= 1 and context.last_optimizer_step >= 0
    assert any(not torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
