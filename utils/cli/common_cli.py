"""What every entry point's command line shares: the parser class, the run-folder flags, and the numeric checks."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import NoReturn

from utils.errors import USER_ERROR_EXIT_CODE, UserError
from utils.training.schedule import scheduler_name

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"
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
    ("--children-per-device", "children_per_device", 1, "evolution workers per device"),
    ("--max-det", "max_det", 1, "detections per image"),
    ("--confirm", "confirm", 0, "children to confirm"),
    ("--confirm-seeds", "confirm_seeds", 0, "seeds per confirmed child"),
    ("--fidelity", "fidelity", 0, "children to retrain at full length"),
    ("--fidelity-epochs", "fidelity_epochs", 1, "epochs"),
    ("--min-warmup-iters", "min_warmup_iters", 0, "warmup iterations"),
    ("--coco-max-dets", "coco_max_dets", 1, "detections per image and class"),
    ("--save-period", "save_period", -1, "epochs between epochN.pt checkpoints, -1 for none"),
    ("--seed", "seed", 0, "the random seed"),
    ("--line-thickness", "line_thickness", 1, "box thickness in pixels"),
)


SEED_MAX = 2**31 - 1

# (flag, attribute, range as text, test): fractions, and the seed's ceiling.
FLAG_RANGES = (
    ("--conf-thres", "conf_thres", "in [0, 1]", lambda value: 0 <= value <= 1),
    ("--iou-thres", "iou_thres", "in [0, 1]", lambda value: 0 <= value <= 1),
    ("--label-smoothing", "label_smoothing", "in [0, 1)", lambda value: 0 <= value < 1),
    # numpy and torch take seeds below 2**32; repeats and DDP ranks add to --seed, so half of that range is left
    ("--seed", "seed", f"at most {SEED_MAX}", lambda value: value <= SEED_MAX),
)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag out of its range, naming the flag, before any file is read or any data is scanned;
    then round --img up to a multiple of the largest stride, as yolov5 does."""
    for attribute, value in vars(args).items():  # argparse's float() takes "nan" and "inf"
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{attribute.replace('_', '-')} must be a finite number, got {value}")
    for flag, attribute, minimum, meaning in FLAG_MINIMUMS:
        value = getattr(args, attribute, None)
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum} ({meaning}), got {value}")
    for flag, attribute, allowed, within in FLAG_RANGES:
        value = getattr(args, attribute, None)
        if value is not None and not within(value):
            raise UserError(f"{flag} must be {allowed}, got {value}")
    if getattr(args, "children_per_device", 1) != 1 and getattr(args, "evolve", None) is None:
        raise UserError("--children-per-device starts evolution workers: it needs --evolve")
    name = getattr(args, "name", None)
    if name is not None and Path(name).name in ("", ".", ".."):  # pathlib drops ".": the project folder itself
        raise UserError(f"--name must end in a folder name, got {name!r}")
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
