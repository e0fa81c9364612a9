"""train.py's flags (yolov5's names), their parsing with a data yaml's ``defaults:``, and the ``TrainOptions``
and evolution ``TrainingJob`` they build."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from utils.cli.common_cli import (
    FLAG_MINIMUMS,
    RUNS,
    CliParser,
    StoreGiven,
    add_run_folder_arguments,
    scheduler_params,
)
from utils.cli.evolve_cli import add_evolve_arguments, evolution_setup
from utils.errors import UserError, printable
from utils.evaluation.fitness import parse_fitness_weights
from utils.training.hyp import DEFAULT_HYP, read_hyp_file
from utils.training.optim import LR_FIT_LIMITS, OPTIMIZERS, frozen_layer_indices, optimizer_name
from utils.training.options import DistributedOptions, OutputOptions, TrainOptions
from utils.training.schedule import MIN_WARMUP_ITERS, SCHEDULERS

LOGGER = logging.getLogger(__name__)
DEFAULT_CFG = "yolov5n.yaml"

if TYPE_CHECKING:
    from utils.evolution.training_objective import TrainingJob


def train_parser(description: str | None = None) -> CliParser:
    """train.py's flags (yolov5's names), with the schedule and evolution groups."""
    parser = CliParser(description=description)
    parser.add_argument("--weights", default="", help="a .pt (ours or yolov5's) to start from ('': scratch)")
    freeze = "freeze layers: N freezes layers 0..N-1 (10: the backbone), several values those indices (default 0)"
    parser.add_argument("--freeze", type=int, nargs="+", default=[0], metavar="N", help=freeze)
    cfg = f"model yaml: yolov5n/s/m/l/x.yaml or a path (default: the --weights model, else {DEFAULT_CFG})"
    parser.add_argument("--cfg", default=DEFAULT_CFG, action=StoreGiven, help=cfg)
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
    workers = "dataloader workers per DDP rank (default: 0 on a CPU, whose every core trains; 2 on CUDA)"
    parser.add_argument("--workers", type=int, default=None, help=workers)
    add_run_folder_arguments(parser, RUNS / "train")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    parser.add_argument("--patience", type=int, default=100, help="stop after this many epochs without improvement")
    parser.add_argument("--seed", type=int, default=0, help="global training seed")
    parser.add_argument("--deterministic", action="store_true", help="ask torch for deterministic algorithms")
    parser.add_argument("--fitness", default=None, help="fitness weights, e.g. 'mAP50-95=1' (default 0.1/0.9 mAP)")
    parser.add_argument("--gpu-augment", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                        help="augment batches on the device (auto: on for CUDA)")  # fmt: skip
    fast = "on a CPU (default): channels_last, and bf16 autocast where the CPU runs bf16 natively; --no-cpu-fast: fp32"
    parser.add_argument("--cpu-fast", action=argparse.BooleanOptionalAction, default=True, help=fast)
    parser.add_argument("--nbs", type=int, default=64, help="nominal batch size: smaller batches accumulate to it")
    warmup = f"warmup lasts max(warmup_epochs x batches per epoch, N) iterations (yolov5: {MIN_WARMUP_ITERS})"
    parser.add_argument("--min-warmup-iters", type=int, default=MIN_WARMUP_ITERS, metavar="N", help=warmup)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    add_schedule_arguments(parser)
    add_mode_arguments(parser)
    add_evolve_arguments(parser)
    return parser


def add_mode_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add yolov5's --single-cls, --rect, --multi-scale, --image-weights and --save-period."""
    group = parser.add_argument_group("yolov5 training modes")
    group.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    group.add_argument("--rect", action="store_true", help="rectangular training batches (no mosaic, no shuffle)")
    group.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%% per batch")
    group.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    group.add_argument("--save-period", type=int, default=-1, help="save weights/epochN.pt every N epochs (-1: off)")
    return parser


def check_mode_combinations(args: argparse.Namespace, world_size: int) -> None:
    """Refuse the training modes that cannot work together, each with its own one-line reason."""
    if args.rect and args.image_weights:
        raise UserError("--image-weights draws images regardless of --rect's aspect-ordered batches; drop one")
    if world_size > 1 and args.image_weights:
        raise UserError("--image-weights is not supported under DDP (torchrun), as in yolov5; train on one device")
    if world_size > 1 and args.rect:
        raise UserError("--rect is not supported under DDP (torchrun): the ranks would split its rectangular batches")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the optimizer, schedule, warmup-related and --close-mosaic flags."""
    group = parser.add_argument_group("optimizer and learning-rate schedule")
    group.add_argument(
        "--optimizer",
        default="SGD",
        action=StoreGiven,
        help=f"one of {', '.join(OPTIMIZERS)} (default: the one the hyp file names, else SGD)",
    )
    parser.set_defaults(optimizer_given=False)
    group.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default linear)")
    group.add_argument("--cos-lr", action="store_true", help="alias for --scheduler cos")
    group.add_argument("--lr-step-size", type=int, default=None, help="step: epochs per cut (default epochs // 3)")
    group.add_argument("--lr-milestones", type=int, nargs="+", default=None, help="multistep: epochs (70%%, 90%%)")
    group.add_argument("--lr-gamma", type=float, default=0.1, help="step, multistep, plateau: LR multiplier per cut")
    group.add_argument("--lr-patience", type=int, default=10, help="plateau: epochs without improvement before a cut")
    group.add_argument("--min-lr-epochs", type=int, default=None, help="warmcos: final epochs at lrf (--close-mosaic)")
    group.add_argument("--close-mosaic", type=int, default=0, help="turn mosaic and mixup off for the last N epochs")
    limits = ", ".join(f"{name} [{low:g}, {high:g}]" for name, (low, high) in LR_FIT_LIMITS.items())
    group.add_argument("--lr-fit", action="store_true", help=f"scale lr0 by images per step / 64, clamped: {limits}")
    return parser


def parse_train_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse train.py's command line. The data yaml's ``defaults:`` replace the built-in defaults of the options
    the command line leaves out (the built-in shapes.yaml recommends its CPU recipe this way)."""
    from utils.data.config import training_defaults

    parser = train_parser(description)
    args = parser.parse_args(argv)
    if args.resume:  # the checkpoint's options win; the warning names the others as typed
        args.typed_flags = typed_flags(parser, sys.argv[1:] if argv is None else argv)
        return args
    defaults = training_defaults(args.data)
    if defaults:
        check_data_defaults(defaults, args.data)
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.weights and not getattr(args, "cfg_given", False):
        args.cfg = weights_cfg(args.weights)
    return args


def weights_cfg(weights: str) -> str:
    """The model yaml to build when ``--weights`` comes without ``--cfg``: the checkpoint's model, as in yolov5
    (``--weights yolov5s.pt`` fine-tunes a yolov5s; building the default nano instead would transfer only the
    BatchNorm counters, silently). A built-in yaml by name, so that opt.yaml and a resume name it."""
    from models.yolo import available_models, builtin_cfg_name
    from utils.training.checkpoint import load_checkpoint

    model_cfg = load_checkpoint(weights)["model_cfg"]
    name = model_cfg if isinstance(model_cfg, str) else builtin_cfg_name(model_cfg)
    if name is None:
        raise UserError(f"--weights {weights}: its model is none of {', '.join(available_models())}; "
                        "give its model yaml with --cfg")  # fmt: skip
    print(f"--cfg {name}: the model of --weights {weights}", flush=True)  # before logging is set up
    return name


def check_data_defaults(defaults: dict[str, object], data: str) -> None:
    """A data yaml's ``defaults:`` pass the checks of the flags they stand for, with an error that names the yaml
    (the user typed none of those flags)."""
    for flag, attribute, minimum, meaning in FLAG_MINIMUMS:
        value = defaults.get(attribute)
        if isinstance(value, int) and value < minimum:
            raise UserError(f"{data}: 'defaults' key {attribute!r} ({flag}) must be at least {minimum} ({meaning}), "
                            f"got {value}")  # fmt: skip
    if "optimizer" in defaults:
        try:
            optimizer_name(str(defaults["optimizer"]))
        except UserError as error:
            raise UserError(f"{data}: 'defaults': {error}") from None


def build_train_options(
    args: argparse.Namespace, device: torch.device, rank: int = -1, world_size: int = 1
) -> TrainOptions:
    """Turn parsed train.py options into the trainer's explicit ``TrainOptions`` (no folder yet)."""
    check_mode_combinations(args, world_size)
    outputs = OutputOptions(save_weights=not args.nosave, plots=not args.noplots, record=recorded_options(args),
                            save_period=args.save_period)  # fmt: skip
    return TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        nominal_batch=args.nbs,
        cfg=args.cfg,
        weights=args.weights,
        freeze=frozen_layer_indices(args.freeze),
        device=device,
        workers=default_workers(args.workers, device),
        optimizer=args.optimizer,
        scheduler=scheduler_params(args),
        close_mosaic=args.close_mosaic,
        lr_fit=args.lr_fit,
        label_smoothing=args.label_smoothing,
        patience=args.patience,
        seed=args.seed,
        deterministic=args.deterministic,
        autoanchor=not args.noautoanchor,
        validate_every_epoch=not args.noval,
        fitness_weights=parse_fitness_weights(args.fitness) if args.fitness else None,
        gpu_augment=args.gpu_augment,
        cpu_fast=args.cpu_fast,
        min_warmup_iters=args.min_warmup_iters,
        resume=args.resume if isinstance(args.resume, str) else None,
        single_cls=args.single_cls,
        rect=args.rect,
        multi_scale=args.multi_scale,
        image_weights=args.image_weights,
        outputs=outputs,
        distributed=DistributedOptions(rank=rank, world_size=world_size, sync_bn=args.sync_bn),
    )


def default_workers(workers: int | None, device: torch.device) -> int:
    """--workers, or 0 on a CPU and 2 on CUDA. A CPU trains on all its cores (torch's intra-op threads), so loader
    processes only take cores from the step: on the 2-core CPU, 5 epochs took 57 to 58 s with 0 workers against 71
    to 74 s with 2, with identical results (issue 16)."""
    if workers is not None:
        return workers
    return 0 if device.type == "cpu" else 2


def recorded_options(args: argparse.Namespace) -> dict:
    """The options as plain yaml-safe values, for opt.yaml and checkpoints."""
    return {
        key: value if isinstance(value, int | float | str | bool | list | type(None)) else str(value)
        for key, value in vars(args).items()
        if key != "typed_flags"  # parse_train_args' note of what was typed with --resume, not an option
    }


# Options recorded only since their default changed, with the value that applied before: an older run resumes as it
# began (a float32 run stays float32).
RECORDED_SINCE = {"cpu_fast": False}


# Options a resumed run takes from the command line rather than from its checkpoint.
RESUME_OWN = ("resume", "device")


def typed_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """The options on a command line by destination, each as typed (``--img`` or ``--imgsz``, ``--no-cpu-fast``)."""
    typed = {}
    for token in argv:
        if token == "--":
            break
        option = token.split("=", 1)[0]
        if option in parser._option_string_actions:
            typed[parser._option_string_actions[option].dest] = option
    return typed


def resumed_args(args: argparse.Namespace, checkpoint_path: Path, recorded: dict) -> argparse.Namespace:
    """The original run's options (recorded in its checkpoint), continuing from ``checkpoint_path``. As in yolov5,
    options given with ``--resume`` (other than ``--device``) do not apply; a warning names those typed
    (``parse_train_args`` records them) that would have changed something, a value equal to the default included."""
    given = {key: value for key, value in vars(args).items() if key != "typed_flags"}
    check_recorded_types(recorded, given, checkpoint_path)
    restored = argparse.Namespace(**{**given, **RECORDED_SINCE, **recorded})
    ignored = [
        flag for key, flag in getattr(args, "typed_flags", {}).items()
        if key not in RESUME_OWN and given[key] != vars(restored)[key]
    ]  # fmt: skip
    if ignored:
        LOGGER.warning(f"--resume continues {checkpoint_path} with its own options; ignored: {', '.join(ignored)}")
    restored.resume = str(checkpoint_path)
    restored.device = args.device or restored.device
    restored.weights = ""  # the resumed state replaces every weight; the original file may be gone
    return restored


def check_recorded_types(recorded: dict, defaults: dict, checkpoint_path: Path) -> None:
    """A recorded option must have its flag's type where the flag's default has one (a number, a switch): a checkpoint
    that records ``batch_size: "4"`` is refused with one line, not a TypeError in a later check."""
    for key, value in recorded.items():
        default = None if key in RESUME_OWN else defaults.get(key)  # --resume itself holds a path or True
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, int | float):
            fits = isinstance(value, int | float) and not isinstance(value, bool)
            fits = fits and (isinstance(value, int) or isinstance(default, float))
        else:
            continue
        if not fits:
            raise UserError(f"--resume: {checkpoint_path} cannot be resumed: its option {key!r} is "
                            f"{printable(repr(value), 60)}, not a {type(default).__name__}")  # fmt: skip


def load_train_hyp(args: argparse.Namespace) -> dict[str, float]:
    """Load --hyp. A hyp file that names an optimizer (a hyp_evolve.yaml whose evolution evolved it) sets
    ``args.optimizer``; an explicit --optimizer naming another one is an error naming both."""
    hyp_file = read_hyp_file(args.hyp)
    flag, named = optimizer_name(args.optimizer), hyp_file.choices.get("optimizer")
    if named is not None and args.optimizer_given and flag != named:
        raise UserError(f"--optimizer {flag} contradicts 'optimizer: {named}' in {args.hyp}; drop one of them")
    args.optimizer = named or flag
    return hyp_file.hyp


def build_training_job(args: argparse.Namespace) -> TrainingJob:
    """What every evolution child trains on, from train.py's flags (the base hyp is loaded and checked here)."""
    from utils.device import distributed_env, select_device
    from utils.evolution.training_objective import TrainingJob

    hyp = load_train_hyp(args)  # first: the hyp file may name the optimizer
    options = build_train_options(args, select_device(args.device), world_size=distributed_env()[2])
    return TrainingJob(hyp, options, args.data, args.imgsz, args.cache, evolution_setup(args, options.device))
