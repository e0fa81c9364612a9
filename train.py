"""Train a YOLOv5-style detector: ``python train.py --data coco128.yaml``; add ``--evolve [N]`` to evolve its hyp.

With no arguments it trains the nano model on the built-in shapes dataset (generated on first use) at 256 px,
a run sized to finish on a 2-core CPU in under 15 minutes. A data yaml may recommend its own values for some
options under ``defaults:`` (shapes.yaml does); they replace the built-in defaults, never what the command gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path

import torch

from utils.cli import CliParser
from utils.device import distributed_env, select_device
from utils.errors import UserError, run_cli
from utils.evaluation.fitness import parse_fitness_weights
from utils.evolution import add_evolve_arguments
from utils.run_dir import RunFolderLock, increment_path
from utils.training.hyp import DEFAULT_HYP, check_hyp, load_hyp
from utils.training.schedule import add_schedule_arguments, scheduler_params_from_options

ROOT = Path(__file__).resolve().parent
LOGGER = logging.getLogger("train")


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__)
    parser.add_argument("--weights", default="", help="initial weights .pt to transfer from ('' trains from scratch)")
    parser.add_argument("--cfg", default="yolov5n.yaml", help="model yaml: yolov5n/s/m/l/x.yaml or a path")
    parser.add_argument("--data", default="shapes.yaml", help="data yaml (default: the built-in shapes dataset)")
    parser.add_argument("--hyp", default=str(DEFAULT_HYP), help="hyperparameter yaml (default: scratch-low)")
    parser.add_argument("--epochs", type=int, default=30, help="total training epochs")
    parser.add_argument("--batch-size", "--batch", type=int, default=16, help="total batch size for all devices")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="train and val image size")
    parser.add_argument("--resume", nargs="?", const=True, default=False, help="resume the latest or the given run")
    parser.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    parser.add_argument("--noval", action="store_true", help="only validate the final epoch")
    parser.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    parser.add_argument("--noplots", action="store_true", help="save no plot files")
    parser.add_argument("--cache", nargs="?", const="ram", default=None, choices=("ram", "disk"), help="image cache")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm under DDP")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers (per DDP rank)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "train"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    parser.add_argument("--patience", type=int, default=100, help="stop after this many epochs without improvement")
    parser.add_argument("--seed", type=int, default=0, help="global training seed")
    parser.add_argument("--deterministic", action="store_true", help="ask torch for deterministic algorithms")
    parser.add_argument("--fitness", default=None, help="fitness weights, e.g. 'mAP50-95=1' (default 0.1/0.9 mAP)")
    parser.add_argument(
        "--gpu-augment",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="augment batches on the device (auto: on for CUDA)",
    )
    parser.add_argument("--nbs", type=int, default=64, help="nominal batch size: smaller batches accumulate to it")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    add_schedule_arguments(parser)
    add_evolve_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse train.py's command line. The data yaml's ``defaults:`` replace the built-in defaults of the options
    the command line leaves out (the built-in shapes.yaml recommends its CPU recipe this way)."""
    from utils.data.config import training_defaults

    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.resume:
        return args  # the checkpoint's options win
    defaults = training_defaults(args.data)
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


def build_train_options(
    args: argparse.Namespace, device: torch.device, save_dir: Path | None, rank: int, world_size: int
):
    """Turn parsed CLI options into the trainer's explicit ``TrainOptions``."""
    from utils.training.trainer import TrainOptions

    return TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        cfg=args.cfg,
        weights=args.weights,
        device=device,
        workers=args.workers,
        optimizer=args.optimizer,
        scheduler=scheduler_params_from_options(args),
        close_mosaic=args.close_mosaic,
        lr_fit=args.lr_fit,
        label_smoothing=args.label_smoothing,
        patience=args.patience,
        seed=args.seed,
        deterministic=args.deterministic,
        autoanchor=not args.noautoanchor,
        validate_every_epoch=not args.noval,
        save_dir=save_dir,
        save_weights=not args.nosave,
        plots=not args.noplots,
        fitness_weights=parse_fitness_weights(args.fitness) if args.fitness else None,
        sync_bn=args.sync_bn,
        gpu_augment=args.gpu_augment,
        nominal_batch=args.nbs,
        rank=rank,
        world_size=world_size,
        resume=args.resume if isinstance(args.resume, str) else None,
        record=recorded_options(args),
    )


# (flag, attribute, smallest allowed value, what the flag counts): each numeric flag gets its own message.
FLAG_MINIMUMS = (
    ("--img", "imgsz", 1, "image size in pixels"),
    ("--batch", "batch_size", 1, "images per batch"),
    ("--epochs", "epochs", 1, "training epochs"),
    ("--nbs", "nbs", 1, "nominal batch size"),
    ("--workers", "workers", 0, "dataloader workers"),
    ("--patience", "patience", 0, "epochs without improvement"),
    ("--close-mosaic", "close_mosaic", 0, "final epochs without mosaic"),
    ("--evolve", "evolve", 1, "children"),
)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag out of its range, naming the flag, before any file is read or any data is scanned."""
    for flag, attribute, minimum, meaning in FLAG_MINIMUMS:
        value = getattr(args, attribute, None)
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum} ({meaning}), got {value}")


def recorded_options(args: argparse.Namespace) -> dict:
    """The options as plain yaml-safe values, for opt.yaml and checkpoints."""
    return {
        key: value if isinstance(value, int | float | str | bool | list | type(None)) else str(value)
        for key, value in vars(args).items()
    }


def resume_checkpoint_path(resume: str | bool) -> Path:
    """The checkpoint ``--resume`` names, or for a bare ``--resume`` the newest runs/train/*/weights/last.pt."""
    if isinstance(resume, str):
        return Path(resume)
    candidates = sorted((ROOT / "runs" / "train").glob("*/weights/last.pt"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise UserError("--resume: no runs/train/*/weights/last.pt found to resume; pass the checkpoint path")
    LOGGER.info(f"--resume: picked the newest checkpoint, {candidates[-1]}")
    return candidates[-1]


def resume_arguments(args: argparse.Namespace, checkpoint_path: Path) -> tuple[argparse.Namespace, dict[str, float]]:
    """The original run's options and hyp, from the checkpoint to resume."""
    from utils.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    if "training_model" not in checkpoint or not checkpoint.get("options"):
        raise UserError(f"--resume: {checkpoint_path} holds no training state (was it saved by train.py?)")
    if checkpoint["epoch"] + 1 >= checkpoint["options"]["epochs"]:
        raise UserError(f"--resume: {checkpoint_path} already finished all {checkpoint['options']['epochs']} epochs")
    restored = argparse.Namespace(**{**vars(args), **checkpoint["options"]})
    restored.resume = str(checkpoint_path)
    restored.save_dir = str(checkpoint_path.parent.parent)
    restored.device = args.device or restored.device
    restored.weights = ""  # the resumed state replaces every weight; the original file may be gone
    return restored, check_hyp(checkpoint["hyp"], source=f"{checkpoint_path} hyp")


def check_img_size(img_size: int, stride: int = 32) -> int:
    """Round --img up to a multiple of the largest stride, as yolov5 does, saying so when it changes."""
    rounded = max(math.ceil(img_size / stride) * stride, stride)
    if rounded != img_size:
        LOGGER.warning(f"--img {img_size} must be a multiple of {stride}, using {rounded}")
    return rounded


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_flags(args)
    args.imgsz = check_img_size(args.imgsz)
    if args.evolve is not None:
        from utils.evolution.training_objective import evolve_training

        evolve_training(args)
        return
    rank, local_rank, world_size = distributed_env()
    hyp, run_lock = None, None
    if args.resume:
        checkpoint_path = resume_checkpoint_path(args.resume)
        if rank in (-1, 0):  # a run another process is still writing is never taken over
            run_lock = RunFolderLock(checkpoint_path.parent.parent).acquire("resume")
        args, hyp = resume_arguments(args, checkpoint_path)
    device = select_device(args.device, local_rank)
    hyp = hyp or load_hyp(args.hyp)
    options = build_train_options(args, device, None, rank, world_size)  # checks the flags before any data work
    if args.weights:
        from utils.training.checkpoint import load_checkpoint

        load_checkpoint(args.weights)  # a missing or corrupt file fails now, not after the dataset scan
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL and barrier() must use this rank's device, not a guessed one
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    from utils.data.prepared import prepare_data
    from utils.training.trainer import check_run, train

    if rank > 0:
        torch.distributed.barrier()  # let rank 0 generate/scan and write the label cache first
    data = prepare_data(args.data, args.imgsz, args.cache)
    if rank == 0:
        torch.distributed.barrier()
    check_run(hyp, options, data)
    save_dir = None
    if rank in (-1, 0):
        save_dir = Path(args.save_dir) if args.resume else increment_path(Path(args.project) / args.name, args.exist_ok)
        run_lock = run_lock or RunFolderLock(save_dir).acquire()
    try:
        metrics = train(hyp, dataclasses.replace(options, save_dir=save_dir), data)
    finally:
        if run_lock is not None:
            run_lock.release()
    if rank in (-1, 0):
        summary = ", ".join(
            f"{key.split('/')[-1]} {value:.4g}" for key, value in metrics.items() if key.startswith("metrics/")
        )
        LOGGER.info(f"done: {summary}; results in {save_dir}")
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(parse_args())))
