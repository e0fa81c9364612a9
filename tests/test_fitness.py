"""Tests for utils/evaluation/fitness.py: the default yolov5 weighting and parsing of --fitness weights."""

from __future__ import annotations

import pytest

from utils.errors import UserError
from utils.evaluation.fitness import fitness, parse_fitness_weights
from utils.evaluation.metrics import MAP50, MAP50_95, PRECISION, RECALL

METRICS = {PRECISION: 0.8, RECALL: 0.6, MAP50: 0.5, MAP50_95: 0.3, "per_class": []}


def test_default_fitness_is_yolov5_weighting() -> None:
    assert fitness(METRICS) == pytest.approx(0.1 * 0.5 + 0.9 * 0.3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mAP50-95=1,mAP50=0.5", {MAP50_95: 1.0, MAP50: 0.5}),
        ("P=0.25, R=0.75", {PRECISION: 0.25, RECALL: 0.75}),
        ("metrics/mAP_0.5:0.95=1", {MAP50_95: 1.0}),
        ("mAP50=1,", {MAP50: 1.0}),
    ],
)
def test_parse_fitness_weights(text: str, expected: dict[str, float]) -> None:
    assert parse_fitness_weights(text) == expected


def test_parsed_weights_drive_fitness() -> None:
    assert fitness(METRICS, parse_fitness_weights("P=1,R=0.5,mAP50=0")) == pytest.approx(0.8 + 0.5 * 0.6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mAP75=1", "valid names: P, R, mAP50, mAP50-95"),
        ("mAP50", "NAME=WEIGHT"),
        ("mAP50=high", "not a number"),
        ("mAP50=1,metrics/mAP_0.5=2", "given twice"),
        (" , ", "no fitness weights"),
        ("mAP50=-1", "must be a finite number >= 0, got '-1'"),
        ("mAP50=-0.5,mAP50-95=1", "must be a finite number >= 0"),
        ("mAP50=inf", "must be a finite number >= 0"),
        ("mAP50=0", "are all zero"),
        ("mAP50=0,mAP50-95=0.0", "are all zero"),
    ],
)
def test_parse_fitness_weights_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_fitness_weights(text)


def test_fitness_names_missing_metrics() -> None:
    with pytest.raises(KeyError, match="val/box_loss"):
        fitness(METRICS, {"val/box_loss": 1.0})
