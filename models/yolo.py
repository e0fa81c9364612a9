"""The YOLOv5 detector: the Detect head, the yaml-driven DetectionModel, build_model and model_summary."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from models.common import C3, SPPF, Bottleneck, Concat, Conv
from utils.errors import NESTED_TOO_DEEP, UserError, one_line, printable

MODELS_DIR = Path(__file__).resolve().parent
STRIDE_PROBE_SIZE = 256  # a dummy input this size measures each level's stride at build time
FLOPS_PROBE_SIZE = 64  # FLOPs are counted on a small input and scaled to the requested size

# The only module names a model yaml may use; "nn.Upsample" keeps yolov5 yamls readable unchanged.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "nn.Upsample": nn.Upsample,
    "Upsample": nn.Upsample,
}
REQUIRED_CFG_KEYS = ("depth_multiple", "width_multiple", "anchors", "backbone", "head")
# Bounds on what a model yaml (or a checkpoint's copy of one) may build, checked before anything is allocated
MAX_CLASSES = 10_000
MAX_MULTIPLE = 4.0  # yolov5x uses depth 1.33 and width 1.25
MAX_LAYERS = 256  # yolov5's yamls have 25 (P5) to 34 (P6)
MAX_REPEATS = 64  # a layer's repeats after depth_multiple; yolov5x's deepest C3 has 12
MAX_PARAMETERS = 500_000_000  # yolov5x6 has 141 million
CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF)  # modules whose first arg is an output width to scale
REPEAT_MODULES = (C3,)  # modules that take the repeat count as an argument instead of being stacked


def make_divisible(value: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value``; keeps channel counts hardware friendly."""
    return int(math.ceil(value / divisor) * divisor)


class Detect(nn.Module):
    """Per-level 1x1 convolutions to ``num_anchors * (5 + num_classes)`` channels, plus box decoding.

    ``anchors``: (num_layers, num_anchors, 2) buffer in grid units (pixels / stride).
    """

    def __init__(self, num_classes: int, anchors_pixels: list[list[float]], in_channels: list[int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_outputs = num_classes + 5
        self.num_layers = len(anchors_pixels)
        self.num_anchors = len(anchors_pixels[0]) // 2
        anchors = torch.tensor(anchors_pixels, dtype=torch.float32).view(self.num_layers, -1, 2)
        self.register_buffer("anchors", anchors)  # pixels until DetectionModel divides by the measured stride
        self.register_buffer("stride", torch.zeros(self.num_layers))
        self.m = nn.ModuleList(nn.Conv2d(c, self.num_outputs * self.num_anchors, 1) for c in in_channels)
        self._grids: dict[tuple, torch.Tensor] = {}

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Train: list of (b, na, ny, nx, 5 + nc) raw maps. Eval: ((b, N, 5 + nc) decoded in input pixels, raw)."""
        raw = []
        for level, feature in enumerate(features):
            out = self.m[level](feature)
            batch, _, ny, nx = out.shape
            raw.append(out.view(batch, self.num_anchors, self.num_outputs, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self._decode(level, out) for level, out in enumerate(raw)], 1), raw

    def _decode(self, level: int, raw: torch.Tensor) -> torch.Tensor:
        # float32 whatever autocast made the head: bf16 keeps 8 significant bits, so pixel coordinates would round
        # to 1 px in [128, 256) and 2 px in [256, 512), which costs mAP@0.5:0.95 (0.0024 at 256 px, 0.0045 at 640).
        raw = raw.float()
        batch, _, ny, nx, _ = raw.shape
        grid = self._grid(ny, nx, raw.device, raw.dtype)
        # Anchors are read every call (not cached) because autoanchor may replace them after construction.
        anchor_pixels = (self.anchors[level] * self.stride[level]).view(1, self.num_anchors, 1, 1, 2).to(raw.dtype)
        xy, wh, scores = raw.sigmoid().split((2, 2, self.num_classes + 1), dim=4)
        xy = (xy * 2 + grid) * self.stride[level].to(raw.dtype)
        wh = (wh * 2) ** 2 * anchor_pixels
        return torch.cat((xy, wh, scores), dim=4).view(batch, -1, self.num_outputs)

    def _grid(self, ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, ny, nx, 2) cell offsets minus 0.5, so that ``2 * sigmoid - 0.5 + cell`` becomes ``(2*sig + grid)``."""
        key = (ny, nx, device, dtype)
        if key not in self._grids:
            y, x = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
            self._grids[key] = (torch.stack((x, y), 2).view(1, 1, ny, nx, 2) - 0.5).to(dtype)
        return self._grids[key]

    def initialize_biases(self) -> None:
        """yolov5's priors: ~8 objects per 640 px image per level, and a class probability of about 0.6 / nc."""
        for conv, stride in zip(self.m, self.stride.tolist()):
            bias = conv.bias.detach().view(self.num_anchors, -1)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))


class DetectionModel(nn.Module):
    """A YOLOv5 network built from a cfg dict; ``yaml`` keeps that dict (with ``nc`` set) for checkpoints."""

    def __init__(self, cfg: dict[str, Any], num_classes: int, anchors_per_level: int | None = None) -> None:
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        self.yaml["nc"] = num_classes
        if anchors_per_level:
            self.yaml["anchors"] = int(round(anchors_per_level))
        self.num_classes = num_classes
        layers, self.save = parse_model(self.yaml)
        self.model = nn.Sequential(*layers)
        self._measure_stride()
        self.detect.initialize_biases()

    @property
    def detect(self) -> Detect:
        """The Detect head (a property, so its tensors appear once in the state dict, under model.<last>)."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        """(num_layers,) pixels per grid cell of each output level."""
        return self.detect.stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (b, 3, H, W) float in [0, 1]; H and W multiples of the largest stride. See ``Detect.forward``."""
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.from_index != -1:
                if isinstance(layer.from_index, int):
                    x = outputs[layer.from_index]
                else:
                    x = [x if index == -1 else outputs[index] for index in layer.from_index]
            x = layer(x)
            outputs.append(x if layer.layer_index in self.save else None)
        return x

    def _measure_stride(self) -> None:
        """Run a dummy image to read each level's stride, then convert anchors to grid units in stride order."""
        was_training = self.training
        self.eval()  # keeps BatchNorm statistics untouched by the probe
        with torch.no_grad():
            _, raw = self(torch.zeros(1, 3, STRIDE_PROBE_SIZE, STRIDE_PROBE_SIZE))
        self.train(was_training)
        self.detect.stride.copy_(torch.tensor([STRIDE_PROBE_SIZE / out.shape[-2] for out in raw]))
        anchors = self.detect.anchors
        # yamls list anchors small to large; flip them if the levels run from coarse to fine instead
        area_change = anchors.prod(-1).mean(-1)
        area_change = area_change[-1] - area_change[0]
        if area_change != 0 and torch.sign(area_change) != torch.sign(self.stride[-1] - self.stride[0]):
            anchors.copy_(anchors.flip(0))
        anchors /= self.stride.view(-1, 1, 1)


def _resolve_args(name: str, args: list[Any], cfg: dict[str, Any]) -> list[Any]:
    """Replace the symbolic strings yolov5 yamls use by explicit lookups (never eval)."""
    symbols = {"nc": cfg["nc"], "anchors": cfg["anchors"], "None": None}
    resolved = [symbols[arg] if isinstance(arg, str) and arg in symbols else arg for arg in args]
    if name in ("nn.Upsample", "Upsample") and len(resolved) >= 3:
        return [resolved[0], resolved[1], str(resolved[2])]
    return resolved


def _multiples(cfg: dict[str, Any]) -> tuple[float, float]:
    """(depth_multiple, width_multiple), each a number in (0, MAX_MULTIPLE]."""
    multiples = []
    for key in ("depth_multiple", "width_multiple"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_MULTIPLE:
            raise ValueError(f"{key} must be a number above 0 and at most {MAX_MULTIPLE:g}, got {printable(value, 40)}")
        multiples.append(float(value))
    return multiples[0], multiples[1]


def _repeats(repeats: Any, depth_multiple: float, layer_index: int) -> int:
    """How many times a layer is stacked once ``depth_multiple`` applies; at most MAX_REPEATS."""
    if isinstance(repeats, bool) or not isinstance(repeats, int):
        raise ValueError(f"layer {layer_index} repeats {printable(repeats, 40)} times, not a whole number")
    scaled = max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats
    if scaled > MAX_REPEATS:
        raise ValueError(f"layer {layer_index} repeats more than {MAX_REPEATS} times")
    return scaled


def _module_args(
    module_class: type[nn.Module], args: list[Any], inputs: list[int], repeats: int, width_multiple: float
) -> tuple[list[Any], int, int]:
    """(constructor arguments, repeats left to stack, output channels) of one yaml row."""
    if module_class in CHANNEL_MODULES:
        out_channels = make_divisible(args[0] * width_multiple, 8)
        args = [inputs[0], out_channels, *args[1:]]
        if module_class in REPEAT_MODULES:
            return [*args[:2], repeats, *args[2:]], 1, out_channels
        return args, repeats, out_channels
    if module_class is Concat:
        return args, repeats, sum(inputs)
    if module_class is Detect:
        anchors = args[1]
        if isinstance(anchors, int):  # anchors per level only: placeholders that autoanchor replaces
            anchors = [list(range(anchors * 2))] * len(inputs)
        return [args[0], anchors, inputs], repeats, 0
    return args, repeats, inputs[0]


def _make_layer(module_class: type[nn.Module], args: list[Any], repeats: int) -> nn.Module:
    return nn.Sequential(*(module_class(*args) for _ in range(repeats))) if repeats > 1 else module_class(*args)


def _parameter_count(make: Callable[[], nn.Module]) -> int:
    """The parameters ``make`` would allocate, counted on the meta device, which allocates nothing."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in make().parameters())


def parse_model(cfg: dict[str, Any]) -> tuple[list[nn.Module], set[int]]:
    """Build the layer list from a yolov5-style cfg. Returns (layers, indices whose outputs are reused)."""
    depth_multiple, width_multiple = _multiples(cfg)
    rows = cfg["backbone"] + cfg["head"]
    if len(rows) > MAX_LAYERS:
        raise ValueError(f"the model has {len(rows)} layers (at most {MAX_LAYERS})")
    channels, layers, save, parameters = [3], [], set(), 0
    for layer_index, (from_index, repeats, name, args) in enumerate(rows):
        if name != "Detect" and name not in MODULES:
            raise ValueError(f"unknown module '{name}' in layer {layer_index} (known: {', '.join(MODULES)}, Detect)")
        module_class = Detect if name == "Detect" else MODULES[name]
        sources = [from_index] if isinstance(from_index, int) else list(from_index)
        inputs = [channels[index] for index in sources]
        repeats = _repeats(repeats, depth_multiple, layer_index)
        args, repeats, out_channels = _module_args(
            module_class, _resolve_args(name, list(args), cfg), inputs, repeats, width_multiple
        )
        make = functools.partial(_make_layer, module_class, args, repeats)
        parameters += _parameter_count(make)
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"the model has more than {MAX_PARAMETERS:,} parameters (at layer {layer_index})")
        module = make()
        module.layer_index, module.from_index = layer_index, from_index
        save.update(index % layer_index for index in sources if index != -1)
        layers.append(module)
        if layer_index == 0:
            channels = []
        channels.append(out_channels)
    if not layers or not isinstance(layers[-1], Detect):
        raise ValueError("the last layer must be Detect")
    return layers, save


def available_models() -> list[str]:
    """Names of the model yamls shipped in models/."""
    return sorted(path.stem for path in MODELS_DIR.glob("*.yaml"))


def load_model_cfg(cfg: str | Path) -> dict[str, Any]:
    """Read a model yaml given as a path, a file name in models/ or a bare name like "yolov5s"."""
    path = Path(cfg)
    if not path.is_file():
        stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
        path = MODELS_DIR / f"{stem}.yaml"
    if not path.is_file():
        raise UserError(f"unknown model cfg '{cfg}'; available: {', '.join(available_models())} or a yaml path")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"malformed model yaml {path}: {str(error).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"malformed model yaml {path}: not UTF-8 text (a binary file?)") from None
    except RecursionError:
        raise UserError(f"malformed model yaml {path}: {NESTED_TOO_DEEP}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"malformed model yaml {path}: expected a mapping at the top level")
    loaded.setdefault("cfg_name", path.stem)
    return loaded


def builtin_cfg_name(cfg: dict[str, Any]) -> str | None:
    """The built-in model yaml (``yolov5s.yaml``, ...) whose layers and multiples ``cfg`` has (a checkpoint's model
    yaml, whose anchors and class count may differ), or None."""

    def plain(value: Any) -> Any:  # yolov5's yamls write nn.Upsample's size as the string 'None'
        return [plain(item) for item in value] if isinstance(value, list) else None if value == "None" else value

    layout = ("depth_multiple", "width_multiple", "backbone", "head")
    for name in available_models():
        builtin = load_model_cfg(name)
        if all(plain(cfg.get(key)) == plain(builtin[key]) for key in layout):
            return f"{name}.yaml"
    return None


def build_model(cfg: str | Path | dict, num_classes: int, anchors_per_level: int | None = None) -> DetectionModel:
    """Build a DetectionModel from a model yaml (name, path or dict); bad cfgs raise UserError."""
    cfg_dict = cfg if isinstance(cfg, dict) else load_model_cfg(cfg)
    cfg_name = printable(cfg_dict.get("cfg_name", "<dict>"), 100)
    missing = [key for key in REQUIRED_CFG_KEYS if key not in cfg_dict]
    if missing:
        raise UserError(f"malformed model yaml {cfg_name}: missing {', '.join(missing)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise UserError(f"{cfg_name}: {printable(num_classes, 40)} classes; a model has 1 to {MAX_CLASSES}")
    try:
        return DetectionModel(cfg_dict, num_classes, anchors_per_level)
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError, ArithmeticError) as error:
        raise UserError(f"malformed model yaml {cfg_name}: {type(error).__name__}: {one_line(error)}") from None


def count_gflops(model: nn.Module, img_size: int = 640) -> float:
    """GFLOPs of one forward at ``img_size`` square, counted on a small input and scaled by area."""
    from torch.utils.flop_counter import FlopCounterMode

    probe_size = max(FLOPS_PROBE_SIZE, int(model.stride.max()))
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, probe_size, probe_size, device=parameter.device, dtype=parameter.dtype))
    model.train(was_training)
    return counter.get_total_flops() / 1e9 * (img_size / probe_size) ** 2


def model_summary(model: DetectionModel, img_size: int = 640) -> str:
    """One line: layers, parameters, gradients and GFLOPs at ``img_size``."""
    num_parameters = sum(p.numel() for p in model.parameters())
    num_gradients = sum(p.numel() for p in model.parameters() if p.requires_grad)
    name = str(model.yaml.get("cfg_name", "model"))
    return (
        f"{name} summary: {len(list(model.modules()))} layers, {num_parameters:,} parameters, "
        f"{num_gradients:,} gradients, {count_gflops(model, img_size):.1f} GFLOPs at {img_size} px"
    )
