"""Fitness: one number from a metric dict, as a weighted sum of named metrics (yolov5's 0.1 mAP50 + 0.9 mAP50-95)."""

from __future__ import annotations

import math

from utils.errors import UserError
from utils.evaluation.metrics import MAP50, MAP50_95, METRIC_ALIASES, METRIC_KEYS

DEFAULT_FITNESS_WEIGHTS = {MAP50: 0.1, MAP50_95: 0.9}


def fitness(metrics: dict, weights: dict[str, float] | None = None) -> float:
    """Weighted sum of ``metrics[name]``; ``weights`` maps full metric names to weights (default yolov5's)."""
    weights = DEFAULT_FITNESS_WEIGHTS if weights is None else weights
    missing = [name for name in weights if name not in metrics]
    if missing:
        raise KeyError(f"fitness needs metrics {missing}, got {sorted(key for key in metrics if '/' in key)}")
    return float(sum(weight * float(metrics[name]) for name, weight in weights.items()))


def resolve_metric_name(name: str) -> str:
    """A short alias (P, R, mAP50, mAP50-95) or full metric name -> the full name; UserError otherwise."""
    name = name.strip()
    if name in METRIC_ALIASES:
        return METRIC_ALIASES[name]
    if name in METRIC_KEYS:
        return name
    valid = ", ".join([*METRIC_ALIASES, *METRIC_KEYS])
    raise UserError(f"unknown fitness metric {name!r}; valid names: {valid}")


def parse_fitness_weights(text: str) -> dict[str, float]:
    """Parse ``"mAP50-95=1,mAP50=0.5"`` into {full metric name: weight}; UserError on anything malformed."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, separator, value = item.partition("=")
        if not separator:
            raise UserError(f"fitness weight {item.strip()!r} is not NAME=WEIGHT (e.g. mAP50-95=0.9,mAP50=0.1)")
        try:
            weight = float(value)
        except ValueError:
            raise UserError(f"fitness weight for {name.strip()!r} is not a number: {value.strip()!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"fitness weight for {name.strip()!r} must be a finite number >= 0, got {value.strip()!r}")
        full_name = resolve_metric_name(name)
        if full_name in weights:
            raise UserError(f"fitness metric {name.strip()!r} is given twice in {text!r}")
        weights[full_name] = weight
    if not weights:
        raise UserError(f"no fitness weights in {text!r}; expected e.g. mAP50-95=0.9,mAP50=0.1")
    if not any(weights.values()):
        raise UserError(f"fitness weights {text!r} are all zero: every child would score 0; give one a weight > 0")
    return weights
