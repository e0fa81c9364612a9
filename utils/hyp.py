"""Hyperparameter files: load a hyp yaml into a plain, validated ``dict[str, float]``."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HYP_DIR = ROOT / "data" / "hyps"
DEFAULT_HYP = HYP_DIR / "hyp.scratch-low.yaml"

# Keys training reads; `anchors` is optional (anchors per output layer, default from the model yaml).
REQUIRED_KEYS = (
    "lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls cls_pw obj obj_pw iou_t "
    "anchor_t fl_gamma hsv_h hsv_s hsv_v degrees translate scale shear perspective flipud fliplr mosaic mixup "
    "copy_paste"
).split()


def resolve_hyp_path(path: str | Path) -> Path:
    """Find a hyp file as given, or by name in data/hyps/ (``hyp.scratch-high.yaml``)."""
    candidate = Path(path)
    for option in (candidate, HYP_DIR / candidate.name, HYP_DIR / f"{candidate.name}.yaml"):
        if option.is_file():
            return option
    raise UserError(f"hyp file not found: {path} (looked as given and in {HYP_DIR})")


def load_hyp(path: str | Path = DEFAULT_HYP) -> dict[str, float]:
    """Load and check a hyp yaml: every required key present and every value a finite number."""
    resolved = resolve_hyp_path(path)
    try:
        content = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{resolved}{where}: not valid yaml ({getattr(error, 'problem', error)})") from None
    if not isinstance(content, dict):
        raise UserError(f"{resolved}: expected a mapping of hyperparameter names to numbers")
    return check_hyp(content, source=str(resolved))


def check_hyp(content: dict, source: str = "hyp") -> dict[str, float]:
    """Validate a hyp mapping and return a new ``dict[str, float]`` in the same key order."""
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise UserError(f"{source}: missing hyperparameter(s) {', '.join(missing)}")
    hyp: dict[str, float] = {}
    for key, value in content.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"{source}: '{key}' must be a finite number, got {value!r}")
        hyp[str(key)] = float(value)
    return hyp
