"""A whole training run as train.py starts it: resume, the run folder and its lock, DDP, data, then ``train``."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.files import free_backup_path
from utils.run_dir import RunFolderLock, increment_path
from utils.training.checkpoint import load_checkpoint
from utils.training.checkpoint_fields import resume_problem
from utils.training.distributed import barrier_for_main_process, close_distributed, init_distributed
from utils.training.hyp import check_hyp
from utils.training.options import TrainOptions

LOGGER = logging.getLogger("train")


@dataclass(frozen=True)
class TrainJob:
    """One training run: the hyp and options, the data at one size, and where its folder goes."""

    hyp: dict[str, float]
    options: TrainOptions  # its outputs.save_dir is chosen here
    data: str  # data yaml
    img_size: int
    cache: str | None
    run_dir: Path  # project/name; the first free name*N unless exist_ok, or the folder being resumed
    exist_ok: bool = False


def resume_checkpoint_path(resume: str | bool, runs_root: Path) -> Path:
    """The checkpoint ``--resume`` names, or for a bare ``--resume`` the newest ``runs_root/*/weights/last.pt``."""
    if isinstance(resume, str):
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"--resume {path}: no such checkpoint file")
        if path.parent.name != "weights":
            # The run continues in the checkpoint's run folder (yolov5: <run>/weights/last.pt); any other place
            # would make that folder the grandparent, and its hyp.yaml, opt.yaml and results.csv would be rewritten.
            raise UserError(f"--resume {path}: a run resumes in its own folder, so the checkpoint must be "
                            "<run>/weights/<file>.pt; copy it into a run's weights/ folder first")  # fmt: skip
        if not (path.parent.parent / "opt.yaml").is_file():
            raise UserError(f"--resume {path}: {path.parent.parent} has no opt.yaml, so it is not the folder of a "
                            "train.py run, and resuming would write into it")  # fmt: skip
        return path
    candidates = sorted(runs_root.glob("*/weights/last.pt"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise UserError(f"--resume: no {runs_root}/*/weights/last.pt found to resume; pass the checkpoint path")
    LOGGER.info(f"--resume: picked the newest checkpoint, {candidates[-1]}")
    return candidates[-1]


def claim_run_to_resume(checkpoint_path: Path) -> RunFolderLock:
    """Lock the folder of the run to resume: a run that another process still trains is never taken over."""
    return RunFolderLock(checkpoint_path.parent.parent).acquire("resume")


def resume_state(checkpoint_path: Path) -> tuple[dict, dict[str, float]]:
    """(the options the run was started with, its hyp), from a last.pt that has epochs left to train. The run
    folder's opt.yaml must be this run's (same data, model and epochs): the resumed run rewrites it."""
    checkpoint = load_checkpoint(checkpoint_path)
    if "training_model" not in checkpoint or checkpoint.get("options") in (None, {}):
        raise UserError(f"--resume: {checkpoint_path} holds no training state (was it saved by train.py?)")
    problem = resume_problem(checkpoint)
    if problem:
        raise UserError(f"--resume: {checkpoint_path} cannot be resumed: {problem}")
    opt_yaml = checkpoint_path.parent.parent / "opt.yaml"
    if opt_yaml.is_file():
        try:
            recorded = yaml.safe_load(opt_yaml.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
            recorded = None
        keys = ("data", "cfg", "epochs")
        if not isinstance(recorded, dict) or any(recorded.get(key) != checkpoint["options"].get(key) for key in keys):
            raise UserError(f"--resume: {opt_yaml} is not the opt.yaml of the run in {checkpoint_path} (data, cfg or "
                            "epochs differ): the folder is another run's, and resuming would rewrite it")  # fmt: skip
    if checkpoint["epoch"] + 1 >= checkpoint["options"]["epochs"]:
        raise UserError(f"--resume: {checkpoint_path} already finished all {checkpoint['options']['epochs']} epochs")
    return checkpoint["options"], check_hyp(checkpoint["hyp"], source=f"{checkpoint_path} hyp")


# What a run writes that --exist-ok would otherwise overwrite (or append to, results.csv) in a folder already used.
KEPT_OUTPUTS = ("results.csv", "hyp.yaml", "opt.yaml", "weights/last.pt", "weights/best.pt", "weights/epoch*.pt")


def keep_earlier_outputs(run_dir: Path, weights: str = "") -> None:
    """``--exist-ok`` reuses a folder, as in yolov5, but never overwrites: an earlier run's (or the user's)
    results.csv, hyp/opt yaml and weights move to free backup names (``results.backup.csv``, ``last.backup.pt``)
    first, with a line naming them; the ``--weights`` file (``weights/best.pt`` of the run fine-tuned into its own
    folder) is copied instead, since the model is built from it next. Plots are overwritten."""
    moved = []
    for pattern in KEPT_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if ".backup" not in path.name:
                backup = free_backup_path(path)
                if weights and path.resolve() == Path(weights).resolve():
                    shutil.copy2(path, backup)
                else:
                    os.replace(path, backup)
                moved.append(str(backup.relative_to(run_dir)))
    if moved:
        LOGGER.warning(f"--exist-ok: {run_dir} held an earlier run's files; kept as {', '.join(moved)}")


def run_training(job: TrainJob, lock: RunFolderLock | None = None) -> dict[str, float]:
    """Train ``job`` as this process's rank; rank 0 makes and locks the run folder. Returns the final metrics.

    ``lock``: the resumed run's folder lock, already held (``claim_run_to_resume``); released at the end.
    """
    from utils.data.prepared import prepare_data
    from utils.training.trainer import FittedAnchors, check_run, train

    options, distributed = job.options, job.options.distributed
    if options.weights:
        load_checkpoint(options.weights)  # a missing or corrupt file fails now, not after the dataset scan
    init_distributed(options.device, distributed.world_size)
    try:
        barrier_for_main_process(distributed.rank, first=True)  # rank 0 generates/scans and caches labels first
        data = prepare_data(job.data, job.img_size, job.cache, single_cls=options.single_cls)
        barrier_for_main_process(distributed.rank, first=False)
        fitted_anchors: FittedAnchors = {}  # AutoAnchor runs once, for the check and the run
        check_run(job.hyp, options, data, fitted_anchors)
        save_dir = None
        if distributed.is_main_process:
            save_dir = job.run_dir if options.resume else increment_path(job.run_dir, job.exist_ok)
            lock = lock or RunFolderLock(save_dir).acquire()
            if not options.resume:
                keep_earlier_outputs(save_dir, options.weights)
        metrics = train(job.hyp, options.with_outputs(save_dir=save_dir), data, fitted_anchors=fitted_anchors)
    finally:
        if lock is not None:
            lock.release()
    if distributed.is_main_process:
        summary = ", ".join(f"{key.split('/')[-1]} {value:.4g}" for key, value in metrics.items() if "metrics/" in key)
        LOGGER.info(f"done: {summary}; results in {save_dir}")
    close_distributed(distributed.world_size)
    return metrics
