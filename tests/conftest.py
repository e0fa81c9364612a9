"""Shared fixtures: a tiny generated shapes dataset with its data yaml, reused by data and training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.data.synthetic import SHAPE_NAMES, generate_dataset

TINY_TRAIN_IMAGES = 12
TINY_VAL_IMAGES = 6
TINY_IMAGE_SIZE = 128


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a data yaml for 12 train / 6 val generated shape images (long side 128 px, 8 classes)."""
    folder = tmp_path_factory.mktemp("tiny_dataset")
    generate_dataset(folder / "shapes", seed=0, num_train=TINY_TRAIN_IMAGES, num_val=TINY_VAL_IMAGES,
                     img_size=TINY_IMAGE_SIZE)  # fmt: skip
    yaml_path = folder / "tiny.yaml"
    content = {"path": "shapes", "train": "images/train", "val": "images/val", "names": list(SHAPE_NAMES)}
    yaml_path.write_text(yaml.safe_dump(content, sort_keys=False))
    return yaml_path


@pytest.fixture(scope="session")
def default_hyp() -> dict:
    """The hyp.scratch-low values as a dict."""
    return yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "data" / "hyps" / "hyp.scratch-low.yaml").read_text()
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained nano model for the shapes classes, saved as train.py saves checkpoints."""
    from models.yolo import build_model
    from utils.training.checkpoint import float_state_dict, save_checkpoint

    model = build_model("yolov5n.yaml", len(SHAPE_NAMES))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    return save_checkpoint(
        path, model_cfg=model.yaml, num_classes=len(SHAPE_NAMES), names=list(SHAPE_NAMES),
        model=float_state_dict(model), epoch=0, best_fitness=0.0,
    )  # fmt: skip
