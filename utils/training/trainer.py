"""Training as a function: ``train(hyp, options, data) -> metrics`` builds a fresh model and fits it."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from models.yolo import DetectionModel, build_model, model_summary
from utils.data.dataset import YoloDataset, build_dataloader
from utils.data.gpu_augment import GpuAugmentLoader, GpuBatchAugmenter
from utils.data.image_weights import image_weights
from utils.data.prepared import PreparedData
from utils.device import trains_in_bf16
from utils.errors import UserError
from utils.evaluation.fitness import fitness
from utils.evaluation.validator import Validation, run_validation
from utils.training.autoanchor import check_anchors
from utils.training.checkpoint import load_checkpoint, matching_tensors, transfer_weights
from utils.training.distributed import share_from_main_process, unwrap_model, wrap_distributed
from utils.training.ema import ModelEMA
from utils.training.engine import MultiScale, StepContext, multi_scale_range, train_one_epoch
from utils.training.hyp import derive_hyp
from utils.training.loss import YoloLoss
from utils.training.optim import build_optimizer, freeze_layers
from utils.training.options import TrainOptions
from utils.training.run_outputs import RunOutputs
from utils.training.schedule import build_scheduler, close_mosaic_epoch, warmup_iterations, warmup_trap

LOGGER = logging.getLogger(__name__)
TRANSFER_REFUSED_BELOW, TRANSFER_WARNED_BELOW = 0.01, 0.5  # shares of the model's weights that --weights fits


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


FittedAnchors = dict[tuple, torch.Tensor]  # AutoAnchor's result per anchor setting, kept by whoever trains many runs


def check_transfer(model: nn.Module, matched: dict[str, torch.Tensor], options: TrainOptions) -> None:
    """Refuse ``--weights`` that fit less than 1% of the model's weights outside its Detect layer (another model
    size: only BatchNorm counters, anchors and a few biases match), and warn below half. Detect's output convs are
    left out: their shapes follow the class count, which fine-tuning changes."""
    head = {id(parameter) for parameter in model.detect.parameters()}
    parameters = {name: parameter for name, parameter in model.named_parameters() if id(parameter) not in head}
    total = sum(parameter.numel() for parameter in parameters.values())
    share = sum(tensor.numel() for name, tensor in matched.items() if name in parameters) / max(total, 1)
    if share < TRANSFER_REFUSED_BELOW:
        raise UserError(f"--weights {options.weights}: {share:.2%} of the weights of --cfg {options.cfg} fit it "
                        "(another model size?); drop --cfg to build the checkpoint's own model")  # fmt: skip
    if share < TRANSFER_WARNED_BELOW:
        LOGGER.warning(f"--weights {options.weights} fits only {share:.0%} of the weights of --cfg {options.cfg}")


def build_detector(
    hyp: dict[str, float], options: TrainOptions, data: PreparedData, fitted_anchors: FittedAnchors | None = None
) -> DetectionModel:
    """A fresh model with transferred weights and anchors fitted to the labels.

    ``fitted_anchors`` (owned by the caller, e.g. one per evolution worker) memoises AutoAnchor per setting, so
    runs that share data, model and ``anchor_t`` fit anchors once."""
    anchors_per_level = round(hyp["anchors"]) if hyp.get("anchors") else None
    model = build_model(options.cfg, data.num_classes, anchors_per_level=anchors_per_level)
    if options.weights:
        checkpoint = load_checkpoint(options.weights)
        # The checkpoint's anchors (fitted to its data) are kept, for AutoAnchor to check, unless the hyp asks for new
        # ones. yolov5 also drops them whenever --cfg is given; here --cfg always is.
        exclude = ("anchors",) if anchors_per_level else ()
        check_transfer(model, matching_tensors(model, checkpoint["model"], exclude), options)
        loaded, skipped = transfer_weights(model, checkpoint["model"], exclude=exclude)
        LOGGER.info(f"transferred {loaded} tensors from {options.weights}, skipped {skipped}")
    if options.freeze:
        LOGGER.info(freeze_layers(model, options.freeze))
    if options.autoanchor:
        fitted_anchors = {} if fitted_anchors is None else fitted_anchors
        key = (str(options.cfg), anchors_per_level, hyp["anchor_t"], data.img_size, options.seed)
        if key not in fitted_anchors:
            check_anchors(model, data.label_sizes(), hyp["anchor_t"], data.img_size, seed=options.seed)
            fitted_anchors[key] = model.detect.anchors.detach().clone()
        with torch.no_grad():
            model.detect.anchors.copy_(fitted_anchors[key])
    if options.is_main_process and options.outputs.show_progress:
        LOGGER.info(model_summary(model, data.img_size))
    model = model.to(options.device)
    if options.cpu_fast and options.device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # oneDNN then keeps activations NHWC, without reorders
    return model


def build_step_context(
    model: nn.Module, hyp: dict[str, float], options: TrainOptions, data: PreparedData, num_batches: int
) -> StepContext:
    """Optimizer, schedule, loss, EMA and scaler for one run, from the hyp derived once for this run's shape."""
    derived = derive_hyp(
        hyp, batch_size=options.batch_size, nominal_batch=options.nominal_batch,
        num_layers=unwrap_model(model).detect.num_layers, num_classes=data.num_classes, img_size=data.img_size,
        optimizer=options.optimizer, lr_fit=options.lr_fit,
    )  # fmt: skip
    optimizer = build_optimizer(model, options.optimizer, derived.step.lr0, derived.step.momentum, derived.weight_decay)
    scheduler_params = {"warmup_epochs": derived.warmup_epochs, **options.scheduler}
    scheduler_name = scheduler_params.pop("name")
    scheduler = build_scheduler(scheduler_name, options.epochs, derived.lrf, **scheduler_params)
    use_amp = options.amp and options.device.type == "cuda"
    # bf16 needs no loss scaling (its exponent is float32's); the weights, EMA, BatchNorm statistics and the loss
    # stay float32, and only the autocast ops (convolutions, matmuls) run in bf16.
    cpu_bf16 = trains_in_bf16(options.cpu_fast, options.device)
    stride = int(unwrap_model(model).stride.max())
    return StepContext(
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=YoloLoss(model, derived.loss, label_smoothing=options.label_smoothing),
        ema=ModelEMA(model) if options.is_main_process else None,
        scaler=torch.amp.GradScaler(options.device.type, enabled=use_amp),
        step_hyp=derived.step,
        device=options.device,
        batch_size=options.batch_size,
        nominal_batch=options.nominal_batch,
        warmup_iters=warmup_iterations(derived.warmup_epochs, num_batches, options.min_warmup_iters),
        num_batches=num_batches,
        amp=use_amp or cpu_bf16,
        world_size=options.distributed.world_size,
        multi_scale=MultiScale(data.img_size, stride, options.seed) if options.multi_scale else None,
    )


def restore_state(model: nn.Module, context: StepContext, checkpoint: dict, num_batches: int) -> tuple[int, float]:
    """Load a last.pt into the run; returns (first epoch to train, best fitness so far)."""
    unwrap_model(model).load_state_dict(checkpoint["training_model"])
    context.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scheduler"):
        context.scheduler.load_state_dict(checkpoint["scheduler"])
    if context.ema is not None and checkpoint.get("ema"):
        context.ema.load_state_dict(checkpoint["ema"], checkpoint["ema_updates"])
    start_epoch = int(checkpoint["epoch"]) + 1
    context.last_optimizer_step = start_epoch * num_batches - 1
    return start_epoch, float(checkpoint.get("best_fitness", 0.0))


def use_gpu_augment(options: TrainOptions, hyp: dict[str, float], data: PreparedData) -> bool:
    """--gpu-augment: 'auto' augments on CUDA devices whenever the batched augmenter supports the hyp and labels."""
    if options.gpu_augment == "off":
        return False
    if options.rect:  # the batched augmenter renders square batches only
        if options.gpu_augment == "on":
            raise UserError("--gpu-augment on cannot make --rect's rectangular batches; drop one of them")
        return False
    supported = GpuBatchAugmenter.supports(hyp, data.train_split)
    if options.gpu_augment == "on" and not supported:
        raise UserError("--gpu-augment on: copy_paste with polygon labels needs the CPU pipeline (--gpu-augment off)")
    return supported and (options.gpu_augment == "on" or options.device.type == "cuda")


def build_train_loader(hyp: dict[str, float], options: TrainOptions, data: PreparedData) -> tuple:
    """(dataset-like object with set_epoch/close_mosaic, iterable of batches) for this run's hyp."""
    if options.single_cls != data.single_cls:
        raise ValueError(f"options.single_cls is {options.single_cls} but the data was prepared with the opposite")
    local_batch = max(options.batch_size // options.distributed.world_size, 1)
    rank = max(options.distributed.rank, 0)
    if use_gpu_augment(options, hyp, data):
        augmenter = data.gpu_augmenter(hyp, options.seed, options.device)
        return augmenter, GpuAugmentLoader(augmenter, local_batch, rank=rank, world_size=options.distributed.world_size)
    dataset = data.train_dataset(hyp, options.batch_size, options.seed, rect=options.rect)
    loader = build_dataloader(
        dataset, local_batch, options.workers, shuffle=True, seed=options.seed, rank=rank,
        world_size=options.distributed.world_size,
    )  # fmt: skip
    return dataset, loader


def check_run(
    hyp: dict[str, float], options: TrainOptions, data: PreparedData, fitted_anchors: FittedAnchors | None = None
) -> None:
    """Build what a run builds (model, weights, optimizer, schedule, loader choice) so that a bad flag fails now,
    once, with its own message, and not inside every evolution child."""
    close_mosaic_epoch(options.epochs, options.close_mosaic)
    use_gpu_augment(options, hyp, data)
    model = build_detector(hyp, options.with_outputs(show_progress=False), data, fitted_anchors)
    build_step_context(model, hyp, options, data, num_batches=1)
    if options.is_main_process:
        for note in flag_notes(options, data, int(model.stride.max())):
            LOGGER.info(note)
    trap = warmup_trap(hyp["warmup_epochs"], batches_per_epoch(options, data), options.epochs, options.min_warmup_iters)
    if trap and options.is_main_process:
        LOGGER.warning(trap)


def batches_per_epoch(options: TrainOptions, data: PreparedData) -> int:
    """Batches each process trains per epoch (the loaders keep the last, partial batch)."""
    world_size = options.distributed.world_size
    per_rank = -(-len(data.train_split.image_files) // world_size)
    return -(-per_rank // max(options.batch_size // world_size, 1))


def prepare_epoch(
    dataset: YoloDataset | GpuBatchAugmenter,
    epoch: int,
    options: TrainOptions,
    data: PreparedData,
    validation: Validation | None,
) -> None:
    """Set the training data up for ``epoch``: mosaic off for the last --close-mosaic epochs, --image-weights' draw
    from the last validation (zero mAPs before the first, as yolov5), then the epoch that seeds the augmentation."""
    if epoch >= close_mosaic_epoch(options.epochs, options.close_mosaic) and dataset.use_mosaic:
        dataset.close_mosaic()
        LOGGER.info(f"closing mosaic and mixup for the last {options.epochs - epoch} epochs (epoch {epoch})")
    if options.image_weights:
        maps = validation.class_maps(data.num_classes) if validation is not None else np.zeros(data.num_classes)
        dataset.set_image_weights(image_weights(data.train_split.labels, data.num_classes, maps))
    dataset.set_epoch(epoch)


def train(
    hyp: dict[str, float],
    options: TrainOptions,
    data: PreparedData,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    fitted_anchors: FittedAnchors | None = None,
) -> dict[str, float]:
    """Train a fresh detector with ``hyp`` on prepared ``data``; returns the final epoch's metrics by name.

    ``on_epoch_end(epoch, metrics)`` is called after each epoch; ``metrics`` hold ``fitness`` and the val metrics
    when the epoch validated, and are empty on DDP ranks other than 0 (evolution prints them and prunes by them);
    ``fitted_anchors`` see ``build_detector``. Nothing is written when ``options.outputs.save_dir`` is None.
    """
    seed_everything(options.seed + max(options.distributed.rank, 0), options.deterministic)
    model = build_detector(hyp, options, data, fitted_anchors)
    model = wrap_distributed(model, options.distributed, options.device)
    dataset, loader = build_train_loader(hyp, options, data)
    num_batches = len(loader)
    context = build_step_context(model, hyp, options, data, num_batches)
    outputs = RunOutputs(options, hyp, data, context) if options.is_main_process else None
    start_epoch, best_fitness = 0, -math.inf
    if options.resume:
        start_epoch, best_fitness = restore_state(model, context, load_checkpoint(options.resume), num_batches)
        LOGGER.info(f"resuming {options.resume} from epoch {start_epoch}")
    if outputs is not None:
        outputs.start(dataset, loader, start_epoch)
    metrics: dict[str, float] = {}
    validation: Validation | None = None  # the last one, whose per-class mAP --image-weights uses
    epochs_without_improvement = 0
    try:
        for epoch in range(start_epoch, options.epochs):
            prepare_epoch(dataset, epoch, options, data, validation)
            show_progress = options.outputs.show_progress and options.is_main_process
            train_terms = train_one_epoch(model, loader, context, epoch, options.epochs, show_progress=show_progress)
            final_epoch = epoch + 1 == options.epochs
            epoch_fitness, improved = None, False
            if options.is_main_process:
                metrics = dict(train_terms)
                if options.validate_every_epoch or final_epoch:
                    validation = evaluate(context, data, options, show_progress)
                    metrics.update(validation.metrics)
                    epoch_fitness = metrics["fitness"] = fitness(metrics, options.fitness_weights)
                    improved, best_fitness = epoch_fitness > best_fitness, max(best_fitness, epoch_fitness)
                    epochs_without_improvement = 0 if improved else epochs_without_improvement + 1
            stop = bool(options.patience and epochs_without_improvement >= options.patience)
            epoch_fitness, stop = share_from_main_process(epoch_fitness, stop, options.distributed, options.device)
            context.scheduler.step(epoch, epoch_fitness)  # before saving, so that a resume starts from this state
            if outputs is not None:
                outputs.end_epoch(epoch, metrics, improved, best_fitness, model, final=final_epoch or stop)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
            if stop:
                LOGGER.info(f"stopping early: no improvement in the last {options.patience} epochs")
                break
    finally:  # a pruned or failed child leaves by an exception: its event file is closed all the same
        if outputs is not None:
            outputs.close()
    if outputs is not None:
        outputs.finish(model, context)
    return metrics


def evaluate(
    context: StepContext, data: PreparedData, options: TrainOptions, show_progress: bool = False
) -> Validation:
    """Validate the EMA model on the val split with the run's loss; metrics by name and per class.

    ``show_progress``: yolov5's validation bar, then its ``all`` line."""
    local_batch = max(options.batch_size // options.distributed.world_size, 1)
    loader = data.val_loader(local_batch * 2, options.workers)
    validation = run_validation(
        context.ema.ema,
        loader,
        data.names,
        device=options.device,
        loss_fn=context.loss_fn,
        half=context.amp,
        progress=show_progress,
    )
    if show_progress:
        LOGGER.info(validation.table(per_class=False, header=False))
    return validation


def flag_notes(options: TrainOptions, data: PreparedData, stride: int) -> list[str]:
    """One console line per yolov5 training mode that is on, saying what it changes."""
    notes = []
    if options.single_cls:
        notes.append(f"--single-cls: training the {data.config.num_classes} classes of {data.config.yaml_path.name} "
                     f"as one class, '{data.names[0]}'")  # fmt: skip
    if options.rect:
        notes.append("--rect: rectangular batches in aspect-ratio order, without mosaic; --rect is incompatible "
                     "with DataLoader shuffle, setting shuffle=False")  # fmt: skip
    if options.multi_scale:
        low, high = multi_scale_range(data.img_size, stride)
        notes.append(f"--multi-scale: each batch resized to a long side of {low} to {high} px (multiples of {stride})")
    if options.image_weights:
        notes.append("--image-weights: each epoch draws training images with replacement, favouring rare classes "
                     "and classes with a low mAP")  # fmt: skip
    period = options.outputs.save_period
    if period > 0:
        notes.append(f"--save-period {period}: also saving weights/epochN.pt every {period} epoch(s), from epoch 0")
    return notes
