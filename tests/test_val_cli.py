"""Tests for utils/evaluation/validator.py and val.py: an oracle model scores 1.0, losses average, the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import val
from utils import cli
from utils.data.synthetic import SHAPE_NAMES
from utils.errors import run_cli
from utils.evaluation.coco_json import reference_map
from utils.evaluation.metrics import MAP50_95, METRIC_KEYS, VAL_LOSS_KEYS, DetectionMetrics
from utils.evaluation.validator import _Collector, run_validation, validate
from val import build_loader

ROOT = Path(__file__).resolve().parent.parent
IMG_SIZE = 128


class OracleModel(nn.Module):
    """Answers each batch with its own ground truth (the loader's targets, in order) as perfect detections."""

    def __init__(self, batches: list[torch.Tensor], num_classes: int) -> None:
        super().__init__()
        self.batches = iter(batches)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        targets = next(self.batches)
        height, width = images.shape[2:]
        decoded = torch.zeros(images.shape[0], max(len(targets), 1), 5 + self.num_classes)
        for row, (image_index, class_id, x, y, w, h) in enumerate(targets.tolist()):
            decoded[int(image_index), row, :5] = torch.tensor([x * width, y * height, w * width, h * height, 1.0])
            decoded[int(image_index), row, 5 + int(class_id)] = 1.0
        return decoded, [torch.zeros(images.shape[0], 1, 1, 1, 5 + self.num_classes)]


@pytest.fixture(scope="module")
def val_loader(tiny_dataset: Path):
    return build_loader(str(tiny_dataset), "val", IMG_SIZE, batch_size=4, workers=0, stride=32)[1]


def test_oracle_detections_score_one_in_original_pixels(val_loader, tmp_path: Path) -> None:
    batches = [targets for _, targets, _, _ in val_loader]
    model = OracleModel(batches, len(SHAPE_NAMES)).train()
    validation = run_validation(model, val_loader, list(SHAPE_NAMES), save_dir=tmp_path, save_json=True)
    assert model.training  # training mode is restored for the caller
    assert [validation.metrics[key] for key in METRIC_KEYS] == pytest.approx([1.0] * 4, abs=1e-3)
    assert validation.results["num_instances"] == sum(len(targets) for targets in batches)
    # The json ground truth is in original-image pixels, so the detections were mapped back through the letterbox.
    widths = {image["id"]: image["width"] for image in validation.coco_ground_truth["images"]}
    assert all(ann["bbox"][0] + ann["bbox"][2] <= widths[ann["image_id"]] + 1e-3
               for ann in validation.coco_ground_truth["annotations"])  # fmt: skip
    reference = reference_map(validation.coco_ground_truth, validation.coco_results, max_detections=300)
    if reference:
        assert reference[MAP50_95] == pytest.approx(validation.metrics[MAP50_95], abs=1e-3)
    assert (tmp_path / "predictions.json").is_file() and (tmp_path / "ground_truth.json").is_file()


def test_validate_returns_named_floats_with_losses_averaged_over_batches(val_loader) -> None:
    calls = []

    def constant_loss(raw_preds, targets):
        calls.append(len(targets))
        terms = {
            "box_loss": torch.tensor(0.5),
            "obj_loss": torch.tensor(float(len(calls))),
            "cls_loss": torch.tensor(0.0),
        }
        return torch.tensor(1.0), terms

    batches = [targets for _, targets, _, _ in val_loader]
    metrics = validate(OracleModel(batches, len(SHAPE_NAMES)), val_loader, list(SHAPE_NAMES), loss_fn=constant_loss)
    assert set(metrics) == {*METRIC_KEYS, *VAL_LOSS_KEYS}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["val/box_loss"] == pytest.approx(0.5)
    assert metrics["val/obj_loss"] == pytest.approx(np.mean(range(1, len(batches) + 1)))


def run_val(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "val.py"), *arguments], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.slow
def test_val_cli_prints_table_and_writes_plots(tiny_dataset: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    common = ["--weights", str(tiny_checkpoint), "--data", str(tiny_dataset), "--img", str(IMG_SIZE)]
    result = run_val(*common, "--batch", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
                     "--save-json", "--save-txt", "--fitness", "mAP50-95=1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The header is the progress bar's description (on stderr, as tqdm writes), the rows follow on stdout.
    bar = result.stderr.replace("\r", "\n").splitlines()[-1]
    assert bar.split()[:7] == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95:"] and "100%" in bar
    assert lines[0].split()[:2] == ["all", "6"]
    assert [line.split()[0] for line in lines[1:4]] == ["circle", "square", "triangle"], "the per-class rows"
    assert any(line.startswith("fitness ") for line in lines)
    run_dir = tmp_path / "exp"
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "predictions.json").is_file()


def test_val_save_txt_keeps_the_confidence_column(tmp_path: Path) -> None:
    collector = _Collector(DetectionMetrics(2), tmp_path, save_txt=True, save_json=False)
    collector.add_image("images/x.jpg", np.array([[0, 0, 50, 20, 0.75, 1]]), np.zeros((0, 5)), (40, 100))
    assert (tmp_path / "labels" / "x.txt").read_text().split() == ["1", "0.250000", "0.250000", "0.500000",
                                                                    "0.500000", "0.750000"]  # fmt: skip


def test_missing_weights_give_one_error_line_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run_val("--weights", str(tmp_path / "missing.pt"), "--data", str(tiny_dataset))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'missing.pt'}"


# Seed 17 makes torch's weights-only unpickler raise IndexError, which utils/training/checkpoint.py did not turn
# into a UserError (reported to its owner); the other seeds raise UnpicklingError.
@pytest.mark.parametrize("content_seed", [0, 17, 21])
def test_corrupt_weights_give_one_error_line(tiny_dataset: Path, tmp_path: Path, capsys, content_seed: int) -> None:
    weights = tmp_path / "corrupt.pt"
    weights.write_bytes(np.random.default_rng(content_seed).bytes(4096))
    arguments = ["--weights", str(weights), "--data", str(tiny_dataset), "--project", str(tmp_path)]
    exit_code = run_cli(lambda: val.main(cli.val_parser().parse_args(arguments)))
    stderr = capsys.readouterr().err
    assert exit_code != 0
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "corrupt.pt" in stderr
    assert not (tmp_path / "exp").exists()  # failed before creating a run folder
