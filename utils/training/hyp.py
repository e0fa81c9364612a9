"""Hyperparameter files: a hyp yaml as a plain, validated ``dict[str, float]``, and the optimizer it may name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.errors import NESTED_TOO_DEEP, UserError, printable
from utils.training.optim import OPTIMIZERS, fit_learning_rate, nominal_accumulation, scaled_weight_decay

ROOT = Path(__file__).resolve().parents[2]
HYP_DIR = ROOT / "data" / "hyps"
DEFAULT_HYP = HYP_DIR / "hyp.scratch-low.yaml"

# Keys training reads; `anchors` is optional (anchors per output layer, default from the model yaml).
REQUIRED_KEYS = (
    "lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls cls_pw obj obj_pw iou_t "
    "anchor_t fl_gamma hsv_h hsv_s hsv_v degrees translate scale shear perspective flipud fliplr mosaic mixup "
    "copy_paste"
).split()

INF = math.inf


@dataclass(frozen=True)
class Range:
    """The values a hyp key may take: ``low``/``high`` bounds, each open (excluded) or closed (included)."""

    low: float
    high: float = INF
    low_open: bool = False
    high_open: bool = False
    meaning: str = ""

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == INF:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
PROBABILITY = Range(0.0, 1.0, meaning="a probability")
FRACTION = Range(0.0, 1.0, meaning="a fraction")
# What each value means, so that a typo such as ``lr0: -0.01`` is refused at load time instead of failing deep in
# the optimizer or the augmentation. Keys not listed here (extra keys a user adds) are only checked to be numbers.
HYP_RANGES: dict[str, Range] = {
    "lr0": Range(0.0, low_open=True, meaning="a learning rate"),
    "lrf": Range(0.0, 1.0, low_open=True, meaning="the final learning rate as a fraction of lr0"),
    "momentum": Range(0.0, 1.0, high_open=True, meaning="SGD momentum or Adam beta1"),
    "weight_decay": Range(0.0, meaning="a weight decay"),
    "warmup_epochs": Range(0.0, meaning="epochs"),
    "warmup_momentum": Range(0.0, 1.0, high_open=True, meaning="a momentum"),
    "warmup_bias_lr": Range(0.0, meaning="a learning rate"),
    "box": Range(0.0, meaning="a loss gain"),
    "cls": Range(0.0, meaning="a loss gain"),
    "cls_pw": Range(0.0, low_open=True, meaning="a BCE positive weight"),
    "obj": Range(0.0, meaning="a loss gain"),
    "obj_pw": Range(0.0, low_open=True, meaning="a BCE positive weight"),
    "iou_t": Range(0.0, 1.0, low_open=True, meaning="an IoU threshold"),
    "anchor_t": Range(1.0, meaning="an anchor size-ratio threshold"),
    "anchors": Range(1.0, meaning="anchors per output layer"),
    "fl_gamma": Range(0.0, meaning="a focal-loss gamma"),
    "hsv_h": FRACTION,
    "hsv_s": FRACTION,
    "hsv_v": FRACTION,
    "degrees": Range(0.0, 180.0, meaning="a rotation in degrees"),
    "translate": FRACTION,
    "scale": Range(0.0, 1.0, high_open=True, meaning="a scale gain: images are scaled by 1 +/- scale"),
    "shear": Range(0.0, 90.0, high_open=True, meaning="a shear in degrees"),
    "perspective": Range(0.0, 0.1, meaning="a perspective coefficient"),
    "flipud": PROBABILITY,
    "fliplr": PROBABILITY,
    "mosaic": PROBABILITY,
    "mixup": PROBABILITY,
    "copy_paste": PROBABILITY,
}


# Hyp-file keys that name a choice rather than a number, with the names each may take. A hyp_evolve.yaml written by
# an evolution that evolved the optimizer (a choice gene) names the optimizer its best child trained with.
HYP_CHOICES: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZERS}


@dataclass(frozen=True)
class HypFile:
    """A hyp yaml: its numbers (training's plain hyp) and the choices it names, such as ``{"optimizer": "AdamW"}``."""

    hyp: dict[str, float]
    choices: dict[str, str]


def resolve_hyp_path(path: str | Path) -> Path:
    """Find a hyp file as given, or by name in data/hyps/ (``hyp.scratch-high.yaml``)."""
    candidate = Path(path)
    for option in (candidate, HYP_DIR / candidate.name, HYP_DIR / f"{candidate.name}.yaml"):
        if option.is_file():
            return option
    raise UserError(f"hyp file not found: {path} (looked as given and in {HYP_DIR})")


def load_hyp(path: str | Path = DEFAULT_HYP) -> dict[str, float]:
    """Load and check a hyp yaml: every required key present and every value a finite number. A choice the file
    names (``optimizer: AdamW``) is not part of the hyp: ``read_hyp_file`` returns it."""
    return read_hyp_file(path).hyp


def read_hyp_file(path: str | Path = DEFAULT_HYP) -> HypFile:
    """Load and check a hyp yaml: its numbers as ``load_hyp`` does, and the choices in ``HYP_CHOICES`` it names."""
    resolved = resolve_hyp_path(path)
    try:
        content = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{resolved}{where}: not valid yaml ({getattr(error, 'problem', error)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{resolved}: not valid yaml (not UTF-8 text: a binary file?)") from None
    except RecursionError:
        raise UserError(f"{resolved}: not valid yaml ({NESTED_TOO_DEEP})") from None
    if not isinstance(content, dict):
        raise UserError(f"{resolved}: expected a mapping of hyperparameter names to numbers")
    numbers, choices = split_choices(content, source=str(resolved))
    return HypFile(check_hyp(numbers, source=str(resolved)), choices)


def split_choices(content: dict, source: str = "hyp") -> tuple[dict, dict[str, str]]:
    """(the mapping without its ``HYP_CHOICES`` keys, those keys' names in their canonical spelling); a name that
    is not one of its key's choices is a UserError."""
    numbers = {key: value for key, value in content.items() if key not in HYP_CHOICES}
    choices = {}
    for key in HYP_CHOICES.keys() & content.keys():
        value = content[key]
        spelled = next((name for name in HYP_CHOICES[key] if str(value).lower() == name.lower()), None)
        if not isinstance(value, str) or spelled is None:
            raise UserError(f"{source}: '{key}' must be one of {', '.join(HYP_CHOICES[key])}, got {value!r}")
        choices[key] = spelled
    return numbers, choices


def check_hyp(content: dict, source: str = "hyp") -> dict[str, float]:
    """Validate a hyp mapping (every value a finite number in its key's ``HYP_RANGES``) and return a new
    ``dict[str, float]`` in the same key order."""
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise UserError(f"{source}: missing hyperparameter(s) {', '.join(missing)}")
    hyp: dict[str, float] = {}
    for key, value in content.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            name, shown = printable(repr(key), 60), printable(repr(value), 60)
            raise UserError(f"{source}: {name} must be a finite number, got {shown}")
        allowed = HYP_RANGES.get(str(key))
        if allowed is not None and not allowed.contains(float(value)):
            meaning = f" ({allowed.meaning})" if allowed.meaning else ""
            raise UserError(f"{source}: '{key}' must be {allowed.describe()}{meaning}, got {value!r}")
        hyp[str(key)] = float(value)
    return hyp


@dataclass(frozen=True)
class StepHyp:
    """The hyp values the per-iteration warmup and schedule use (lr0 after --lr-fit)."""

    lr0: float
    momentum: float
    warmup_momentum: float
    warmup_bias_lr: float

    @classmethod
    def from_hyp(cls, hyp: dict[str, float], lr0: float | None = None) -> StepHyp:
        return cls(hyp["lr0"] if lr0 is None else lr0, hyp["momentum"], hyp["warmup_momentum"], hyp["warmup_bias_lr"])


@dataclass(frozen=True)
class DerivedHyp:
    """Every value training derives from the hyp and the run's shape, computed once by ``derive_hyp``."""

    step: StepHyp
    weight_decay: float  # scaled to the images an optimizer step really sees
    accumulate: int  # batches per optimizer step after warmup
    lrf: float
    warmup_epochs: float
    loss: dict[str, float]  # YoloLoss settings: box/cls/obj gains scaled to layers, classes and image size


def derive_hyp(
    hyp: dict[str, float],
    *,
    batch_size: int,
    nominal_batch: int,
    num_layers: int,
    num_classes: int,
    img_size: int,
    optimizer: str,
    lr_fit: bool = False,
) -> DerivedHyp:
    """yolov5's derived values: accumulation to the nominal batch, weight decay scaled to match, --lr-fit's lr0,
    and the loss gains scaled as ``box *= 3/layers``, ``cls *= classes/80 * 3/layers``,
    ``obj *= (img/640)^2 * 3/layers``. ``hyp`` itself is never changed."""
    accumulate = nominal_accumulation(batch_size, nominal_batch)
    lr0 = fit_learning_rate(hyp["lr0"], batch_size, optimizer, nominal_batch) if lr_fit else hyp["lr0"]
    layer_scale = 3 / num_layers
    loss = {key: hyp[key] for key in ("cls_pw", "obj_pw", "fl_gamma", "anchor_t")}
    loss["box"] = hyp["box"] * layer_scale
    loss["cls"] = hyp["cls"] * num_classes / 80 * layer_scale
    loss["obj"] = hyp["obj"] * (img_size / 640) ** 2 * layer_scale
    return DerivedHyp(
        step=StepHyp.from_hyp(hyp, lr0),
        weight_decay=scaled_weight_decay(hyp["weight_decay"], batch_size, accumulate, nominal_batch),
        accumulate=accumulate,
        lrf=hyp["lrf"],
        warmup_epochs=hyp["warmup_epochs"],
        loss=loss,
    )
