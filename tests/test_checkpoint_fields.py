"""Tests for utils/training/checkpoint_fields.py: a checkpoint's fields of the wrong type, size or nesting are named
in one line; what train.py saves passes. Whole files through the CLIs are in test_hostile_checkpoints.py."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from models.yolo import MAX_CLASSES
from utils.training import checkpoint_fields
from utils.training.checkpoint_fields import field_problem, is_plain_yaml, resume_problem, tensor_problem

CFG = {"cfg_name": "yolov5n", "depth_multiple": 0.33, "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]]]}


def checkpoint(**changes: object) -> dict:
    """A last.pt's fields as train.py saves them (a tiny model), with ``changes``."""
    state = {"conv.weight": torch.zeros(2, 3, 1, 1), "bn.num_batches_tracked": torch.tensor(3)}
    fields = {
        "model_cfg": CFG, "num_classes": 2, "names": ["a", "b"], "single_cls": False, "model": state, "epoch": 3,
        "training_model": state, "ema": state, "ema_updates": 40, "optimizer": {"state": {}}, "scheduler": {},
        "best_fitness": 0.5, "hyp": {"lr0": 0.01}, "options": {"epochs": 10, "freeze": [0], "data": "a.yaml"},
    }  # fmt: skip
    return {**fields, **changes}


def test_what_train_py_saves_passes() -> None:
    assert field_problem(checkpoint()) is None and resume_problem(checkpoint()) is None
    assert field_problem(checkpoint(names=None, single_cls=None, model_cfg="yolov5n.yaml")) is None


def nested_list(depth: int) -> list:
    return functools.reduce(lambda inner, _: [inner], range(depth), [])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_classes": True}, "num_classes must be a whole number from 1 to"),
        ({"num_classes": MAX_CLASSES + 1}, f"from 1 to {MAX_CLASSES}, got {MAX_CLASSES + 1}"),
        ({"model": {"w": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}}, "'w' is a quantized"),
        ({"model": {"w": torch.zeros(1).expand(10)}}, "'w' has more elements than its storage holds"),
        ({"model": {"w": [1.0]}}, "'w' is a list, not a tensor"),
        ({"model": {1: torch.zeros(1)}}, "model must map parameter names to tensors"),
        ({"model_cfg": {**CFG, "backbone": nested_list(17)}}, "model_cfg holds more than yaml values"),
        ({"model_cfg": {**CFG, "anchors": torch.ones(2)}}, "model_cfg holds more than yaml values"),
        ({"model_cfg": {**CFG, "depth_multiple": math.nan}}, "model_cfg holds more than yaml values"),
        ({"model_cfg": 3}, "model_cfg must be a model yaml's name or its contents, got 3"),
        ({"names": torch.arange(2)}, "names must be a list of 2 strings, got a Tensor"),
        ({"names": ["a"]}, "names must be a list of 2 strings"),
        ({"single_cls": torch.ones(2)}, "single_cls must be true or false, got a Tensor"),
        ({"epoch": "3\nerror: forged"}, "epoch must be a whole number, got '3\\nerror: forged'"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(changes: dict, message: str) -> None:
    problem = field_problem(checkpoint(**changes))
    assert problem is not None and message in problem and "\n" not in problem


def test_a_state_dict_with_too_many_tensors_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(checkpoint_fields, "MAX_STATE_TENSORS", 1)
    assert field_problem(checkpoint()) == "model holds more than 1 tensors"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"options": {"epochs": "10"}}, "its options' epochs must be a whole number >= 1, got '10'"),
        ({"options": {"epochs": 10, "data": {"nested": "dict"}}}, "options are not a dict of yaml scalars"),
        ({"options": [10]}, "options are not a dict"),
        ({"epoch": None}, "epoch is not a whole number"),
        ({"hyp": torch.ones(2)}, "hyp not a dict"),
        ({"training_model": {"w": torch.ones(2, dtype=torch.complex64)}}, "'w' is a torch.complex64"),
        ({"ema": torch.ones(2)}, "ema must map parameter names to tensors"),
        ({"best_fitness": "0.5"}, "its best_fitness is '0.5'"),
        ({"ema_updates": True}, "its ema_updates is True"),
        ({"optimizer": torch.ones(2)}, "its optimizer is a Tensor"),
    ],
)
def test_a_training_state_that_cannot_resume_is_named(changes: dict, message: str) -> None:
    problem = resume_problem(checkpoint(**changes))
    assert problem is not None and message in problem


def test_plain_yaml_refuses_shared_and_deep_containers() -> None:
    shared = [1, 2]
    assert is_plain_yaml({"a": [nested_list(12)], "b": [1.5, "x", None, True]})
    assert not is_plain_yaml({"a": shared, "b": shared})  # a walk of every path could multiply without end
    assert not is_plain_yaml({"a": nested_list(16)})
    assert not is_plain_yaml({"a": (1, 2)})


def test_tensor_problem_accepts_views_that_do_not_repeat() -> None:
    assert tensor_problem(torch.arange(6.0).view(2, 3).t()[1:]) is None
    assert tensor_problem(torch.zeros(0)) is None
    assert tensor_problem(torch.zeros(2, 2).to_sparse()) == "is a torch.float32 torch.sparse_coo tensor on cpu"
