"""The adapter that evolves a training run: one child trains one hyp on data prepared once per worker.

It is the only evolution module that imports training or data; ``runner`` and the rest evolve any objective.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from utils.errors import UserError
from utils.evaluation.metrics import MAP50, MAP50_95
from utils.evolution.child import ChildContext
from utils.evolution.console import epoch_line
from utils.evolution.launcher import Progress, WorkerSpec, launch, watch_parent
from utils.evolution.options import EvolveOptions
from utils.evolution.runner import run
from utils.evolution.search_space import GeneSpec
from utils.evolution.storage import check_storage
from utils.training.hyp import HYP_CHOICES, HYP_RANGES, split_choices
from utils.training.options import TrainOptions

if TYPE_CHECKING:
    from utils.data.prepared import PreparedData
    from utils.training.tensorboard_log import TensorBoardLog

LOGGER = logging.getLogger(__name__)
TENSORBOARD_FOLDER = "tensorboard"  # in the evolution's folder: one event-file folder per child (child_<number>)
TRAINING_LOGGERS = ("utils.training.autoanchor", "utils.training.trainer")  # what a child's training logs itself


@dataclass(frozen=True)
class TrainingJob:
    """What every child trains on: the base hyp, the run options, and the data at one image size."""

    base_hyp: dict[str, float]
    options: TrainOptions  # each child's options, before its own folder and validation cadence
    data: str  # data yaml
    img_size: int
    cache: str | None  # --cache as given; None caches in RAM when the images fit
    setup: Mapping[str, object]  # what a worker must share to join the study (data, model, epochs, ...)


def check_meta_ranges(meta: Mapping[str, GeneSpec]) -> None:
    """Refuse bounds a child could not train with (lr0 down to 0, a probability above 1): they would fail later."""
    for key, spec in meta.items():
        allowed = HYP_RANGES.get(key)
        if spec.gain > 0 and allowed is not None and not (allowed.contains(spec.low) and allowed.contains(spec.high)):
            raise UserError(
                f"meta entry '{key}': bounds [{spec.low:g}, {spec.high:g}] go beyond what {key} may be "
                f"({allowed.describe()}); children there would fail"
            )


def check_meta_choices(meta: Mapping[str, GeneSpec]) -> None:
    """Refuse choice genes training cannot use: only the keys in ``HYP_CHOICES`` (the optimizer), with its names."""
    for key, spec in meta.items():
        if spec.type != "choice":
            continue
        if key not in HYP_CHOICES:
            raise UserError(f"meta entry '{key}': training has no choice named {key} (choice genes: "
                            f"{', '.join(HYP_CHOICES)})")  # fmt: skip
        unknown = [name for name in spec.choices if name not in HYP_CHOICES[key]]
        if unknown:
            raise UserError(f"meta entry '{key}': unknown choice(s) {', '.join(unknown)} (valid: "
                            f"{', '.join(HYP_CHOICES[key])})")  # fmt: skip


def base_hyp_for(meta: Mapping[str, GeneSpec], job: TrainingJob) -> dict[str, float | str]:
    """The hyp the study starts from: with an optimizer gene in the meta, the base child's optimizer is the run's
    (--optimizer, or the one the hyp file names)."""
    return {**job.base_hyp, "optimizer": job.options.optimizer} if "optimizer" in meta else dict(job.base_hyp)


def child_options(options: TrainOptions, hyp: Mapping[str, float | str]) -> tuple[dict[str, float], TrainOptions]:
    """(training's numeric hyp, the options) of one child: a choice gene in ``hyp`` (the optimizer) moves into the
    options, and into the options recorded with its files."""
    numbers, choices = split_choices(dict(hyp))
    if "optimizer" in choices:
        record = {**options.outputs.record, "optimizer": choices["optimizer"]}
        options = dataclasses.replace(options.with_outputs(record=record), optimizer=choices["optimizer"])
    return numbers, options


def epoch_figures(metrics: Mapping[str, float]) -> dict[str, float]:
    """A child's epoch line: the summed train loss, then the val metrics and fitness when the epoch validated."""
    figures = {"loss": sum(value for key, value in metrics.items() if key.startswith("train/"))}
    for label, key in (("mAP50", MAP50), ("mAP50-95", MAP50_95), ("fitness", "fitness")):
        if key in metrics:
            figures[label] = metrics[key]
    return figures


def epoch_reporter(child: ChildContext, epochs: int, board: TensorBoardLog) -> Callable[[int, dict[str, float]], None]:
    """``train``'s ``on_epoch_end`` for a child: its console line; its metrics to its TensorBoard folder by epoch;
    at each validated epoch its fitness to the study by epochs trained, the unit of the pruners' rungs
    (utils/evolution/pruning.py), where the pruner may stop the child."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        print(epoch_line(child.index, epoch + 1, epochs, epoch_figures(metrics)), flush=True)
        board.scalars(epoch, metrics)
        if "fitness" in metrics:
            child.report(epoch + 1, metrics["fitness"])

    return on_epoch_end


@contextmanager
def labelled_training_lines(label: str) -> Iterator[None]:
    """Prefix what training logs itself (AutoAnchor refitting a new anchor setting, closing mosaic) with ``label``
    while a child trains, so that a worker's log says which child a line belongs to."""

    def prefix(record: logging.LogRecord) -> bool:
        record.msg = f"{label}{record.msg}"
        return True

    loggers = [logging.getLogger(name) for name in TRAINING_LOGGERS]
    for logger in loggers:
        logger.addFilter(prefix)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(prefix)


def train_child(
    numbers: dict[str, float], options: TrainOptions, data: PreparedData, child: ChildContext, board_dir: Path,
    fitted_anchors: dict,
) -> dict[str, float]:  # fmt: skip
    """Train one child, its console lines labelled with it, its epochs to the study and to ``board_dir``."""
    from utils.training.tensorboard_log import TensorBoardLog
    from utils.training.trainer import train

    board = TensorBoardLog(board_dir)
    report = epoch_reporter(child, options.epochs, board)
    try:
        with labelled_training_lines(f"evolve: child {child.index} "):
            metrics = train(numbers, options, data, on_epoch_end=report, fitted_anchors=fitted_anchors)
        board.scalars(board.last_step or 0, {"final/fitness": metrics["fitness"]})
    finally:
        board.close()
    return metrics


def evolve_training(evolution: EvolveOptions, job: TrainingJob, workers: Sequence[WorkerSpec] = ()) -> None:
    """Run this worker's share of the evolution: cheap checks first, then the data once, then children. With
    ``workers`` (one command, several workers), start them after the cheap checks and show their progress instead."""
    from utils.data.image_cache import CacheDoesNotFit
    from utils.data.prepared import prepare_data
    from utils.training.checkpoint import load_checkpoint
    from utils.training.trainer import FittedAnchors, check_run

    if job.options.distributed.world_size > 1:
        raise UserError("--evolve runs one process per device, not under torchrun: start one worker per --device")
    if job.options.resume:
        raise UserError("--evolve resumes by rerunning the same command; drop --resume")
    check_meta_ranges(evolution.meta)
    check_meta_choices(evolution.meta)
    check_storage(evolution.run_dir, evolution.storage)
    if job.options.weights:
        load_checkpoint(job.options.weights)  # a missing or corrupt file fails now, not after the dataset scan
    if workers:
        launch(workers, Progress.of(evolution))
        return
    if evolution.parent_pid is not None:
        watch_parent(evolution.parent_pid)
    try:  # RAM by default, so children never decode an image twice
        data = prepare_data(job.data, job.img_size, job.cache or "ram", single_cls=job.options.single_cls)
    except CacheDoesNotFit as error:
        if job.cache:
            raise
        LOGGER.info(f"not caching images in RAM ({error}); children will read them from disk")
        data = prepare_data(job.data, job.img_size, None, single_cls=job.options.single_cls)
    if job.options.outputs.save_period > 0:
        LOGGER.warning("--save-period: evolution children save no epoch checkpoints; ignored")
    base_options = job.options.with_outputs(plots=False, show_progress=False, save_period=-1)
    fitted_anchors: FittedAnchors = {}  # AutoAnchor once per anchor setting, for every child of this worker
    check_run(job.base_hyp, base_options, data, fitted_anchors)  # a bad flag fails once, not in every child

    pruning = evolution.prune != "none"

    def objective(hyp: dict[str, float | str], child: ChildContext) -> dict[str, float]:
        # Every child trains with the same seed (common random numbers: the same batches and augmentation draws),
        # so fitness differences come from the hyp rather than from luck; the mutation itself uses child.seed.
        # Repeats train with other seeds (the noise) and fidelity runs longer (child.train_seed, child.epochs).
        # Like yolov5, children validate only their final epoch, unless pruning needs a fitness every epoch. Each
        # validated epoch is reported to the study (the dashboard's intermediate values) and to TensorBoard.
        numbers, options = child_options(base_options, hyp)
        options = options.with_outputs(save_dir=child.run_dir if evolution.save_children else None)
        options = dataclasses.replace(options, validate_every_epoch=pruning, seed=child.train_seed,
                                      epochs=child.epochs or base_options.epochs)  # fmt: skip
        board_dir = evolution.run_dir / TENSORBOARD_FOLDER / f"child_{child.name}"
        return train_child(numbers, options, data, child, board_dir, fitted_anchors)

    try:
        run(
            objective, base_hyp_for(evolution.meta, job), fitness_weights=job.options.fitness_weights,
            setup=dict(job.setup),
            steps=job.options.epochs,
            **evolution.run_arguments(),
        )  # fmt: skip
    except KeyboardInterrupt:
        print("evolve: interrupted; finished children are kept: rerun the same command to continue", flush=True)
        raise
