"""Tests for utils/training/hyp.py: loading and checking hyp files, and the values training derives from them."""

from __future__ import annotations

import pytest

from utils.training.hyp import StepHyp, derive_hyp, load_hyp


def test_derive_hyp_scales_gains_accumulation_and_decay_and_keeps_the_hyp() -> None:
    hyp = load_hyp()
    before = dict(hyp)
    derived = derive_hyp(hyp, batch_size=16, nominal_batch=64, num_layers=4, num_classes=20, img_size=320,
                         optimizer="SGD")  # fmt: skip
    assert hyp == before, "the hyp is never changed"
    assert derived.loss["box"] == pytest.approx(hyp["box"] * 3 / 4)
    assert derived.loss["cls"] == pytest.approx(hyp["cls"] * 20 / 80 * 3 / 4)
    assert derived.loss["obj"] == pytest.approx(hyp["obj"] * (320 / 640) ** 2 * 3 / 4)
    assert derived.loss["anchor_t"] == hyp["anchor_t"] and derived.loss["cls_pw"] == hyp["cls_pw"]
    assert derived.accumulate == 4 and derived.weight_decay == pytest.approx(hyp["weight_decay"])
    assert derived.step == StepHyp.from_hyp(hyp) and derived.lrf == hyp["lrf"]


@pytest.mark.parametrize(("batch_size", "accumulate", "decay_scale"), [(64, 1, 1.0), (48, 1, 0.75), (8, 8, 1.0)])
def test_derive_hyp_nominal_batch(batch_size: int, accumulate: int, decay_scale: float) -> None:
    hyp = load_hyp()
    derived = derive_hyp(hyp, batch_size=batch_size, nominal_batch=64, num_layers=3, num_classes=80, img_size=640,
                         optimizer="SGD")  # fmt: skip
    assert derived.accumulate == accumulate
    assert derived.weight_decay == pytest.approx(hyp["weight_decay"] * decay_scale)
    assert derived.loss["box"] == pytest.approx(hyp["box"]) and derived.loss["obj"] == pytest.approx(hyp["obj"])


def test_lr_fit_changes_only_the_step_lr0() -> None:
    hyp = load_hyp()
    plain = derive_hyp(hyp, batch_size=48, nominal_batch=64, num_layers=3, num_classes=8, img_size=256,
                       optimizer="SGD")  # fmt: skip
    fitted = derive_hyp(hyp, batch_size=48, nominal_batch=64, num_layers=3, num_classes=8, img_size=256,
                        optimizer="SGD", lr_fit=True)  # fmt: skip
    assert plain.step.lr0 == hyp["lr0"] and fitted.step.lr0 == pytest.approx(hyp["lr0"] * 48 / 64)
    assert fitted.step.momentum == plain.step.momentum and fitted.loss == plain.loss
