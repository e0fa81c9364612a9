"""Tests for utils/training/yolov5_checkpoint.py: a real yolov5 .pt imports, reproduces yolov5's forward pass and
runs under val.py and detect.py; crafted pickles are refused, naming the global, and run nothing; fields of the wrong
type or shape are one line. The unpickler and the archive reader have their own tests (test_yolov5_unpickler.py,
test_pt_archive.py)."""

from __future__ import annotations

import builtins
import functools
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
import val
from models.common import Conv
from models.yolo import Detect
from utils import cli
from utils.data.synthetic import generate_dataset
from utils.errors import UserError, run_cli
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint
from utils.training.yolov5_checkpoint import (
    UnrecognisedField,
    checked_tensor,
    convert_yolov5_checkpoint,
    read_yolov5_checkpoint,
)
from utils.training.yolov5_unpickler import InertLayer, RestrictedUnpickler, read_restricted

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "yolov5"  # copied from the team's shared fixtures
YOLOV5_PT = FIXTURES / "yolov5n-6cls-320.pt"
FIXTURE_NAMES = ["disc", "square", "triangle", "ring", "cross", "bar"]
YOLOV5_TENSORS = 349  # model.0.conv.weight ... model.24.m.2.bias, BatchNorm statistics included


class Call:
    """Pickles as a call of ``function(*args)``: what a crafted checkpoint runs under a plain torch.load."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def evil_checkpoint(path: Path, payload: Call) -> Path:
    torch.save({"model_cfg": {}, "num_classes": 1, "model": {"weight": torch.zeros(2)}, "extra": payload}, path)
    return path


def test_fixture_is_there() -> None:
    assert YOLOV5_PT.is_file(), f"missing fixture {YOLOV5_PT}"


def test_yolov5_checkpoint_loads_as_a_checkpoint() -> None:
    checkpoint = load_checkpoint(YOLOV5_PT)
    assert checkpoint["source"] == "yolov5" and checkpoint["num_classes"] == 6
    assert checkpoint["names"] == FIXTURE_NAMES
    state = checkpoint["model"]
    assert len(state) == YOLOV5_TENSORS + 1  # + model.24.stride, a buffer here and a plain attribute in yolov5
    assert next(iter(state)) == "model.0.conv.weight" and "model.24.m.2.bias" in state
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())  # fp16 in the file
    assert state["model.24.stride"].tolist() == [8.0, 16.0, 32.0]
    pixels = (state["model.24.anchors"] * state["model.24.stride"].view(-1, 1, 1)).flatten(1)
    torch.testing.assert_close(torch.tensor(checkpoint["model_cfg"]["anchors"]), pixels)


def test_imported_model_reproduces_yolov5_inference() -> None:
    model = model_from_checkpoint(load_checkpoint(YOLOV5_PT))
    images = torch.from_numpy(np.load(FIXTURES / "input_1x3x320x320.npy"))
    expected = torch.from_numpy(np.load(FIXTURES / "output_1x6300x11.npy"))
    with torch.no_grad():
        decoded = model(images)[0]
    assert decoded.shape == expected.shape == (1, 6300, 11)
    assert (decoded - expected).abs().max().item() < 1e-3


def test_anchors_come_from_the_detect_layer_not_the_yaml() -> None:
    raw = read_restricted(YOLOV5_PT)
    detect = raw["model"].children()["model"].children()["24"]
    detect.state["_buffers"]["anchors"] = detect.state["_buffers"]["anchors"] * 1.5  # as AutoAnchor would
    checkpoint = convert_yolov5_checkpoint(raw, YOLOV5_PT)
    assert checkpoint["model_cfg"]["anchors"][0][:2] == pytest.approx([15.0, 19.5])  # the yaml says 10, 13
    model = model_from_checkpoint(checkpoint)
    torch.testing.assert_close(model.detect.anchors, detect.state["_buffers"]["anchors"].float())


def test_layers_are_inert_placeholders() -> None:
    model = read_restricted(YOLOV5_PT)["model"]
    assert isinstance(model, InertLayer) and not isinstance(model, torch.nn.Module)
    assert model.pickled_class == "models.yolo.DetectionModel"
    assert model.children()["model"].children()["0"].pickled_class == "models.common.Conv"


@pytest.mark.parametrize(
    ("function", "make_args", "global_name"),
    [
        (os.system, lambda marker: (f"touch {marker}",), f"{os.system.__module__}.system"),
        (builtins.exec, lambda marker: (f"open({str(marker)!r}, 'w')",), "builtins.exec"),
        (builtins.eval, lambda marker: (f"open({str(marker)!r}, 'w')",), "builtins.eval"),
        (subprocess.call, lambda marker: (["touch", str(marker)],), "subprocess.call"),
        (builtins.getattr, lambda marker: (str(marker), "upper"), "builtins.getattr"),
    ],
)
def test_evil_pickle_is_refused_naming_the_global_and_runs_nothing(tmp_path, function, make_args, global_name):
    marker = tmp_path / "code-ran"
    path = evil_checkpoint(tmp_path / "evil.pt", Call(function, *make_args(marker)))
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match=f"refusing to load .*evil.pt.*{global_name}") as error:
            reader(path)
        assert "\n" not in str(error.value)
    assert not marker.exists()


def test_a_layer_class_called_with_arguments_builds_nothing(tmp_path) -> None:
    path = evil_checkpoint(tmp_path / "layer.pt", Call(Conv, 3, 16))
    with pytest.raises(UserError, match="layer.pt"):
        load_checkpoint(path)


def test_restricted_unpickler_never_imports(monkeypatch) -> None:
    def refuse_import(*args, **kwargs):
        raise AssertionError("the unpickler imported a module")

    unpickler = RestrictedUnpickler.__new__(RestrictedUnpickler)
    unpickler._layer_classes, unpickler._callables = {}, {}
    monkeypatch.setattr(builtins, "__import__", refuse_import)
    layer_class = unpickler.find_class("models.experimental", "NotInThisProject")
    assert issubclass(layer_class, InertLayer) and layer_class.pickled_class == "models.experimental.NotInThisProject"
    with pytest.raises(Exception, match="os.system"):
        unpickler.find_class("os", "system")


def test_torchscript_archive_is_refused(tmp_path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UserError, match="TorchScript"):
        read_yolov5_checkpoint(path)
    with pytest.raises(UserError, match="scripted.pt"):
        load_checkpoint(path)


def test_a_foreign_object_pickle_is_not_taken_for_yolov5(tmp_path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # torch.nn layers are allowed, but there is no yolov5 model
    with pytest.raises(UserError, match="unrecognised checkpoint .*foreign.pt"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def six_class_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data yaml with the fixture's 6 classes: generated shapes, labels of the other classes dropped."""
    folder = tmp_path_factory.mktemp("six_classes")
    generate_dataset(folder / "shapes", seed=1, num_train=2, num_val=4, img_size=128)
    for label_file in (folder / "shapes" / "labels").rglob("*.txt"):
        rows = [row for row in label_file.read_text().splitlines() if int(row.split()[0]) < len(FIXTURE_NAMES)]
        label_file.write_text("".join(f"{row}\n" for row in rows))
    content = {"path": "shapes", "train": "images/train", "val": "images/val", "names": FIXTURE_NAMES}
    yaml_path = folder / "six.yaml"
    yaml_path.write_text(yaml.safe_dump(content, sort_keys=False))
    return yaml_path


def test_val_runs_a_yolov5_checkpoint(six_class_data: Path, tmp_path: Path, capsys) -> None:
    arguments = ["--weights", str(YOLOV5_PT), "--data", str(six_class_data), "--img", "128", "--batch", "4",
                 "--workers", "0", "--device", "cpu", "--project", str(tmp_path), "--noplots"]  # fmt: skip
    assert run_cli(lambda: val.main(cli.val_parser().parse_args(arguments))) == 0
    lines = capsys.readouterr().out.splitlines()  # the table's header is the progress bar's text, on stderr
    assert lines[0].split()[:2] == ["all", "4"]
    assert any(line.split()[0] in FIXTURE_NAMES for line in lines[1:] if line.split())


def test_detect_runs_a_yolov5_checkpoint_with_its_class_names(six_class_data: Path, tmp_path: Path, capsys) -> None:
    images = six_class_data.parent / "shapes" / "images" / "val"
    arguments = ["--weights", str(YOLOV5_PT), "--source", str(images), "--img", "128", "--conf-thres", "0.00001",
                 "--max-det", "3", "--project", str(tmp_path), "--save-txt", "--device", "cpu"]  # fmt: skip
    assert run_cli(lambda: detect.main(cli.detect_parser().parse_args(arguments))) == 0
    reports = [line for line in capsys.readouterr().out.splitlines() if line.startswith("1/")]
    assert reports and any(name in reports[0] for name in FIXTURE_NAMES)
    assert len(list((tmp_path / "exp" / "labels").glob("*.txt"))) == 4


def yolov5_like_model(model_yaml: dict) -> torch.nn.Module:
    """Pickles with yolov5's class paths (models.yolo.Detect): a model dict, a Detect layer with a stride attribute."""
    root = torch.nn.Module()
    root.yaml = model_yaml
    root.model = torch.nn.Sequential(Detect(2, [[10, 13, 16, 30]], [8]))
    del root.model[0]._buffers["stride"]
    root.model[0].__dict__["stride"] = torch.ones(1)  # yolov5 keeps the stride as a plain attribute
    return root


def test_a_layer_that_contains_itself_is_refused(tmp_path) -> None:
    root = yolov5_like_model({})
    root.model[0].add_module("loop", root)
    path = tmp_path / "loop.pt"
    torch.save({"model": root}, path)
    with pytest.raises(UserError, match="contains itself"):
        load_checkpoint(path)


def test_shared_layers_whose_names_multiply_are_refused(tmp_path) -> None:
    root = yolov5_like_model({})
    layer = torch.nn.Module()
    for _ in range(20):  # each level reaches the next under two names: 2**20 names, yet only 20 objects
        parent = torch.nn.Module()
        parent.add_module("a", layer)
        parent.add_module("b", layer)
        layer = parent
    root.model[0].add_module("tree", layer)
    path = tmp_path / "tree.pt"
    torch.save({"model": root}, path)
    with pytest.raises(UserError, match="more than 100000 layers"):
        load_checkpoint(path)


def test_fields_of_unexpected_types_are_a_user_error(tmp_path) -> None:
    root = yolov5_like_model({"nc": "six"})
    path = tmp_path / "odd.pt"
    torch.save({"model": root}, path)
    with pytest.raises(UserError, match="unrecognised yolov5 checkpoint .*odd.pt: nc is not a positive int"):
        load_checkpoint(path)


def nested(depth: int) -> torch.nn.Module:
    layer = torch.nn.Module()
    for _ in range(depth):
        parent = torch.nn.Module()
        parent.add_module("m", layer)
        layer = parent
    return layer


def odd_names(root: torch.nn.Module, names) -> None:
    root.names = names


def odd_nc(root: torch.nn.Module, nc) -> None:
    root.yaml["nc"] = nc


def odd_detect(root: torch.nn.Module, name: str, value) -> None:
    root.model[0].__dict__.pop(name, None)
    root.model[0]._buffers.pop(name, None)
    if name == "stride":  # a plain attribute in yolov5
        root.model[0].stride = value
    else:
        root.model[0].register_buffer(name, value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root: odd_names(root, [functools.reduce(lambda inner, _: [inner], range(10), "disc"), "b"]), "names"),
        (lambda root: odd_names(root, {0: torch.ones(2), 1: "b"}), "names is neither"),
        (lambda root: odd_names(root, torch.ones(2)), "names is neither"),
        (lambda root: odd_nc(root, math.inf), "model yaml holds more than yaml values"),
        (lambda root: odd_nc(root, "2"), "nc is not a positive int"),
        (lambda root: odd_nc(root, True), "nc is not a positive int"),
        (lambda root: odd_nc(root, 3), "do not output 3 classes"),
        (lambda root: odd_detect(root, "stride", torch.ones(5)), r"stride \(5,\) does not match"),
        (lambda root: odd_detect(root, "stride", [8.0]), "'model.0.stride' is a list, not a tensor"),
        (lambda root: odd_detect(root, "anchors", torch.tensor(1.0)), r"anchors are not a \(levels, anchors, 2\)"),
        (lambda root: odd_detect(root, "anchors", torch.full((1, 2, 2), math.nan)), "not finite, positive"),
        (lambda root: root.__dict__.__setitem__("_parameters", torch.ones(3)), "'_parameters' is not a dict"),
        (lambda root: root.__dict__.__setitem__("_non_persistent_buffers_set", torch.ones(3)), "not a set of names"),
        (lambda root: root.add_module("deep", nested(40)), "nested more than 32 deep"),
    ],
)
def test_fields_of_the_wrong_type_or_shape_are_one_line(tmp_path, mutate, message: str) -> None:
    root = yolov5_like_model({"nc": 2})
    root.names = ["a", "b"]
    path = tmp_path / "odd.pt"
    torch.save({"model": root}, path)
    assert read_yolov5_checkpoint(path)["names"] == ["a", "b"]  # the model is fine until mutated
    mutate(root)
    torch.save({"model": root}, path)
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match=f"unrecognised yolov5 checkpoint .*odd.pt: .*{message}") as error:
            reader(path)
        assert "\n" not in str(error.value)


def test_an_expanded_buffer_is_refused_before_it_is_unpickled(tmp_path) -> None:
    root = yolov5_like_model({"nc": 2})
    # 2**60 fp16 zeros from a 2-byte storage: converting it to float32 would allocate 4 EiB
    root.register_buffer("bomb", torch.zeros(1, dtype=torch.half).expand(2**40, 2**20))
    path = tmp_path / "odd.pt"
    torch.save({"model": root}, path)
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match=f"refusing to load .*odd.pt: a tensor of {2**60} elements views a storage"):
            reader(path)


def test_a_bomb_tensor_is_refused_before_it_is_converted() -> None:
    bomb = torch.zeros(1, dtype=torch.half).expand(2**40, 2**20)
    with pytest.raises(UnrecognisedField, match="more elements than its storage holds"):
        checked_tensor(bomb, "bomb")
    view = torch.arange(6.0).view(2, 3).t()[1:]  # a transposed slice shares storage without overlapping itself
    assert checked_tensor(view, "view").tolist() == view.tolist()
