"""Tests for utils/cli/: flags parse into the library's option objects; bad values are one-line user errors."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from utils import cli
from utils.errors import UserError
from utils.evolution import load_meta
from utils.training.schedule import SCHEDULERS, build_scheduler

ROOT = Path(__file__).resolve().parents[1]


def parse(*flags: str) -> argparse.Namespace:
    return cli.train_parser().parse_args(list(flags))


@pytest.mark.parametrize(
    ("flags", "name", "hold_epochs"),
    [
        ((), "linear", 0),
        (("--cos-lr",), "cos", 0),
        (("--scheduler", "COS", "--cos-lr"), "cos", 0),
        (("--scheduler", "warmcos", "--close-mosaic", "5"), "warmcos", 5),
        (("--scheduler", "warmcos", "--close-mosaic", "5", "--min-lr-epochs", "2"), "warmcos", 2),
    ],
)
def test_scheduler_params(flags: tuple[str, ...], name: str, hold_epochs: int) -> None:
    params = cli.scheduler_params(parse(*flags))
    assert (params["name"], params["hold_epochs"]) == (name, hold_epochs)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_from_default_flags(name: str) -> None:
    options = parse("--scheduler", name, "--lr-milestones", "3", "6")
    recorded = cli.recorded_options(options)
    assert yaml.safe_load(yaml.safe_dump(recorded)) == recorded  # opt.yaml round trip
    schedule = build_scheduler(epochs=10, lrf=0.1, warmup_epochs=3.0, **cli.scheduler_params(options))
    assert schedule.name == name and schedule.factor(0) == 1.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [(("--scheduler", "step", "--cos-lr"), "--cos-lr contradicts"), (("--scheduler", "poly"), "valid schedulers")],
)
def test_bad_schedule_flags_are_user_errors(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(UserError, match=message):
        cli.scheduler_params(parse(*flags))


def test_evolve_flags_build_evolve_options():
    parser = cli.train_parser()
    assert parser.parse_args([]).evolve is None
    assert parser.parse_args(["--evolve"]).evolve == cli.DEFAULT_CHILDREN == 300
    args = parser.parse_args(["--evolve", "30", "--freeze-hyp", "lr0, mosaic", "--sampler", "tpe", "--prune"])
    options = cli.build_evolve_options(args)
    assert options.n == 30 and options.freeze == ("lr0", "mosaic") and options.sampler == "tpe" and options.prune
    assert set(options.meta) == set(load_meta()) and options.run_dir == cli.RUNS / "evolve" / "exp"
    other = cli.build_evolve_options(parser.parse_args(["--evolve", "--project", "elsewhere", "--name", "e"]))
    assert other.run_dir == Path("elsewhere") / "e", "an explicit --project is used as given"


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ((), "none"),
        (("--prune",), "median"),
        (("--prune", "halving"), "halving"),
        (("--prune", "hyperband"), "hyperband"),
        (("--prune", "none"), "none"),
        (("--prune", "--evolve", "5"), "median"),
    ],
)
def test_prune_takes_a_pruner_name_and_bare_means_median(flags: tuple[str, ...], name: str) -> None:
    args = parse("--evolve", "3", *flags)
    assert cli.build_evolve_options(args).prune == name


def test_gp_with_a_pruner_warns_that_it_ignores_pruned_children(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="train"):
        cli.build_evolve_options(parse("--evolve", "3", "--sampler", "gp"))
        assert not caplog.text
        options = cli.build_evolve_options(parse("--evolve", "3", "--sampler", "gp", "--prune", "halving"))
    assert options.sampler == "gp" and options.prune == "halving"
    assert "--sampler gp learns from completed children only: with --prune halving" in caplog.text


def test_an_unknown_pruner_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.train_parser().parse_args(["--prune", "asha"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--prune" in lines[0] and "asha" in lines[0] and "hyperband" in lines[0]


def test_bad_choice_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.train_parser().parse_args(["--sampler", "nsga"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nsga" in lines[0]


def test_train_options_split_along_their_seams():
    args = cli.parse_train_args(["--data", "coco128.yaml", "--nosave", "--noplots", "--sync-bn", "--epochs", "7"])
    options = cli.build_train_options(args, torch.device("cpu"), rank=0, world_size=2)
    assert options.epochs == 7 and options.outputs.save_dir is None
    assert (options.outputs.save_weights, options.outputs.plots) == (False, False)
    assert (options.distributed.rank, options.distributed.world_size, options.distributed.sync_bn) == (0, 2, True)
    assert options.outputs.record["epochs"] == 7 and options.is_main_process
    assert options.with_outputs(save_dir=Path("x")).outputs.save_dir == Path("x") and options.outputs.save_dir is None


def test_a_negative_line_thickness_is_refused_before_detection():
    # cv2 draws a box with a negative thickness filled: the image would be covered, not annotated
    args = cli.detect_parser().parse_args(["--weights", "w.pt", "--source", "x.jpg", "--line-thickness", "-1"])
    with pytest.raises(UserError, match="--line-thickness must be at least 1"):
        cli.check_flags(args)


@pytest.mark.parametrize(
    ("parser", "flags", "message"),
    [
        ("val", ["--conf-thres", "2"], "--conf-thres must be in [0, 1], got 2.0"),
        ("val", ["--iou-thres", "nan"], "--iou-thres must be a finite number, got nan"),
        ("detect", ["--iou-thres", "-0.5"], "--iou-thres must be in [0, 1], got -0.5"),
        ("train", ["--label-smoothing", "nan"], "--label-smoothing must be a finite number, got nan"),
        ("train", ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
        ("train", ["--lr-gamma", "inf"], "--lr-gamma must be a finite number, got inf"),
    ],
)
def test_fraction_and_non_finite_flags_are_refused_naming_the_flag(parser, flags, message):
    """argparse's float() takes "nan" and "inf"; the thresholds were a ValueError traceback, a nan label smoothing
    a "loss became nan" error that never named the flag."""
    required = {"val": ["--weights", "w.pt"], "detect": ["--weights", "w.pt", "--source", "x.jpg"], "train": []}
    args = getattr(cli, f"{parser}_parser")().parse_args([*required[parser], *flags])
    with pytest.raises(UserError) as error:
        cli.check_flags(args)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("mAP50=nan", "fitness weight for 'mAP50' must be a finite number >= 0, got 'nan'"),
        ("mAP50=-1", "fitness weight for 'mAP50' must be a finite number >= 0, got '-1'"),
        ("mAP50=0,mAP50-95=0", "fitness weights 'mAP50=0,mAP50-95=0' are all zero"),
    ],
)
def test_a_fitness_weight_that_scores_nothing_useful_is_refused_before_any_training(weights, message):
    # nan was taken, and every child of an evolution then failed with "fitness is nan" after training in full; -1
    # and all zeros trained with exit 0, ranking children by the opposite of their mAP or not at all
    args = cli.parse_train_args(["--fitness", weights, "--evolve", "2"])
    with pytest.raises(UserError, match=re.escape(message)):
        cli.build_train_options(args, torch.device("cpu"))


def test_check_flags_rounds_img_up_to_the_stride():
    args = cli.parse_train_args(["--data", "coco128.yaml", "--img", "60"])
    cli.check_flags(args)
    assert args.imgsz == 64


def test_evolve_entry_point_defaults_to_300_children(tmp_path):
    """evolve.py parses train.py's flags itself: a bare run means 300 children (checked by the flag check)."""
    result = subprocess.run([sys.executable, str(ROOT / "evolve.py"), "--epochs", "0"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "--epochs must be at least 1" in result.stderr


# For every train.py option an evolution records, a command line that changes it (on top of BASE_EVOLVE).
BASE_EVOLVE = ["--evolve", "2"]
CHANGED = {
    "weights": ["--weights", "other.pt", "--cfg", "yolov5n.yaml"],
    "freeze": ["--freeze", "3"],
    "cfg": ["--cfg", "yolov5s.yaml"],
    "data": ["--data", "coco128.yaml"],
    "epochs": ["--epochs", "7"],
    "batch_size": ["--batch", "8"],
    "imgsz": ["--img", "320"],
    "noautoanchor": ["--noautoanchor"],
    "label_smoothing": ["--label-smoothing", "0.1"],
    "patience": ["--patience", "5"],
    "deterministic": ["--deterministic"],
    "fitness": ["--fitness", "mAP50-95=1"],
    "gpu_augment": ["--gpu-augment", "on"],
    "cpu_fast": ["--no-cpu-fast"],
    "nbs": ["--nbs", "64"],
    "min_warmup_iters": ["--min-warmup-iters", "0"],
    "optimizer": ["--optimizer", "SGD"],
    "scheduler": ["--scheduler", "step"],
    "cos_lr": ["--cos-lr"],
    "lr_step_size": ["--lr-step-size", "4"],
    "lr_milestones": ["--lr-milestones", "3", "5"],
    "lr_gamma": ["--lr-gamma", "0.5"],
    "lr_patience": ["--lr-patience", "3"],
    "min_lr_epochs": ["--min-lr-epochs", "2"],
    "close_mosaic": ["--close-mosaic", "2"],
    "lr_fit": ["--lr-fit"],
    "single_cls": ["--single-cls"],
    "rect": ["--rect"],
    "multi_scale": ["--multi-scale"],
    "image_weights": ["--image-weights"],
    "confirm": ["--confirm", "5"],
    "fidelity": ["--fidelity", "2"],
    "fidelity_epochs": ["--fidelity-epochs", "9"],
}
# Recorded by the evolution itself, from the hyp and meta it is given and its own arguments (tests in
# test_evolution_runner.py): the hyp's values, the search space, the seed, the pruner, the seeds per confirmation.
RECORDED_BY_THE_RUN = {"hyp", "meta", "freeze_hyp", "seed", "prune", "confirm_seeds"}


def test_every_train_option_is_recorded_on_the_study_or_listed_as_free_to_differ():
    dests = {action.dest for action in cli.train_parser()._actions} - {"help"}
    assert dests - set(CHANGED) - RECORDED_BY_THE_RUN - cli.evolve_cli.MAY_DIFFER == set()
    assert set(CHANGED) & cli.evolve_cli.MAY_DIFFER == set()


@pytest.mark.parametrize("dest", sorted(CHANGED))
def test_a_worker_whose_recorded_option_differs_is_refused_naming_it(tmp_path, dest):
    from utils.evolution.runner import check_setup
    from utils.evolution.search_space import validate_search_space
    from utils.training.hyp import load_hyp

    device = torch.device("cpu")
    first = cli.evolution_setup(cli.parse_train_args(BASE_EVOLVE), device)
    other = cli.evolution_setup(cli.parse_train_args([*BASE_EVOLVE, *CHANGED[dest]]), device)
    key = cli.evolve_cli.RECORDED_AS.get(dest, dest)
    assert first[key] != other[key]
    study = optuna.create_study(direction="maximize", study_name="evo")
    space = validate_search_space(load_hyp(), load_meta(), ())
    check_setup(study, space, json.loads(json.dumps(first)))  # as the storage keeps it
    check_setup(study, space, first)  # the same worker again joins
    with pytest.raises(UserError, match=rf"study 'evo' was started with a different .*\b{key}\b") as error:
        check_setup(study, space, other)
    assert f"{key}=" in str(error.value) or f"{key}." in str(error.value), "the study's value is named"
