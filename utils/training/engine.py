"""One training epoch: forward, loss, accumulation, optimizer step, EMA, with warmup applied per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from utils.errors import UserError
from utils.training.ema import ModelEMA
from utils.training.hyp import StepHyp
from utils.training.schedule import Scheduler, apply_iteration, iteration_settings

LOSS_TERMS = ("box_loss", "obj_loss", "cls_loss")
GRADIENT_CLIP_NORM = 10.0
MULTI_SCALE_RANGE = (0.5, 1.5)  # --multi-scale: yolov5's image size +/- 50%


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops rather than train on garbage (last.pt is kept)."""


@dataclass(frozen=True)
class MultiScale:
    """--multi-scale: batch ``k`` of ``epoch`` is resized with ``default_rng([seed, epoch, k])``, so a seed gives the
    same sizes on every run, on resume and on every rank."""

    img_size: int
    stride: int  # the model's largest stride; sizes are multiples of it
    seed: int


def multi_scale_range(img_size: int, stride: int) -> tuple[int, int]:
    """(smallest, largest) side ``multi_scale_batch`` can draw: stride multiples around 0.5x and 1.5x ``img_size``."""
    low, high = (int(img_size * factor) for factor in MULTI_SCALE_RANGE)
    return max(low // stride * stride, stride), (high + stride - 1) // stride * stride


def multi_scale_batch(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, img_size: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch so its long side is a random stride multiple in ``multi_scale_range`` (yolov5's
    ``randrange(0.5 * img, 1.5 * img + stride) // stride * stride``); the short side is rounded up to a stride
    multiple, keeping rectangular batches rectangular.

    ``images``: float (b, 3, h, w); ``targets``: (n, 6) [image, cls, x, y, w, h] normalised, which a resize leaves
    unchanged, so they are returned as they are.
    """
    low, high = int(img_size * MULTI_SCALE_RANGE[0]), int(img_size * MULTI_SCALE_RANGE[1])
    size = max(int(rng.integers(low, high + stride)) // stride * stride, stride)
    factor = size / max(images.shape[2:])
    if factor == 1:
        return images, targets
    new_shape = [math.ceil(side * factor / stride) * stride for side in images.shape[2:]]
    return F.interpolate(images, size=new_shape, mode="bilinear", align_corners=False), targets


@dataclass
class StepContext:
    """What one epoch needs besides the model and the data; built once per training run."""

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    ema: ModelEMA | None
    scaler: torch.amp.GradScaler
    step_hyp: StepHyp  # lr0, momentum and the warmup starting points
    device: torch.device
    batch_size: int  # the total batch across processes, as the nominal-batch rule counts it
    nominal_batch: int  # images per optimizer step the hyp is tuned for; smaller batches accumulate up to it
    warmup_iters: int
    num_batches: int  # per epoch, per process
    amp: bool = False
    world_size: int = 1
    last_optimizer_step: int = -1
    multi_scale: MultiScale | None = None  # --multi-scale; None trains every batch at the loader's size


def epoch_progress(loader: Iterable, epoch: int, epochs: int, enabled: bool) -> Iterable:
    """A tqdm bar over the loader with yolov5's columns, or the bare loader when disabled."""
    if not enabled:
        return loader
    header = ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")
    tqdm.write(header)
    return tqdm(loader, bar_format="{l_bar}{bar:10}{r_bar}")


def optimizer_step(model: nn.Module, context: StepContext) -> None:
    """Unscale, clip, step, zero the gradients and update the EMA."""
    context.scaler.unscale_(context.optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=GRADIENT_CLIP_NORM)
    context.scaler.step(context.optimizer)
    context.scaler.update()
    context.optimizer.zero_grad(set_to_none=True)
    if context.ema is not None:
        context.ema.update(model)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    context: StepContext,
    epoch: int,
    epochs: int,
    show_progress: bool = True,
) -> dict[str, float]:
    """Train for one epoch and return the mean of each loss term by name (``train/box_loss``, ...)."""
    model.train()
    means = torch.zeros(len(LOSS_TERMS), device=context.device)
    progress = epoch_progress(loader, epoch, epochs, show_progress)
    for batch_index, (images, targets, _paths, _shapes) in enumerate(progress):
        iteration = batch_index + context.num_batches * epoch
        settings = iteration_settings(
            iteration, epoch, context.warmup_iters, context.scheduler, context.step_hyp, context.batch_size,
            context.nominal_batch,
        )  # fmt: skip
        apply_iteration(context.optimizer, settings)
        images = images.to(context.device, non_blocking=True).float() / 255
        targets = targets.to(context.device)
        if context.multi_scale is not None:
            rng = np.random.default_rng([context.multi_scale.seed, epoch, batch_index])
            images, targets = multi_scale_batch(images, targets, rng, context.multi_scale.img_size,
                                                context.multi_scale.stride)  # fmt: skip
        amp_dtype = torch.bfloat16 if context.device.type == "cpu" else torch.float16  # CPU: bf16, CUDA: fp16
        with torch.autocast(device_type=context.device.type, dtype=amp_dtype, enabled=context.amp):
            loss, terms = context.loss_fn(model(images), targets)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {epoch}, batch {batch_index}; the last saved checkpoint "
                "is kept (a lower lr0 or --optimizer SGD usually helps)"
            )
        context.scaler.scale(loss * context.world_size).backward()
        if iteration - context.last_optimizer_step >= settings.accumulate:
            optimizer_step(model, context)
            context.last_optimizer_step = iteration
        step_terms = torch.stack([terms[name] for name in LOSS_TERMS])
        means = (means * batch_index + step_terms) / (batch_index + 1)
        if show_progress:
            memory = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if torch.cuda.is_available() else "0G"
            progress.set_description(
                ("%11s" * 2 + "%11.4g" * 5)
                % (f"{epoch}/{epochs - 1}", memory, *means.tolist(), targets.shape[0], images.shape[-1])
            )
    return {f"train/{name}": value for name, value in zip(LOSS_TERMS, means.tolist())}
