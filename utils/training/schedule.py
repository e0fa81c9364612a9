"""Learning-rate schedules per epoch, the per-iteration warmup on top of them, and their command-line flags.

How the pieces compose: a ``Scheduler`` gives ``factor(epoch)``, a multiplier on lr0 that is constant for the whole
epoch (yolov5's granularity). ``iteration_settings`` turns it into each group's learning rate for one iteration:
during the first ``warmup_iters`` iterations the bias group falls from ``warmup_bias_lr`` and the other groups rise
from 0, all towards ``lr0 * factor(epoch)``; afterwards every group uses ``lr0 * factor(epoch)``. The ramp is linear
in the iteration, except for ``warmcos`` whose ramp is quadratic (YOLOX). Momentum (Adam's beta1) and the gradient
accumulation always ramp linearly. Every schedule is a pure function of the epoch except ``plateau``, whose memory
(best fitness, epochs without improvement, epochs where it cut the LR) lives in its ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import numpy as np
import torch

from utils.errors import UserError
from utils.training.hyp import StepHyp
from utils.training.optim import GROUP_NAMES, NOMINAL_BATCH, nominal_accumulation

SCHEDULERS = ("linear", "cos", "step", "multistep", "exp", "plateau", "warmcos")
MIN_WARMUP_ITERS = 100


@dataclass
class Scheduler:
    """A multiplier on lr0 per epoch; ``epochs`` is the length of the run and ``lrf`` the final (and lowest) factor."""

    epochs: int
    lrf: float
    name: ClassVar[str] = ""
    warmup_shape: ClassVar[str] = "linear"  # how iteration_settings ramps the LR: "linear" or "quadratic"

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self, epoch: int, fitness: float | None) -> None:
        """Report the validation fitness at the end of ``epoch``; only plateau listens."""

    def state_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore parameters and memory exactly; a state from another schedule is a UserError."""
        if state.get("name") != self.name:
            raise UserError(f"the checkpoint's scheduler is '{state.get('name')}', not '{self.name}'")
        for item in fields(self):
            if item.name not in state:
                raise UserError(f"the checkpoint's '{self.name}' scheduler state has no '{item.name}'")
            value = state[item.name]
            setattr(self, item.name, list(value) if isinstance(value, (list, tuple)) else value)


@dataclass
class LinearScheduler(Scheduler):
    name: ClassVar[str] = "linear"

    def factor(self, epoch: int) -> float:
        return (1 - epoch / self.epochs) * (1 - self.lrf) + self.lrf


@dataclass
class CosineScheduler(Scheduler):
    name: ClassVar[str] = "cos"

    def factor(self, epoch: int) -> float:
        return ((1 - math.cos(epoch * math.pi / self.epochs)) / 2) * (self.lrf - 1) + 1


@dataclass
class StepScheduler(Scheduler):
    step_size: int
    gamma: float
    name: ClassVar[str] = "step"

    def factor(self, epoch: int) -> float:
        return max(self.gamma ** (epoch // self.step_size), self.lrf)


@dataclass
class MultiStepScheduler(Scheduler):
    milestones: list[int]
    gamma: float
    name: ClassVar[str] = "multistep"

    def factor(self, epoch: int) -> float:
        return max(self.gamma ** sum(epoch >= milestone for milestone in self.milestones), self.lrf)


@dataclass
class ExponentialScheduler(Scheduler):
    """``lrf ** (epoch / epochs)``: torch's ExponentialLR with gamma = lrf ** (1 / epochs), from 1 to lrf."""

    name: ClassVar[str] = "exp"

    def factor(self, epoch: int) -> float:
        return self.lrf ** (epoch / self.epochs)


@dataclass
class PlateauScheduler(Scheduler):
    """Multiply by ``gamma`` (never below lrf) after more than ``patience`` epochs without a higher fitness."""

    gamma: float
    patience: int
    best: float = -math.inf
    bad_epochs: int = 0
    reduction_epochs: list[int] = field(default_factory=list)  # a cut at the end of epoch r applies from r + 1
    name: ClassVar[str] = "plateau"

    def factor(self, epoch: int) -> float:
        cuts = sum(reduction < epoch for reduction in self.reduction_epochs)
        return max(self.gamma**cuts, self.lrf)

    def step(self, epoch: int, fitness: float | None) -> None:
        if fitness is None:  # no validation this epoch (--noval): no evidence either way
            return
        if fitness > self.best:  # NaN is never an improvement
            self.best = float(fitness)
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.reduction_epochs.append(epoch)
            self.bad_epochs = 0


@dataclass
class WarmCosineScheduler(Scheduler):
    """YOLOX's yoloxwarmcos per epoch: 1 while warming up, cosine down to lrf, then lrf for the last ``hold_epochs``.

    The quadratic warmup itself comes from iteration_settings (``warmup_shape``), starting from 0 for the weights as
    in YOLOX's default and from warmup_bias_lr for the biases. The cosine starts at epoch ceil(warmup_epochs).
    """

    warmup_epochs: float
    hold_epochs: int
    name: ClassVar[str] = "warmcos"
    warmup_shape: ClassVar[str] = "quadratic"

    def factor(self, epoch: int) -> float:
        decay_end = self.epochs - self.hold_epochs
        decay_start = min(math.ceil(self.warmup_epochs), decay_end)
        if epoch < decay_start:
            return 1.0
        if epoch >= decay_end:
            return self.lrf
        progress = (epoch - decay_start) / (decay_end - decay_start)
        return self.lrf + (1 - self.lrf) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler_name(name: str) -> str:
    """The canonical spelling of a scheduler name (case-insensitive); UserError listing the valid ones otherwise."""
    if name.lower() in SCHEDULERS:
        return name.lower()
    raise UserError(f"unknown scheduler '{name}'; valid schedulers: {', '.join(SCHEDULERS)}")


def default_milestones(epochs: int) -> list[int]:
    """multistep's default milestones: 70% and 90% of the run."""
    return sorted({max(round(epochs * 0.7), 1), max(round(epochs * 0.9), 1)})


def _check_params(
    name: str, epochs: int, step_size: int, milestones: list[int], gamma: float, patience: int, hold_epochs: int
) -> None:
    """UserError for a parameter the schedule ``name`` uses that is out of range."""
    if epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    if name == "step" and step_size < 1:
        raise UserError(f"--lr-step-size must be at least 1, got {step_size}")
    if name == "multistep" and (not milestones or min(milestones) < 1 or milestones != sorted(set(milestones))):
        raise UserError(f"--lr-milestones must be increasing epochs >= 1, got {milestones}")
    if name in ("step", "multistep", "plateau") and not 0 < gamma <= 1:
        raise UserError(f"--lr-gamma must be in (0, 1], got {gamma}")
    if name == "plateau" and patience < 0:
        raise UserError(f"--lr-patience must be >= 0, got {patience}")
    if name == "warmcos" and not 0 <= hold_epochs < epochs:
        raise UserError(f"--min-lr-epochs (default: --close-mosaic) must be in [0, {epochs}), got {hold_epochs}")


def build_scheduler(
    name: str,
    epochs: int,
    lrf: float,
    warmup_epochs: float = 0.0,
    step_size: int | None = None,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    patience: int = 10,
    hold_epochs: int = 0,
) -> Scheduler:
    """The schedule ``name``; parameters another schedule uses are ignored.

    step: ``gamma ** (epoch // step_size)``, step_size defaulting to epochs // 3. multistep: ``gamma`` per milestone
    passed, milestones defaulting to 70% and 90% of the run. exp: ``lrf ** (epoch / epochs)``. plateau: ``gamma``
    after more than ``patience`` epochs without a better fitness. warmcos: see WarmCosineScheduler. Every schedule
    stays at or above lrf.
    """
    name = scheduler_name(name)
    step_size = max(epochs // 3, 1) if step_size is None else step_size
    milestones = default_milestones(epochs) if milestones is None else list(milestones)
    _check_params(name, epochs, step_size, milestones, gamma, patience, hold_epochs)
    if name == "linear":
        return LinearScheduler(epochs, lrf)
    if name == "cos":
        return CosineScheduler(epochs, lrf)
    if name == "step":
        return StepScheduler(epochs, lrf, step_size, gamma)
    if name == "multistep":
        return MultiStepScheduler(epochs, lrf, milestones, gamma)
    if name == "exp":
        return ExponentialScheduler(epochs, lrf)
    if name == "plateau":
        return PlateauScheduler(epochs, lrf, gamma, patience)
    return WarmCosineScheduler(epochs, lrf, warmup_epochs, hold_epochs)


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int, minimum: int = MIN_WARMUP_ITERS) -> int:
    """yolov5's warmup length: ``max(round(warmup_epochs * batches_per_epoch), 100)`` iterations."""
    return max(round(warmup_epochs * batches_per_epoch), minimum)


def warmup_trap(
    warmup_epochs: float, batches_per_epoch: int, epochs: int, minimum: int = MIN_WARMUP_ITERS
) -> str | None:
    """One line when warmup would take more than half of a run's iterations, else None.

    yolov5's floor of 100 warmup iterations swallows short runs on small data (46 images at batch 16 are 3 batches an
    epoch): the run then trains mostly below lr0, and an evolved ``warmup_epochs`` changes nothing.
    """
    warmup = warmup_iterations(warmup_epochs, batches_per_epoch, minimum)
    total = epochs * batches_per_epoch
    if 2 * warmup <= total:
        return None
    floor = round(warmup_epochs * batches_per_epoch) < minimum  # the floor, not warmup_epochs, sets the length
    effect = " and warmup_epochs has no effect" if floor else ""
    remedies = (
        f"more --epochs, a smaller --batch, or --min-warmup-iters {max(total // 10, 1)}" if floor
        else "fewer warmup_epochs or more --epochs"
    )  # fmt: skip
    return (
        f"warmup trap: warmup takes {min(warmup, total)} of this run's {total} iterations "
        f"(max(warmup_epochs {warmup_epochs:g} x {batches_per_epoch} batches per epoch, --min-warmup-iters {minimum}) "
        f"= {warmup}), so it trains mostly below lr0{effect}; use {remedies}"
    )


@dataclass(frozen=True)
class IterationSettings:
    """What the optimizer uses for one iteration; ``apply_iteration`` writes it into the param groups."""

    learning_rates: dict[str, float]  # per group name in GROUP_NAMES
    momentum: float  # SGD / RMSprop momentum, Adam beta1
    accumulate: int  # batches per optimizer step


def learning_rates(
    iteration: int, epoch: int, warmup_iters: int, scheduler: Scheduler, step_hyp: StepHyp
) -> dict[str, float]:
    """Each group's LR at a global ``iteration`` (counted from the start of the run) inside ``epoch``."""
    target = step_hyp.lr0 * scheduler.factor(epoch)
    if iteration >= warmup_iters:
        return {group: target for group in GROUP_NAMES}
    progress = iteration / warmup_iters
    ramp = progress**2 if scheduler.warmup_shape == "quadratic" else progress
    starts = {group: step_hyp.warmup_bias_lr if group == "bias" else 0.0 for group in GROUP_NAMES}
    return {group: start + (target - start) * ramp for group, start in starts.items()}


def iteration_settings(
    iteration: int,
    epoch: int,
    warmup_iters: int,
    scheduler: Scheduler,
    step_hyp: StepHyp,
    batch_size: int,
    nominal_batch: int = NOMINAL_BATCH,
) -> IterationSettings:
    """Learning rates, momentum and accumulation for one iteration, warmup included (pure given the scheduler)."""
    rates = learning_rates(iteration, epoch, warmup_iters, scheduler, step_hyp)
    if iteration >= warmup_iters:
        return IterationSettings(rates, step_hyp.momentum, nominal_accumulation(batch_size, nominal_batch))
    points = [0, warmup_iters]
    momentum = float(np.interp(iteration, points, [step_hyp.warmup_momentum, step_hyp.momentum]))
    accumulate = max(1, round(float(np.interp(iteration, points, [1, nominal_batch / batch_size]))))
    return IterationSettings(rates, momentum, accumulate)


def apply_iteration(optimizer: torch.optim.Optimizer, settings: IterationSettings) -> None:
    """Write the settings into the optimizer's groups (matched by their "name"); Adam's beta1 takes the momentum."""
    for group in optimizer.param_groups:
        group["lr"] = settings.learning_rates[group["name"]]
        if "betas" in group:
            group["betas"] = (settings.momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = settings.momentum


def learning_rate_curve(
    scheduler: Scheduler, step_hyp: StepHyp, batches_per_epoch: int, warmup_iters: int
) -> tuple[list[float], dict[str, list[float]]]:
    """The LR of every group over the whole run, x in epochs: every warmup iteration, then each point of change.

    Exact for every schedule; for plateau the epochs not yet reached use its current factor.
    """
    total = scheduler.epochs * batches_per_epoch
    changes = {warmup_iters} | set(range(0, total, batches_per_epoch))
    iterations = sorted(set(range(min(warmup_iters, total))) | {i for i in changes if warmup_iters <= i < total})
    axis: list[float] = []
    curve: dict[str, list[float]] = {group: [] for group in GROUP_NAMES}
    for iteration in [*iterations, total]:  # the closing point draws the last epoch's step to the end
        epoch = min(iteration // batches_per_epoch, scheduler.epochs - 1)
        rates = learning_rates(iteration, epoch, warmup_iters, scheduler, step_hyp)
        axis.append(iteration / batches_per_epoch)
        for group in GROUP_NAMES:
            curve[group].append(rates[group])
    return axis, curve


def close_mosaic_epoch(epochs: int, close_mosaic: int) -> int:
    """The first epoch trained without mosaic and mixup (``epochs`` when --close-mosaic is 0, i.e. never)."""
    if close_mosaic < 0:
        raise UserError(f"--close-mosaic must be >= 0, got {close_mosaic}")
    return max(epochs - close_mosaic, 0) if close_mosaic else epochs
