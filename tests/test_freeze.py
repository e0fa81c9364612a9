"""--freeze and fine-tuning from yolov5 weights: the flag, frozen layers out of the optimizer, the checkpoint's anchors
kept, and one epoch from the yolov5 fixture that leaves the frozen layers untouched."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from models.yolo import build_model
from tests.test_train_cli import TINY_ARGS, run_train
from tests.test_yolov5_checkpoint import YOLOV5_PT
from utils import cli
from utils.data.prepared import prepare_data
from utils.errors import UserError
from utils.training.checkpoint import load_checkpoint, save_checkpoint
from utils.training.hyp import load_hyp
from utils.training.optim import build_optimizer, freeze_layers, frozen_layer_indices
from utils.training.options import OutputOptions, TrainOptions
from utils.training.trainer import build_detector, train

IMG_SIZE = 64
BACKBONE = tuple(range(10))


@pytest.mark.parametrize(
    ("flag", "expected"), [([0], ()), ([10], BACKBONE), ([0, 1, 2], (0, 1, 2)), ([3, 1, 3], (1, 3))]
)
def test_frozen_layer_indices_follow_yolov5(flag, expected) -> None:
    assert frozen_layer_indices(flag) == expected


def test_negative_freeze_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--freeze"):
        frozen_layer_indices([-1])


def test_freezing_too_much_is_a_short_user_error() -> None:
    """--freeze 5000000 built 5 million layer names and a 39 MB error line; --freeze 25 froze the whole nano model
    and failed in backward with a RuntimeError."""
    with pytest.raises(UserError, match="no model here has that many layers"):
        frozen_layer_indices([5_000_000])
    model = build_model("yolov5n.yaml", num_classes=2)
    with pytest.raises(UserError, match="freezes every layer") as error:
        freeze_layers(model, frozen_layer_indices([25]))
    with pytest.raises(UserError, match="not 25 ... 999") as error:
        freeze_layers(model, frozen_layer_indices([1000]))
    assert len(str(error.value)) < 100
    fresh = build_model("yolov5n.yaml", num_classes=2)
    assert "(171 tensors)" in freeze_layers(fresh, frozen_layer_indices([24]))  # all but Detect: allowed


def test_freeze_and_freeze_hyp_are_different_flags() -> None:
    parser = cli.train_parser()
    layers = parser.parse_args(["--freeze", "10"])
    hyp_keys = parser.parse_args(["--freeze-hyp", "lr0"])
    assert layers.freeze == [10] and layers.freeze_hyp == ""
    assert hyp_keys.freeze == [0] and hyp_keys.freeze_hyp == "lr0"
    assert cli.build_train_options(layers, torch.device("cpu")).freeze == BACKBONE
    assert cli.build_train_options(hyp_keys, torch.device("cpu")).freeze == ()


def test_evolution_children_get_the_freeze() -> None:
    args = cli.parse_train_args(["--evolve", "2", "--freeze", "10", "--device", "cpu", "--weights", str(YOLOV5_PT)])
    job = cli.build_training_job(args)
    assert job.options.freeze == BACKBONE and job.options.weights == str(YOLOV5_PT)
    assert job.setup["freeze"] == [10]  # a worker with another --freeze may not join the study


def test_frozen_parameters_leave_the_optimizer() -> None:
    model = build_model("yolov5n", num_classes=2)
    message = freeze_layers(model, BACKBONE)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(name.startswith(tuple(f"model.{i}." for i in BACKBONE)) for name in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters() if name.startswith("model.10."))
    assert message == f"freezing model.0. ... model.9. ({len(frozen)} tensors)"
    optimizer = build_optimizer(model, "SGD", 0.01, 0.9, 5e-4)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.parameters() if not p.requires_grad}
    assert len(optimized) == sum(p.requires_grad for p in model.parameters())


def test_freezing_a_layer_the_model_lacks_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layers 0-24, not 30"):
        freeze_layers(build_model("yolov5n", num_classes=2), (1, 30))


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path):
    return prepare_data(tiny_dataset, IMG_SIZE)


def options(**changes) -> TrainOptions:
    base = TrainOptions(
        epochs=1, batch_size=4, workers=0, weights=str(YOLOV5_PT), autoanchor=False, min_warmup_iters=0,
        outputs=OutputOptions(show_progress=False, plots=False),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("hyp_anchors", [None, 3])
def test_checkpoint_anchors_are_kept_unless_the_hyp_sets_anchors(prepared, hyp_anchors) -> None:
    hyp = {**load_hyp(), **({"anchors": hyp_anchors} if hyp_anchors else {})}
    model = build_detector(hyp, options(), prepared)
    fitted = load_checkpoint(YOLOV5_PT)["model"]["model.24.anchors"]
    assert torch.equal(model.detect.anchors, fitted) == (hyp_anchors is None)


def test_weights_without_cfg_build_the_checkpoint_model(tmp_path, capsys) -> None:
    """yolov5's train.py builds the checkpoint's model when --cfg is not given: --weights yolov5s.pt fine-tunes a
    yolov5s. Ours built the default nano and transferred only BatchNorm counters, anchors and a few biases."""
    small = build_model("yolov5s.yaml", num_classes=3)
    save_checkpoint(tmp_path / "s.pt", model_cfg=small.yaml, num_classes=3, model=small.state_dict())
    assert cli.parse_train_args(["--weights", str(tmp_path / "s.pt")]).cfg == "yolov5s.yaml"
    assert "--cfg yolov5s.yaml: the model of --weights" in capsys.readouterr().out
    assert cli.parse_train_args(["--weights", str(tmp_path / "s.pt"), "--cfg", "yolov5m.yaml"]).cfg == "yolov5m.yaml"
    assert cli.parse_train_args(["--weights", str(YOLOV5_PT)]).cfg == "yolov5n.yaml"  # yolov5's yaml: 'None' strings
    custom = {**small.yaml, "depth_multiple": 0.5}
    save_checkpoint(tmp_path / "custom.pt", model_cfg=custom, num_classes=3, model=small.state_dict())
    with pytest.raises(UserError, match="none of yolov5l, yolov5m, yolov5n, yolov5s, yolov5x; give its model yaml"):
        cli.parse_train_args(["--weights", str(tmp_path / "custom.pt")])


def test_weights_that_fit_another_model_size_are_refused(prepared) -> None:
    """yolov5n weights under --cfg yolov5s: only counters, anchors and Detect's biases matched, a silent scratch run."""
    with pytest.raises(UserError, match="0.00% of the weights of --cfg yolov5s.yaml fit it"):
        build_detector(load_hyp(), options(cfg="yolov5s.yaml"), prepared)


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [BACKBONE, ()])
def test_one_epoch_from_yolov5_weights_trains_only_unfrozen_layers(prepared, tmp_path, caplog, freeze) -> None:
    caplog.set_level(logging.INFO)
    hyp = {**load_hyp(), "warmup_epochs": 0.0}  # warmup would start the weights' learning rate at 0
    run = options(freeze=freeze, nominal_batch=4)  # an optimizer step per batch, not one per 64 images
    train(hyp, run.with_outputs(save_dir=tmp_path), prepared)
    start = load_checkpoint(YOLOV5_PT)["model"]
    trained = load_checkpoint(tmp_path / "weights" / "last.pt")["training_model"]
    prefixes = tuple(f"model.{index}." for index in BACKBONE)
    backbone = [name for name in start if name.startswith(prefixes) and name.endswith(("weight", "bias"))]
    head = [name for name in start if name.startswith("model.17.") and name.endswith(("weight", "bias"))]
    assert backbone and head
    assert all(torch.equal(trained[name], start[name]) for name in backbone) == bool(freeze)
    assert not any(torch.equal(trained[name], start[name]) for name in head)
    assert ("freezing model.0. ... model.9." in caplog.text) == bool(freeze)


@pytest.mark.slow
def test_train_cli_fine_tunes_a_yolov5_checkpoint_with_freeze(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_train("--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), "--name", "tune",
                       "--weights", str(YOLOV5_PT), "--freeze", "10", "--noplots")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"transferred 344 tensors from {YOLOV5_PT}, skipped 6" in result.stderr  # the 6-class head is skipped
    assert "freezing model.0. ... model.9. (" in result.stderr
    start = load_checkpoint(YOLOV5_PT)["model"]
    trained = load_checkpoint(tmp_path / "tune" / "weights" / "last.pt")["training_model"]
    assert torch.equal(trained["model.9.cv2.conv.weight"], start["model.9.cv2.conv.weight"])
