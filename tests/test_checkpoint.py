"""Tests for utils/training/checkpoint.py: round trip, atomic save, safe loading and weight transfer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.yolo import build_model
from utils.errors import UserError
from utils.training.checkpoint import (
    float_state_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    transfer_weights,
)


class Payload:
    """A custom class: weights-only loading must refuse to build it."""

    def __reduce__(self):
        return (print, ("code ran during load",))


def checkpoint_fields(model: torch.nn.Module) -> dict:
    return {
        "model_cfg": model.yaml,
        "num_classes": model.num_classes,
        "names": ["a", "b"],
        "model": float_state_dict(model),
        "epoch": 3,
        "best_fitness": np.float64(0.25),  # numpy scalars are stored as plain floats
        "optimizer": None,
        "ema": None,
        "ema_updates": 0,
        "scheduler": None,
        "hyp": {"lr0": 0.01},
        "options": {"img": 64},
        "metrics": {"metrics/mAP_0.5": 0.5},
    }


@pytest.fixture(scope="module")
def trained_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=2, anchors_per_level=2)
    with torch.no_grad():
        model.detect.anchors.mul_(1.5)  # as autoanchor would
        model(torch.rand(2, 3, 64, 64))  # moves BatchNorm running statistics away from their defaults
    return model


def test_round_trip(tmp_path, trained_model) -> None:
    path = save_checkpoint(tmp_path / "weights" / "last.pt", **checkpoint_fields(trained_model))
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 3 and checkpoint["best_fitness"] == 0.25 and checkpoint["names"] == ["a", "b"]
    assert type(checkpoint["best_fitness"]) is float
    restored = model_from_checkpoint(checkpoint)
    assert not restored.training and next(restored.parameters()).dtype == torch.float32
    torch.testing.assert_close(restored.detect.anchors, trained_model.detect.anchors)
    image = torch.rand(1, 3, 64, 64)
    trained_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(image)[0], trained_model(image)[0])
    trained_model.train()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_save_rejects_unsafe_fields(tmp_path) -> None:
    with pytest.raises(TypeError, match="checkpoint.options.bad"):
        save_checkpoint(tmp_path / "x.pt", model_cfg={}, num_classes=1, model={}, options={"bad": object()})
    assert not list(tmp_path.iterdir())


def test_overwrite_keeps_a_complete_file(tmp_path, trained_model) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, **checkpoint_fields(trained_model))
    save_checkpoint(path, **dict(checkpoint_fields(trained_model), epoch=4))
    assert load_checkpoint(path)["epoch"] == 4


def test_custom_class_pickle_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model_cfg": {}, "num_classes": 1, "model": Payload()}, path)
    with pytest.raises(UserError, match="refusing to load .*evil.pt") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    assert "code ran" not in capsys.readouterr().out


def test_plain_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(UserError):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_file_is_user_error(tmp_path, content: bytes) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt.pt") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_truncated_checkpoint_is_user_error(tmp_path, trained_model) -> None:
    path = save_checkpoint(tmp_path / "full.pt", **checkpoint_fields(trained_model))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated.pt"):
        load_checkpoint(truncated)


@pytest.mark.parametrize(
    "content",
    [
        [1, 2, 3],
        {"epoch": 1},
        # the required keys with the wrong types (dicts saved by hand): tracebacks deep in training or val.py before
        {"model_cfg": "yolov5n.yaml", "num_classes": 3, "model": 5},
        {"model_cfg": "yolov5n.yaml", "num_classes": 3, "model": {"model.0.conv.weight": 3}},
        {"model_cfg": "yolov5n.yaml", "num_classes": "abc", "model": {}},
        {"model_cfg": "yolov5n.yaml", "num_classes": 0, "model": {}},
        {"model_cfg": 7, "num_classes": 2, "model": {}},
    ],
)
def test_unrecognised_checkpoint_is_user_error(tmp_path, content) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match="unrecognised checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_transfer_weights_counts_matches(trained_model) -> None:
    target = build_model("yolov5n", num_classes=5)  # 3 anchors, 5 classes: the head shapes differ
    source = trained_model.state_dict()
    loaded, skipped = transfer_weights(target, source)
    head_mismatches = [
        n for n in source if n.startswith("model.24.") and target.state_dict()[n].shape != source[n].shape
    ]
    assert skipped == len(head_mismatches) == 7  # anchors + 3 conv weights + 3 conv biases
    assert loaded == len(source) - skipped
    torch.testing.assert_close(target.model[0].conv.weight, trained_model.model[0].conv.weight)
    assert not torch.equal(target.detect.m[0].weight[:2, :2], trained_model.detect.m[0].weight[:2, :2])


def test_transfer_weights_exclude(trained_model) -> None:
    target = build_model("yolov5n", num_classes=2, anchors_per_level=2)
    before = target.detect.anchors.clone()
    loaded, skipped = transfer_weights(target, trained_model.state_dict(), exclude=("anchors",))
    assert skipped == 1 and loaded == len(trained_model.state_dict()) - 1
    assert torch.equal(target.detect.anchors, before)
