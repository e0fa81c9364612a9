"""Evolution search space: load the meta table (gain, low, high, scale) and check it against a hyp."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from utils.errors import NESTED_TOO_DEEP, UserError

DEFAULT_META = Path(__file__).resolve().parents[2] / "data" / "hyps" / "meta.yaml"
# Keys the meta table may describe although the hyp leaves them out (then they are simply not evolved).
OPTIONAL_HYP_KEYS = ("anchors",)
SCALES = ("linear", "log")
TYPES = ("float", "int", "choice")


@dataclass(frozen=True)
class GeneSpec:
    """How one hyp key evolves: mutation gain, bounds, search scale and value type.

    A choice gene (``type == "choice"``) takes one of ``choices`` (strings); its ``low``/``high`` are the index
    bounds 0 and ``len(choices) - 1``, so that samplers working on numbers can carry it as an index.
    """

    gain: float
    low: float
    high: float
    scale: str = "linear"
    type: str = "float"
    choices: tuple[str, ...] = ()

    def cast(self, value: float | str) -> float | int | str:
        """A value as the gene's distribution holds it: a whole number for int genes, a choice name for choice
        genes (an index is mapped to its name), a float otherwise."""
        if self.type == "choice":
            return value if isinstance(value, str) else self.choices[int(round(value))]
        return int(round(value)) if self.type == "int" else float(value)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution a sampler draws this key from."""
        if self.type == "choice":
            return CategoricalDistribution(self.choices)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.scale == "log")
        return FloatDistribution(self.low, self.high, log=self.scale == "log")


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: the base hyp, the evolved keys (hyp order) and their specs.

    Values are numbers, except those of choice keys (``choices``: every hyp key whose meta entry lists choices,
    evolved or fixed), which are choice names such as ``"AdamW"``.
    """

    base_hyp: dict[str, float | str]
    genes: dict[str, GeneSpec]
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def evolved_keys(self) -> list[str]:
        return list(self.genes)

    @property
    def column_keys(self) -> list[str]:
        """The hyp keys in view order: the numeric keys in hyp order (yolov5's columns), then the choice keys."""
        return [key for key in self.base_hyp if key not in self.choices] + list(self.choices)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: spec.distribution() for key, spec in self.genes.items()}

    def base_params(self) -> dict[str, float | str]:
        """The base hyp's values of the evolved keys (child 0)."""
        return {key: self.base_hyp[key] for key in self.genes}

    def hyp_from_params(self, params: Mapping[str, float | str]) -> dict[str, float | str]:
        """A full hyp: the base hyp with the evolved keys replaced by ``params`` (int genes as whole numbers, choice
        genes as names)."""
        hyp: dict[str, float | str] = {}
        for key, base in self.base_hyp.items():
            value = params.get(key, base)
            hyp[key] = self.genes[key].cast(value) if key in self.genes else base
        return hyp


def parse_choice_gene(key: str, entry: Mapping, source: str) -> GeneSpec:
    """Check a choice entry: ``{choices: [A, B, ...][, gain]}`` (gain 0 keeps it fixed; default 1)."""
    unknown = sorted(set(entry) - {"choices", "gain"})
    choices = entry["choices"]
    if unknown:
        raise UserError(f"{source}: meta entry '{key}': unknown field(s) {', '.join(unknown)} (a choice gene has "
                        "choices and an optional gain)")  # fmt: skip
    valid = isinstance(choices, (list, tuple)) and all(isinstance(choice, str) and choice for choice in choices)
    if not valid or len(choices) < 2 or len(set(choices)) != len(choices):
        raise UserError(f"{source}: meta entry '{key}': choices must be a list of 2 or more distinct names "
                        f"(got {choices!r})")  # fmt: skip
    gain = entry.get("gain", 1)
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain < 0:
        raise UserError(f"{source}: meta entry '{key}': gain must be a number >= 0 (got {gain!r})")
    return GeneSpec(float(gain), 0.0, float(len(choices) - 1), "linear", "choice", tuple(choices))


def parse_gene(key: str, entry: object, source: str) -> GeneSpec:
    """Check one meta entry: ``{gain, low, high[, scale][, type]}``, yolov5's ``[gain, low, high]``, or a choice
    gene ``{choices: [A, B][, gain]}``."""
    if isinstance(entry, (list, tuple)) and len(entry) == 3:
        entry = dict(zip(("gain", "low", "high"), entry))
    if not isinstance(entry, Mapping):
        raise UserError(f"{source}: meta entry '{key}' must be a mapping with gain, low, high (got {entry!r})")
    if "choices" in entry:
        return parse_choice_gene(key, entry, source)
    unknown = sorted(set(entry) - {"gain", "low", "high", "scale", "type"})
    missing = [name for name in ("gain", "low", "high") if name not in entry]
    if unknown or missing:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(unknown)}"
        raise UserError(f"{source}: meta entry '{key}': {problem} (expected gain, low, high, optional scale, type)")
    numbers = {}
    for name in ("gain", "low", "high"):
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{source}: meta entry '{key}': {name} must be a finite number (got {value!r})")
        numbers[name] = float(value)
    scale, value_type = entry.get("scale", "linear"), entry.get("type", "float")
    if scale not in SCALES or value_type not in TYPES[:2]:
        raise UserError(f"{source}: meta entry '{key}': scale must be one of {SCALES}, type one of {TYPES[:2]} "
                        "(a choice gene lists its choices instead)")  # fmt: skip
    if numbers["gain"] < 0 or numbers["low"] > numbers["high"]:
        raise UserError(f"{source}: meta entry '{key}': need gain >= 0 and low <= high (got {dict(entry)})")
    if value_type == "int" and not (numbers["low"].is_integer() and numbers["high"].is_integer()):
        raise UserError(f"{source}: meta entry '{key}': type: int needs whole-number low and high (got {dict(entry)})")
    if scale == "log" and numbers["low"] <= 0:
        raise UserError(f"{source}: meta entry '{key}': scale: log needs low > 0 (got low={numbers['low']})")
    if scale == "log" and value_type == "int" and numbers["low"] < 1:
        raise UserError(
            f"{source}: meta entry '{key}': an int gene on a log scale needs low >= 1 (got {numbers['low']})"
        )
    return GeneSpec(numbers["gain"], numbers["low"], numbers["high"], scale, value_type)


def load_meta(path: str | Path = DEFAULT_META) -> dict[str, GeneSpec]:
    """Load a meta yaml into ``{key: GeneSpec}`` in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"meta file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid yaml ({getattr(error, 'problem', error)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid yaml (not UTF-8 text: a binary file?)") from None
    except RecursionError:
        raise UserError(f"{path}: not valid yaml ({NESTED_TOO_DEEP})") from None
    if not isinstance(content, Mapping) or not content:
        raise UserError(f"{path}: expected a mapping of hyp names to {{gain, low, high}}")
    return {str(key): parse_gene(str(key), entry, str(path)) for key, entry in content.items()}


def base_values(hyp: Mapping[str, float | str], genes: Mapping[str, GeneSpec]) -> dict[str, float | str]:
    """The hyp's values checked against their genes' types: choice keys name one of their choices, other keys are
    numbers (floats). Raises one UserError naming every bad value."""
    values: dict[str, float | str] = {}
    bad = []
    for key, value in hyp.items():
        spec = genes[key]
        if spec.type == "choice":
            if value in spec.choices:
                values[key] = value
            else:
                bad.append(f"{key}={value!r} is not one of {', '.join(spec.choices)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            bad.append(f"{key}={value!r} is not a number")
        else:
            values[key] = float(value)
    if bad:
        raise UserError(f"hyp values that do not fit their meta entries: {'; '.join(bad)}")
    return values


def validate_search_space(
    hyp: Mapping[str, float | str], meta: Mapping[str, GeneSpec | Mapping], freeze: Iterable[str] = ()
) -> SearchSpace:
    """Match hyp keys and meta entries one to one; keys with gain 0 or in ``freeze`` are fixed.

    Raises UserError naming every hyp key without a meta entry, every meta entry without a hyp key
    (``anchors`` may be absent from the hyp: it is then not evolved), unknown frozen keys, base values
    outside their bounds, and values of the wrong kind (a choice key's value must be one of its choices).
    """
    genes = {key: spec if isinstance(spec, GeneSpec) else parse_gene(key, spec, "meta") for key, spec in meta.items()}
    no_meta = [key for key in hyp if key not in genes]
    no_hyp = [key for key in genes if key not in hyp and key not in OPTIONAL_HYP_KEYS]
    if no_meta or no_hyp:
        parts = []
        if no_meta:
            parts.append(f"hyp keys without a meta entry: {', '.join(no_meta)} (add gain, low, high to the meta file)")
        if no_hyp:
            parts.append(f"meta entries without a hyp key: {', '.join(no_hyp)} (add them to the hyp or remove them)")
        raise UserError("; ".join(parts))
    freeze = [key for key in freeze if key]
    unknown_frozen = [key for key in freeze if key not in hyp]
    if unknown_frozen:
        raise UserError(f"--freeze-hyp names keys that are not in the hyp: {', '.join(unknown_frozen)}")
    base_hyp = base_values(hyp, genes)
    evolved = {key: genes[key] for key in hyp if genes[key].gain > 0 and key not in freeze}
    outside = [
        f"{key}={base_hyp[key]:g} not in [{spec.low:g}, {spec.high:g}]"
        for key, spec in evolved.items()
        if spec.type != "choice" and not spec.low <= base_hyp[key] <= spec.high
    ]
    if outside:
        raise UserError(f"hyp values outside their meta bounds: {', '.join(outside)}")
    if not evolved:
        raise UserError("nothing to evolve: every hyp key has gain 0 or is frozen")
    choices = {key: genes[key].choices for key in hyp if genes[key].type == "choice"}
    return SearchSpace(base_hyp=base_hyp, genes=evolved, choices=choices)
