"""Training as a function: ``train(hyp, options, data) -> metrics`` builds a fresh model and fits it."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.yolo import DetectionModel, build_model, model_summary
from utils.data.dataset import build_dataloader
from utils.data.gpu_augment import GpuAugmentLoader, GpuBatchAugmenter
from utils.data.prepared import PreparedData
from utils.errors import UserError
from utils.evaluation.fitness import fitness
from utils.evaluation.validator import validate
from utils.training.autoanchor import check_anchors
from utils.training.checkpoint import load_checkpoint, transfer_weights
from utils.training.ema import ModelEMA
from utils.training.engine import StepContext, train_one_epoch
from utils.training.loss import YoloLoss, scale_loss_gains
from utils.training.optim import build_optimizer, fit_learning_rate, nominal_accumulation, scaled_weight_decay
from utils.training.run_outputs import RunOutputs
from utils.training.schedule import build_scheduler, close_mosaic_epoch, warmup_iterations

LOGGER = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Everything about a training run that is not a hyperparameter; built from the CLI by ``train.py``."""

    epochs: int = 30
    batch_size: int = 16  # total over all processes
    nominal_batch: int = 64  # images per optimizer step that hyp values are tuned for (yolov5's nbs)
    cfg: str = "yolov5n.yaml"
    weights: str = ""  # a .pt to transfer matching tensors from
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 2
    optimizer: str = "SGD"
    scheduler: dict = field(default_factory=lambda: {"name": "linear"})  # build_scheduler keyword arguments
    close_mosaic: int = 0
    lr_fit: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    seed: int = 0
    deterministic: bool = False
    autoanchor: bool = True
    validate_every_epoch: bool = True  # --noval validates the final epoch only
    save_dir: Path | None = None  # None writes nothing at all (evolution children)
    save_weights: bool = True  # --nosave keeps only the final last.pt
    plots: bool = True
    fitness_weights: dict[str, float] | None = None
    amp: bool = True  # only ever on for CUDA
    gpu_augment: str = "auto"  # on | off | auto (on for CUDA devices); augment batches on the device
    sync_bn: bool = False
    show_progress: bool = True
    rank: int = -1  # torchrun's global rank; -1 outside DDP
    world_size: int = 1
    resume: str | None = None  # a last.pt to continue from
    record: dict = field(default_factory=dict)  # the CLI options as given, saved to opt.yaml and checkpoints

    @property
    def is_main_process(self) -> bool:
        return self.rank in (-1, 0)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_detector(hyp: dict[str, float], options: TrainOptions, data: PreparedData) -> DetectionModel:
    """A fresh model with transferred weights and anchors fitted to the labels (cached per anchor setting)."""
    anchors_per_level = round(hyp["anchors"]) if hyp.get("anchors") else None
    model = build_model(options.cfg, data.num_classes, anchors_per_level=anchors_per_level)
    if options.weights:
        checkpoint = load_checkpoint(options.weights)
        loaded, skipped = transfer_weights(model, checkpoint["model"], exclude=("anchors",))
        LOGGER.info(f"transferred {loaded} tensors from {options.weights}, skipped {skipped}")
    if options.autoanchor:
        key = (str(options.cfg), anchors_per_level, hyp["anchor_t"], data.img_size, options.seed)
        if key not in data.anchor_cache:
            check_anchors(model, data.label_sizes(), hyp["anchor_t"], data.img_size, seed=options.seed)
            data.anchor_cache[key] = model.detect.anchors.detach().clone()
        with torch.no_grad():
            model.detect.anchors.copy_(data.anchor_cache[key])
    if options.is_main_process and options.show_progress:
        LOGGER.info(model_summary(model, data.img_size))
    return model.to(options.device)


def build_step_context(
    model: nn.Module, hyp: dict[str, float], options: TrainOptions, data: PreparedData, num_batches: int
) -> StepContext:
    """Optimizer, schedule, loss, EMA and scaler for one run, with the nominal-batch rules applied."""
    nominal = options.nominal_batch
    accumulate = nominal_accumulation(options.batch_size, nominal)
    lr0 = hyp["lr0"]
    if options.lr_fit:
        lr0 = fit_learning_rate(lr0, options.batch_size, options.optimizer, nominal)
    run_hyp = {**hyp, "lr0": lr0}
    weight_decay = scaled_weight_decay(hyp["weight_decay"], options.batch_size, accumulate, nominal)
    optimizer = build_optimizer(model, options.optimizer, lr0, hyp["momentum"], weight_decay)
    scheduler_params = {"warmup_epochs": hyp["warmup_epochs"], **options.scheduler}
    scheduler_name = scheduler_params.pop("name")
    scheduler = build_scheduler(scheduler_name, options.epochs, hyp["lrf"], **scheduler_params)
    detect = model.module.detect if hasattr(model, "module") else model.detect
    gains = scale_loss_gains(run_hyp, detect.num_layers, data.num_classes, data.img_size)
    use_amp = options.amp and options.device.type == "cuda"
    return StepContext(
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=YoloLoss(model, gains, label_smoothing=options.label_smoothing),
        ema=ModelEMA(model) if options.is_main_process else None,
        scaler=torch.amp.GradScaler(options.device.type, enabled=use_amp),
        hyp=run_hyp,
        device=options.device,
        batch_size=options.batch_size,
        nominal_batch=nominal,
        warmup_iters=warmup_iterations(hyp["warmup_epochs"], num_batches),
        num_batches=num_batches,
        amp=use_amp,
        world_size=options.world_size,
    )


def restore_state(model: nn.Module, context: StepContext, checkpoint: dict, num_batches: int) -> tuple[int, float]:
    """Load a last.pt into the run; returns (first epoch to train, best fitness so far)."""
    target = model.module if hasattr(model, "module") else model
    target.load_state_dict(checkpoint["training_model"])
    context.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scheduler"):
        context.scheduler.load_state_dict(checkpoint["scheduler"])
    if context.ema is not None and checkpoint.get("ema"):
        context.ema.load_state_dict(checkpoint["ema"], checkpoint["ema_updates"])
    start_epoch = int(checkpoint["epoch"]) + 1
    context.last_optimizer_step = start_epoch * num_batches - 1
    return start_epoch, float(checkpoint.get("best_fitness", 0.0))


def wrap_distributed(model: nn.Module, options: TrainOptions) -> nn.Module:
    """DDP (and optional SyncBatchNorm) around the model when running under torchrun."""
    if options.rank == -1:
        return model
    if options.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [options.device.index] if options.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def use_gpu_augment(options: TrainOptions, hyp: dict[str, float], data: PreparedData) -> bool:
    """--gpu-augment: 'auto' augments on CUDA devices whenever the batched augmenter supports the hyp and labels."""
    if options.gpu_augment == "off":
        return False
    supported = GpuBatchAugmenter.supports(hyp, data.train_split)
    if options.gpu_augment == "on" and not supported:
        raise UserError("--gpu-augment on: copy_paste with polygon labels needs the CPU pipeline (--gpu-augment off)")
    return supported and (options.gpu_augment == "on" or options.device.type == "cuda")


def build_train_loader(hyp: dict[str, float], options: TrainOptions, data: PreparedData) -> tuple:
    """(dataset-like object with set_epoch/close_mosaic, iterable of batches) for this run's hyp."""
    local_batch = max(options.batch_size // options.world_size, 1)
    rank = max(options.rank, 0)
    if use_gpu_augment(options, hyp, data):
        augmenter = data.gpu_augmenter(hyp, options.seed, options.device)
        return augmenter, GpuAugmentLoader(augmenter, local_batch, rank=rank, world_size=options.world_size)
    dataset = data.train_dataset(hyp, options.batch_size, options.seed)
    loader = build_dataloader(
        dataset, local_batch, options.workers, shuffle=True, seed=options.seed, rank=rank,
        world_size=options.world_size,
    )  # fmt: skip
    return dataset, loader


def check_run(hyp: dict[str, float], options: TrainOptions, data: PreparedData) -> None:
    """Build what a run builds (model, weights, optimizer, schedule, loader choice) so that a bad flag fails now,
    once, with its own message, and not inside every evolution child."""
    close_mosaic_epoch(options.epochs, options.close_mosaic)
    use_gpu_augment(options, hyp, data)
    model = build_detector(hyp, dataclasses.replace(options, show_progress=False), data)
    build_step_context(model, hyp, options, data, num_batches=1)


def train(hyp: dict[str, float], options: TrainOptions, data: PreparedData, on_epoch_end=None) -> dict[str, float]:
    """Train a fresh detector with ``hyp`` on prepared ``data``; returns the final epoch's metrics by name.

    ``on_epoch_end(epoch, metrics)`` is called after each validated epoch (evolution uses it for pruning).
    Nothing is written when ``options.save_dir`` is None.
    """
    seed_everything(options.seed + max(options.rank, 0), options.deterministic)
    model = build_detector(hyp, options, data)
    model = wrap_distributed(model, options)
    dataset, loader = build_train_loader(hyp, options, data)
    num_batches = len(loader)
    context = build_step_context(model, hyp, options, data, num_batches)
    outputs = RunOutputs(options, hyp, data, context) if options.is_main_process else None
    start_epoch, best_fitness = 0, -math.inf
    if options.resume:
        start_epoch, best_fitness = restore_state(model, context, load_checkpoint(options.resume), num_batches)
        LOGGER.info(f"resuming {options.resume} from epoch {start_epoch}")
    if outputs is not None:
        outputs.start(dataset, loader)
    mosaic_off_epoch = close_mosaic_epoch(options.epochs, options.close_mosaic)
    metrics: dict[str, float] = {}
    epochs_without_improvement = 0
    for epoch in range(start_epoch, options.epochs):
        if epoch >= mosaic_off_epoch and dataset.use_mosaic:
            dataset.close_mosaic()
            LOGGER.info(f"closing mosaic and mixup for the last {options.epochs - epoch} epochs (epoch {epoch})")
        dataset.set_epoch(epoch)
        train_terms = train_one_epoch(
            model,
            loader,
            context,
            epoch,
            options.epochs,
            show_progress=options.show_progress and options.is_main_process,
        )
        final_epoch = epoch + 1 == options.epochs
        epoch_fitness, improved = None, False
        if options.is_main_process:
            metrics = dict(train_terms)
            if options.validate_every_epoch or final_epoch:
                metrics.update(evaluate(context, data, options))
                epoch_fitness = metrics["fitness"] = fitness(metrics, options.fitness_weights)
                improved, best_fitness = epoch_fitness > best_fitness, max(best_fitness, epoch_fitness)
                epochs_without_improvement = 0 if improved else epochs_without_improvement + 1
        stop = bool(options.patience and epochs_without_improvement >= options.patience)
        epoch_fitness, stop = share_from_main_process(epoch_fitness, stop, options)
        context.scheduler.step(epoch, epoch_fitness)  # before saving, so that a resume starts from this state
        if outputs is not None:
            outputs.end_epoch(epoch, metrics, improved, best_fitness, model, final=final_epoch or stop)
        if on_epoch_end is not None and epoch_fitness is not None:
            on_epoch_end(epoch, metrics)
        if stop:
            LOGGER.info(f"stopping early: no improvement in the last {options.patience} epochs")
            break
    if outputs is not None:
        outputs.finish(model, context)
    return metrics


def share_from_main_process(
    epoch_fitness: float | None, stop: bool, options: TrainOptions
) -> tuple[float | None, bool]:
    """Only rank 0 validates; under DDP every rank takes its fitness (for plateau) and its early-stop decision."""
    if options.world_size <= 1:
        return epoch_fitness, stop
    shared = torch.tensor([math.nan if epoch_fitness is None else epoch_fitness, float(stop)], device=options.device)
    torch.distributed.broadcast(shared, src=0)
    fitness_value = shared[0].item()
    return (None if math.isnan(fitness_value) else fitness_value), bool(shared[1].item())


def evaluate(context: StepContext, data: PreparedData, options: TrainOptions) -> dict[str, float]:
    """Validate the EMA model on the val split with the run's loss; returns metrics by name."""
    local_batch = max(options.batch_size // options.world_size, 1)
    loader = data.val_loader(local_batch * 2, options.workers)
    return validate(
        context.ema.ema,
        loader,
        data.names,
        device=options.device,
        loss_fn=context.loss_fn,
        half=context.amp,
    )
