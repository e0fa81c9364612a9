"""The command line, and only here: every entry point's flags, their checks, and the ``build_*`` factories that turn
parsed flags into the library's explicit option objects. No library module sees an ``argparse.Namespace``."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch

from utils.errors import USER_ERROR_EXIT_CODE, UserError
from utils.evaluation.fitness import parse_fitness_weights
from utils.evolution.evaluations import TrustPlan
from utils.evolution.options import EvolveOptions
from utils.evolution.pruning import DEFAULT_PRUNER, PRUNERS
from utils.evolution.sampler import PARENT_SELECTIONS, SAMPLERS
from utils.evolution.search_space import DEFAULT_META, load_meta
from utils.training.hyp import DEFAULT_HYP, read_hyp_file
from utils.training.optim import LR_FIT_LIMITS, OPTIMIZERS, optimizer_name
from utils.training.options import DistributedOptions, OutputOptions, TrainOptions
from utils.training.schedule import MIN_WARMUP_ITERS, SCHEDULERS, scheduler_name

if TYPE_CHECKING:
    from utils.evolution.training_objective import TrainingJob

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
DEFAULT_CHILDREN = 300  # a bare --evolve, as in yolov5
LOGGER = logging.getLogger("train")


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` (``--freeze`` must never mean ``--freeze-hyp``) and
    errors reported as one ``error: ...`` line, like every other user error, instead of usage plus a message."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


class StoreGiven(argparse.Action):
    """Store the value and set ``<dest>_given``: a data yaml's ``defaults:`` never set it, so later checks can tell
    what the command line said from a default (``--optimizer`` against the hyp file's optimizer)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_run_folder_arguments(parser: argparse.ArgumentParser, project: Path) -> None:
    """yolov5's --project/--name/--exist-ok: outputs go to project/name, then name2, name3, ..."""
    parser.add_argument("--project", default=str(project), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")


# --- train.py and evolve.py -----------------------------------------------------------------------------------------


def train_parser(description: str | None = None) -> CliParser:
    """train.py's flags (yolov5's names), with the schedule and evolution groups."""
    parser = CliParser(description=description)
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
    add_run_folder_arguments(parser, RUNS / "train")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    parser.add_argument("--patience", type=int, default=100, help="stop after this many epochs without improvement")
    parser.add_argument("--seed", type=int, default=0, help="global training seed")
    parser.add_argument("--deterministic", action="store_true", help="ask torch for deterministic algorithms")
    parser.add_argument("--fitness", default=None, help="fitness weights, e.g. 'mAP50-95=1' (default 0.1/0.9 mAP)")
    parser.add_argument("--gpu-augment", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                        help="augment batches on the device (auto: on for CUDA)")  # fmt: skip
    parser.add_argument("--nbs", type=int, default=64, help="nominal batch size: smaller batches accumulate to it")
    warmup = f"warmup lasts max(warmup_epochs x batches per epoch, N) iterations (yolov5: {MIN_WARMUP_ITERS})"
    parser.add_argument("--min-warmup-iters", type=int, default=MIN_WARMUP_ITERS, metavar="N", help=warmup)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    add_schedule_arguments(parser)
    add_evolve_arguments(parser)
    return parser


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


def add_evolve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --evolve [N], --meta, --freeze-hyp, --sampler, --storage, --evolve-from, --prune, --save-children,
    --parent-selection, then the trust flags."""
    group = parser.add_argument_group("hyperparameter evolution")
    group.add_argument(
        "--evolve",
        type=int,
        nargs="?",
        const=DEFAULT_CHILDREN,
        default=None,
        metavar="N",
        help=f"evolve hyperparameters for N children in total across all workers (bare flag: {DEFAULT_CHILDREN})",
    )
    group.add_argument("--meta", type=Path, default=DEFAULT_META, help="evolution search space (gain, low, high)")
    group.add_argument("--freeze-hyp", default="", metavar="K1,K2", help="hyp keys to keep fixed while evolving")
    search = "ga (yolov5 moves screened by a model of the finished children), classic (yolov5's exact rule), tpe, ..."
    group.add_argument("--sampler", choices=SAMPLERS, default="ga", help=search)
    group.add_argument("--storage", default=None, help="study database URL (postgresql://...); default: journal file")
    group.add_argument("--evolve-from", type=Path, default=None, help="import a yolov5 evolve.csv as finished children")
    group.add_argument(
        "--prune",
        nargs="?",
        const=DEFAULT_PRUNER,
        default="none",
        choices=PRUNERS,
        metavar="NAME",
        help=f"stop lagging children early: {', '.join(PRUNERS)} (bare flag: {DEFAULT_PRUNER})",
    )
    group.add_argument("--save-children", action="store_true", help="keep every child's files under children/")
    parents = "ga's first moves and classic: one fitness-weighted parent (yolov5) or the weighted mean of the top 5"
    group.add_argument("--parent-selection", choices=PARENT_SELECTIONS, default="single", help=parents)
    add_trust_arguments(parser)
    return parser


# (flag, default, metavar, help): the integer flags that plan the extra evaluations (noise, confirmation, fidelity).
TRUST_FLAGS = (
    ("--confirm", 3, "K", "retrain the top K children with fresh seeds once all children are done (0: skip)"),
    ("--confirm-seeds", 2, "S", "fresh training seeds per confirmed child; the base hyp gets as many (noise)"),
    ("--fidelity", 0, "K", "retrain K children, spanning the fitness range, at full length: does short predict long?"),
    ("--fidelity-epochs", None, "E", "full length for --fidelity (default: 3x --epochs)"),
)


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --confirm, --confirm-seeds, --fidelity, --fidelity-epochs."""
    group = parser.add_argument_group("can I trust the result?")
    for flag, default, metavar, text in TRUST_FLAGS:
        group.add_argument(flag, type=int, default=default, metavar=metavar, help=text)


def parse_freeze(text: str) -> tuple[str, ...]:
    """``"lr0, mosaic"`` -> ``("lr0", "mosaic")``."""
    return tuple(key.strip() for key in text.split(",") if key.strip())


def parse_train_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse train.py's command line. The data yaml's ``defaults:`` replace the built-in defaults of the options
    the command line leaves out (the built-in shapes.yaml recommends its CPU recipe this way)."""
    from utils.data.config import training_defaults

    parser = train_parser(description)
    args = parser.parse_args(argv)
    if args.resume:
        return args  # the checkpoint's options win
    defaults = training_defaults(args.data)
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


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
    ("--max-det", "max_det", 1, "detections per image"),
    ("--confirm", "confirm", 0, "children to confirm"),
    ("--confirm-seeds", "confirm_seeds", 0, "seeds per confirmed child"),
    ("--fidelity", "fidelity", 0, "children to retrain at full length"),
    ("--fidelity-epochs", "fidelity_epochs", 1, "epochs"),
    ("--min-warmup-iters", "min_warmup_iters", 0, "warmup iterations"),
    ("--coco-max-dets", "coco_max_dets", 1, "detections per image and class"),
)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag out of its range, naming the flag, before any file is read or any data is scanned;
    then round --img up to a multiple of the largest stride, as yolov5 does."""
    for flag, attribute, minimum, meaning in FLAG_MINIMUMS:
        value = getattr(args, attribute, None)
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum} ({meaning}), got {value}")
    args.imgsz = check_img_size(args.imgsz)


def check_img_size(img_size: int, stride: int = 32) -> int:
    """Round --img up to a multiple of the largest stride, saying so when it changes."""
    rounded = max(math.ceil(img_size / stride) * stride, stride)
    if rounded != img_size:
        LOGGER.warning(f"--img {img_size} must be a multiple of {stride}, using {rounded}")
    return rounded


def scheduler_params(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``build_scheduler`` (name included) from parsed options; resolves --cos-lr."""
    name = args.scheduler
    if args.cos_lr and name is not None and scheduler_name(name) != "cos":
        raise UserError(f"--cos-lr contradicts --scheduler {name}; pass only one of them")
    name = scheduler_name(name) if name is not None else ("cos" if args.cos_lr else "linear")
    hold_epochs = args.close_mosaic if args.min_lr_epochs is None else args.min_lr_epochs
    return {
        "name": name,
        "step_size": args.lr_step_size,
        "milestones": args.lr_milestones,
        "gamma": args.lr_gamma,
        "patience": args.lr_patience,
        "hold_epochs": hold_epochs,
    }


def build_train_options(
    args: argparse.Namespace, device: torch.device, rank: int = -1, world_size: int = 1
) -> TrainOptions:
    """Turn parsed train.py options into the trainer's explicit ``TrainOptions`` (no folder yet)."""
    return TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        nominal_batch=args.nbs,
        cfg=args.cfg,
        weights=args.weights,
        device=device,
        workers=args.workers,
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
        min_warmup_iters=args.min_warmup_iters,
        resume=args.resume if isinstance(args.resume, str) else None,
        outputs=OutputOptions(save_weights=not args.nosave, plots=not args.noplots, record=recorded_options(args)),
        distributed=DistributedOptions(rank=rank, world_size=world_size, sync_bn=args.sync_bn),
    )


def recorded_options(args: argparse.Namespace) -> dict:
    """The options as plain yaml-safe values, for opt.yaml and checkpoints."""
    return {
        key: value if isinstance(value, int | float | str | bool | list | type(None)) else str(value)
        for key, value in vars(args).items()
    }


def resumed_args(args: argparse.Namespace, checkpoint_path: Path, recorded: dict) -> argparse.Namespace:
    """The original run's options (recorded in its checkpoint), continuing from ``checkpoint_path``."""
    restored = argparse.Namespace(**{**vars(args), **recorded})
    restored.resume = str(checkpoint_path)
    restored.device = args.device or restored.device
    restored.weights = ""  # the resumed state replaces every weight; the original file may be gone
    return restored


def load_train_hyp(args: argparse.Namespace) -> dict[str, float]:
    """Load --hyp. A hyp file that names an optimizer (a hyp_evolve.yaml whose evolution evolved it) sets
    ``args.optimizer``; an explicit --optimizer naming another one is an error naming both."""
    hyp_file = read_hyp_file(args.hyp)
    flag, named = optimizer_name(args.optimizer), hyp_file.choices.get("optimizer")
    if named is not None and args.optimizer_given and flag != named:
        raise UserError(f"--optimizer {flag} contradicts 'optimizer: {named}' in {args.hyp}; drop one of them")
    args.optimizer = named or flag
    return hyp_file.hyp


def build_evolve_options(args: argparse.Namespace) -> EvolveOptions:
    """The evolution's options from train.py's flags; --meta is loaded (and checked) here."""
    project = Path(args.project)
    if project.resolve() == (RUNS / "train").resolve():
        project = RUNS / "evolve"  # evolve reuses runs/evolve/<name>, so that workers share it
    return EvolveOptions(
        n=args.evolve,
        run_dir=project / args.name,
        study_name=args.name,
        meta=load_meta(args.meta),
        storage=args.storage,
        sampler=args.sampler,
        seed=args.seed,
        freeze=parse_freeze(args.freeze_hyp),
        prune=args.prune,
        evolve_from=args.evolve_from,
        parent_selection=args.parent_selection,
        save_children=args.save_children,
        plots=not args.noplots,
        trust=TrustPlan(args.confirm, args.confirm_seeds, args.fidelity, args.fidelity_epochs or 3 * args.epochs),
    )


def build_training_job(args: argparse.Namespace) -> TrainingJob:
    """What every evolution child trains on, from train.py's flags (the base hyp is loaded and checked here)."""
    from utils.device import distributed_env, select_device
    from utils.evolution.training_objective import TrainingJob

    hyp = load_train_hyp(args)  # first: the hyp file may name the optimizer
    options = build_train_options(args, select_device(args.device), world_size=distributed_env()[2])
    return TrainingJob(hyp, options, args.data, args.imgsz, args.cache, evolution_setup(args))


def evolution_setup(args: argparse.Namespace) -> dict[str, object]:
    """What every child of one study must share: a worker started with other values may not join it."""
    keys = {"data": str(args.data), "cfg": str(args.cfg), "img": args.imgsz, "epochs": args.epochs}
    return {**keys, "optimizer": str(args.optimizer), "nbs": args.nbs}


# --- val.py and detect.py -------------------------------------------------------------------------------------------


def val_parser(description: str | None = None) -> CliParser:
    parser = CliParser(description=description)
    parser.add_argument("--weights", required=True, help="checkpoint .pt written by train.py")
    parser.add_argument("--data", default="shapes.yaml", help="data yaml")
    parser.add_argument("--batch-size", "--batch", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image after NMS")
    coco = "score only the top N detections per image and class, as COCOeval's maxDets (100 reproduces COCO)"
    parser.add_argument("--coco-max-dets", type=int, default=None, help=coco)
    parser.add_argument("--task", default="val", choices=("val", "test", "speed"), help="split to score, or speed")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers")
    parser.add_argument("--half", action="store_true", help="FP16 autocast inference (CUDA only)")
    parser.add_argument("--save-txt", action="store_true", help="save detections to labels/*.txt (with conf)")
    parser.add_argument("--save-json", action="store_true", help="save COCO json and print the reference mAP")
    parser.add_argument("--noplots", action="store_true", help="save no plots")
    parser.add_argument("--verbose", action="store_true", help="per-class table even for many classes")
    parser.add_argument("--fitness", default=None, help="also print fitness with these weights, e.g. 'mAP50-95=1'")
    add_run_folder_arguments(parser, RUNS / "val")
    return parser


def detect_parser(description: str | None = None) -> CliParser:
    parser = CliParser(description=description)
    parser.add_argument("--weights", required=True, help="checkpoint .pt written by train.py")
    parser.add_argument("--source", required=True, help="image, video, folder or glob (quote it: 'imgs/*.jpg')")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class ids")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--line-thickness", type=int, default=2, help="box thickness (pixels)")
    add_run_folder_arguments(parser, RUNS / "detect")
    return parser
