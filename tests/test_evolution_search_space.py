"""Tests for utils/evolution/search_space.py: the meta table and its match with a hyp."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from utils.errors import UserError
from utils.evolution.search_space import DEFAULT_META, GeneSpec, load_meta, validate_search_space
from utils.training.hyp import HYP_DIR, load_hyp

# DESIGN.md's meta table: key -> (gain, low, high).
DESIGN_TABLE = {
    "lr0": (1, 1e-5, 1e-1),
    "lrf": (1, 0.01, 1.0),
    "momentum": (0.3, 0.6, 0.98),
    "weight_decay": (1, 0, 0.001),
    "warmup_epochs": (1, 0, 5),
    "warmup_momentum": (1, 0, 0.95),
    "warmup_bias_lr": (1, 0, 0.2),
    "box": (1, 0.02, 0.2),
    "cls": (1, 0.2, 4.0),
    "cls_pw": (1, 0.5, 2.0),
    "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0),
    "iou_t": (0, 0.1, 0.7),
    "anchor_t": (1, 2, 8),
    "anchors": (2, 2, 10),
    "fl_gamma": (0, 0, 2),
    "hsv_h": (1, 0, 0.1),
    "hsv_s": (1, 0, 0.9),
    "hsv_v": (1, 0, 0.9),
    "degrees": (1, 0, 45),
    "translate": (1, 0, 0.9),
    "scale": (1, 0, 0.9),
    "shear": (1, 0, 10),
    "perspective": (0, 0, 0.001),
    "flipud": (1, 0, 1),
    "fliplr": (0, 0, 1),
    "mosaic": (1, 0, 1),
    "mixup": (1, 0, 1),
    "copy_paste": (1, 0, 1),
}


def test_default_meta_matches_design_table():
    meta = load_meta()
    assert {key: (spec.gain, spec.low, spec.high) for key, spec in meta.items()} == DESIGN_TABLE
    assert meta["lr0"].scale == "log" and meta["anchors"].type == "int"


@pytest.mark.parametrize("hyp_file", ["hyp.scratch-low.yaml", "hyp.scratch-high.yaml"])
def test_shipped_hyps_validate(hyp_file):
    space = validate_search_space(load_hyp(HYP_DIR / hyp_file), load_meta())
    fixed = {"iou_t", "fl_gamma", "perspective", "fliplr"}
    assert set(space.evolved_keys) == set(DESIGN_TABLE) - fixed - {"anchors"}
    assert isinstance(space.distributions()["lr0"], FloatDistribution) and space.distributions()["lr0"].log


def test_anchors_evolve_when_hyp_sets_them():
    hyp = {**load_hyp(), "anchors": 3.0}
    space = validate_search_space(hyp, load_meta())
    assert space.distributions()["anchors"] == IntDistribution(2, 10)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda hyp, meta: hyp.update(new_gain=1.0), "hyp keys without a meta entry: new_gain"),
        (lambda hyp, meta: meta.pop("mosaic"), "hyp keys without a meta entry: mosaic"),
        (lambda hyp, meta: hyp.pop("mixup"), "meta entries without a hyp key: mixup"),
        (lambda hyp, meta: hyp.update(lr0=0.5), "lr0=0.5 not in [1e-05, 0.1]"),
    ],
)
def test_mismatches_name_the_keys(change, expected):
    hyp, meta = load_hyp(), load_meta()
    change(hyp, meta)
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate_search_space(hyp, meta)


def test_both_directions_reported_at_once():
    hyp, meta = load_hyp(), load_meta()
    hyp["extra_a"] = 1.0
    meta["extra_b"] = GeneSpec(1, 0, 1)
    with pytest.raises(UserError) as error:
        validate_search_space(hyp, meta)
    assert "extra_a" in str(error.value) and "extra_b" in str(error.value)


def test_freeze_fixes_keys_and_rejects_unknown_ones():
    hyp, meta = load_hyp(), load_meta()
    space = validate_search_space(hyp, meta, freeze=("lr0", "mosaic"))
    assert "lr0" not in space.evolved_keys and "mosaic" not in space.evolved_keys and "lrf" in space.evolved_keys
    with pytest.raises(UserError, match="not_a_key"):
        validate_search_space(hyp, meta, freeze=("not_a_key",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr0: {gain: 1, low: 0.0, high: 0.1, scale: log}\n", "scale: log needs low > 0"),
        ("lr0: {gain: 1, low: 0.2, high: 0.1}\n", "low <= high"),
        ("lr0: {gain: 1, low: 0.1}\n", "missing high"),
        ("lr0: {gain: 1, low: 0, high: 1, step: 2}\n", "unknown field"),
        ("lr0: {gain: x, low: 0, high: 1}\n", "gain must be a finite number"),
        ("- just a list\n", "expected a mapping"),
        ("lr0: {gain: 1, low: [0\n", "not valid yaml"),
    ],
)
def test_bad_meta_files(tmp_path, text, expected):
    path = tmp_path / "meta.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_meta(path)


def test_yolov5_tuple_entries_and_missing_file(tmp_path):
    path = tmp_path / "meta.yaml"
    path.write_text("lr0: [1, 1.0e-5, 0.1]\n")
    assert load_meta(path) == {"lr0": GeneSpec(1.0, 1e-5, 0.1)}
    with pytest.raises(UserError, match="meta file not found"):
        load_meta(tmp_path / "missing.yaml")
    assert DEFAULT_META.is_file()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"gain": 1, "low": 0.5, "high": 3.5, "type": "int"}, "whole-number low and high"),
        ({"gain": 1, "low": 0, "high": 8, "type": "int", "scale": "log"}, "needs low > 0"),
    ],
)
def test_int_genes_need_whole_bounds(tmp_path, entry, expected):
    meta = tmp_path / "meta.yaml"
    meta.write_text(f"anchors: {entry}\n".replace("'", ""))
    with pytest.raises(UserError, match=expected):
        load_meta(meta)
