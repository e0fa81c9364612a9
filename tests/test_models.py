"""Tests for models/: building from yaml, output shapes, strides, decoding, summary and cfg errors."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from models.yolo import MAX_CLASSES, MODELS_DIR, available_models, build_model, make_divisible, model_summary
from utils.errors import UserError


@pytest.fixture(scope="module")
def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("yolov5n", num_classes=3)


@pytest.mark.parametrize("cfg", ["yolov5n", "yolov5s.yaml"])
@pytest.mark.parametrize("height, width", [(64, 64), (128, 96)])
def test_train_outputs_shapes_and_strides(cfg: str, height: int, width: int) -> None:
    model = build_model(cfg, num_classes=2)
    outputs = model(torch.rand(2, 3, height, width))
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert [tuple(out.shape) for out in outputs] == [(2, 3, height // s, width // s, 7) for s in (8, 16, 32)]


def test_eval_outputs_decoded_and_raw(nano: torch.nn.Module) -> None:
    nano.eval()
    with torch.no_grad():
        decoded, raw = nano(torch.rand(1, 3, 64, 128))
    nano.train()
    expected_n = 3 * sum((64 // s) * (128 // s) for s in (8, 16, 32))
    assert decoded.shape == (1, expected_n, 8)
    assert len(raw) == 3 and raw[0].shape == (1, 3, 8, 16, 8)
    assert ((decoded[..., 4:] >= 0) & (decoded[..., 4:] <= 1)).all()


def test_decode_matches_formula(nano: torch.nn.Module) -> None:
    nano.eval()
    with torch.no_grad():
        decoded, raw = nano(torch.rand(1, 3, 64, 64))
    nano.train()
    # anchor 1, cell (y=2, x=5) on the stride-8 level
    cell = raw[0][0, 1, 2, 5].sigmoid()
    flat_index = 1 * 8 * 8 + 2 * 8 + 5
    anchor_pixels = nano.detect.anchors[0, 1] * 8
    expected_xy = (cell[:2] * 2 - 0.5 + torch.tensor([5.0, 2.0])) * 8
    expected_wh = (cell[2:4] * 2) ** 2 * anchor_pixels
    torch.testing.assert_close(decoded[0, flat_index, :2], expected_xy)
    torch.testing.assert_close(decoded[0, flat_index, 2:4], expected_wh)


def test_decode_under_bf16_autocast_is_float32(nano: torch.nn.Module) -> None:
    """The head may run in bf16 under autocast (--cpu-fast), but the boxes are decoded in float32: decoding the same
    raw maps in bf16 would round pixel coordinates by up to 2 px at 256-512 px."""
    nano.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoded, raw = nano(torch.rand(1, 3, 512, 512))
    assert raw[0].dtype == torch.bfloat16 and decoded.dtype == torch.float32
    with torch.no_grad():
        for level, out in enumerate(raw):
            start = sum(r[0].numel() // r.shape[-1] for r in raw[:level])
            exact = nano.detect._decode(level, out.float())
            torch.testing.assert_close(decoded[:, start : start + exact.shape[1]], exact, atol=1e-3, rtol=0)
    nano.train()


def test_anchors_in_grid_units_sorted_by_stride(nano: torch.nn.Module) -> None:
    pixels = nano.detect.anchors * nano.stride.view(-1, 1, 1)
    torch.testing.assert_close(pixels[0], torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))
    areas = pixels.prod(-1).mean(-1)
    assert (areas.diff() > 0).all()


def test_anchors_listed_coarse_to_fine_are_flipped() -> None:
    from models.yolo import load_model_cfg

    cfg = load_model_cfg("yolov5n")
    cfg["anchors"] = cfg["anchors"][::-1]
    model = build_model(cfg, num_classes=1)
    torch.testing.assert_close(model.detect.anchors[2, 2] * 32, torch.tensor([373.0, 326.0]))


@pytest.mark.parametrize("num_classes", [1, 80])
def test_bias_priors(num_classes: int) -> None:
    model = build_model("yolov5n", num_classes=num_classes)
    default_bound = 1 / math.sqrt(model.detect.m[0].in_channels)  # Conv2d's uniform bias init range
    for conv, stride in zip(model.detect.m, (8, 16, 32)):
        bias = conv.bias.view(3, -1)
        obj_prior = math.log(8 / (640 / stride) ** 2)
        assert (bias[:, 4] - obj_prior).abs().max() <= default_bound + 1e-6
        assert (bias[:, 5:] - math.log(0.6 / (num_classes - 0.99))).abs().max() <= 1.0


def test_anchors_per_level_override() -> None:
    model = build_model("yolov5n", num_classes=2, anchors_per_level=4)
    assert model.detect.num_anchors == 4 and model.detect.anchors.shape == (3, 4, 2)
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 4, 8, 8, 7)
    assert model.yaml["anchors"] == 4


def test_channels_last_and_autocast_match(nano: torch.nn.Module) -> None:
    nano.eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference, _ = nano(image)
        channels_last, _ = nano.to(memory_format=torch.channels_last)(image.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast, _ = nano(image)
    nano.to(memory_format=torch.contiguous_format).train()
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-3)
    assert torch.isfinite(autocast).all() and autocast.shape == reference.shape


def test_width_rounding() -> None:
    assert [make_divisible(x) for x in (16, 17, 24.0, 0.25 * 64)] == [16, 24, 24, 16]
    model = build_model("yolov5n", num_classes=1)
    assert model.model[0].conv.out_channels == 16 and model.model[9].cv2.conv.out_channels == 256


def test_summary_reports_counts() -> None:
    model = build_model("yolov5n", num_classes=80)
    line = model_summary(model, img_size=640)
    assert "\n" not in line
    assert "1,872,157 parameters" in line and "1,872,157 gradients" in line
    assert " 4.5 GFLOPs" in line


def test_unknown_cfg_lists_available() -> None:
    with pytest.raises(UserError, match="yolov5n"):
        build_model("yolov9000", num_classes=1)
    assert {"yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x"} <= set(available_models())


@pytest.mark.parametrize(
    "text",
    [
        "backbone: [[-1, 1, Conv\n",  # not yaml
        "- just a list\n",
        "depth_multiple: 0.33\nwidth_multiple: 0.25\nanchors: 3\nbackbone: [[-1, 1, Conv, [16, 3, 2]]]\nhead: []\n",
        "depth_multiple: 0.33\nwidth_multiple: 0.25\nanchors: 3\nbackbone: [[-1, 1, Evil, [16]]]\nhead: []\n",
        "depth_multiple: 0.33\nwidth_multiple: 0.25\nanchors: 3\nbackbone: [[-1, 1, Conv]]\nhead: []\n",
    ],
)
def test_malformed_yaml_is_user_error(tmp_path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="bad"):
        build_model(path, num_classes=1)


def nano_cfg(rows: dict[int, list] | None = None, **changes) -> dict:
    """yolov5n's model yaml with ``changes``, and the backbone ``rows`` (index -> row) replaced."""
    cfg = yaml.safe_load((MODELS_DIR / "yolov5n.yaml").read_text())
    for index, row in (rows or {}).items():
        cfg["backbone"][index] = row
    return {**cfg, "cfg_name": "nano", **changes}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (nano_cfg(depth_multiple=10_000), "depth_multiple must be a number above 0 and at most 4, got 10000"),
        (nano_cfg(width_multiple=math.nan), "width_multiple must be a number above 0 and at most 4, got nan"),
        (nano_cfg(width_multiple=0), "width_multiple must be a number above 0"),
        (nano_cfg(depth_multiple=True), "depth_multiple must be a number"),
        (nano_cfg(backbone=[[-1, 1, "Conv", [16, 3, 2]]] * 300), "the model has 315 layers"),
        (nano_cfg({2: [-1, 10**6, "C3", [32]]}), "layer 2 repeats more than 64 times"),
        (nano_cfg({2: [-1, "many", "C3", [32]]}), "layer 2 repeats many times, not a whole number"),
        # two 32,768-channel 3x3 convolutions in a row: 9.7 billion parameters, 39 GB
        (nano_cfg({1: [-1, 1, "Conv", [2**17, 3, 2]], 2: [-1, 1, "Conv", [2**17, 3, 2]]}), "more than 500,000,000"),
        (nano_cfg(cfg_name="evil\nerror: fake", head=7), r"malformed model yaml evil\\nerror: fake: TypeError"),
    ],
)
def test_a_model_yaml_beyond_the_bounds_is_refused_before_it_is_built(cfg: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        build_model(cfg, num_classes=1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("num_classes", [0, MAX_CLASSES + 1, True])
def test_a_class_count_out_of_range_is_refused(num_classes) -> None:
    with pytest.raises(UserError, match=f"a model has 1 to {MAX_CLASSES}"):
        build_model("yolov5n", num_classes=num_classes)
