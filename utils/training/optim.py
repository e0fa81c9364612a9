"""Optimizers over three parameter groups, frozen layers (--freeze), nominal-batch accumulation and the --lr-fit
learning-rate clamp."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from utils.errors import UserError
from utils.training.distributed import unwrap_model

LOGGER = logging.getLogger(__name__)

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop")
GROUP_NAMES = ("bias", "norm", "decay")  # the order of optimizer.param_groups, fixed so resumed states line up
NOMINAL_BATCH = 64
RMSPROP_ALPHA = 0.9  # squared-gradient smoothing as in the TF/timm RMSprop recipes; torch's 0.99 adapts too slowly
ADAM_BETA2 = 0.999

# --lr-fit clamps lr0 * images_per_step / 64 to these [min, max] per optimizer. The SGD ceiling stays below the
# point where yolov5-style SGD with Nesterov diverges in the first epochs; the adaptive optimizers normalise the
# step size by the gradient scale, so their useful range sits about ten times lower.
LR_FIT_LIMITS = {
    "SGD": (1e-4, 0.05),
    "Adam": (1e-5, 0.003),
    "AdamW": (1e-5, 0.003),
    "RMSprop": (1e-5, 0.003),
}

FREEZE_MAX = 1000  # a --freeze beyond any model's layer count, refused before the data is read

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def optimizer_name(name: str) -> str:
    """The canonical spelling of an optimizer name (case-insensitive); UserError listing the valid ones otherwise."""
    for valid in OPTIMIZERS:
        if name.lower() == valid.lower():
            return valid
    raise UserError(f"unknown optimizer '{name}'; valid optimizers: {', '.join(OPTIMIZERS)}")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split the trainable parameters into "bias", "norm" (norm-layer weights) and "decay" (everything else).

    Every parameter with requires_grad lands in exactly one group, even when modules share it. Biases include the
    biases of norm layers; parameters of norm layers that are not biases count as norm weights.
    """
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    seen: set[int] = set()
    for module in unwrap_model(model).modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if parameter_name == "bias":
                groups["bias"].append(parameter)
            elif isinstance(module, NORM_LAYERS):
                groups["norm"].append(parameter)
            else:
                groups["decay"].append(parameter)
    return groups


def frozen_layer_indices(freeze: Sequence[int]) -> tuple[int, ...]:
    """yolov5's --freeze: one value N means layers 0..N-1 (10 is the backbone, 0 nothing); several are indices."""
    if any(index < 0 for index in freeze):
        raise UserError(f"--freeze takes layer indices or a layer count >= 0, got {' '.join(map(str, freeze))}")
    if freeze and max(freeze) > FREEZE_MAX:  # checked again against the model's layers when it is built
        raise UserError(f"--freeze {max(freeze)}: no model here has that many layers (yolov5's have 25)")
    if len(freeze) <= 1:
        return tuple(range(freeze[0] if freeze else 0))
    return tuple(sorted(set(freeze)))


def freeze_layers(model: nn.Module, layers: Sequence[int]) -> str:
    """Stop gradients for the parameters of top-level layers ``layers`` (names ``model.<i>.``); returns a log line.

    Frozen parameters get requires_grad=False, so ``parameter_groups`` leaves them out of the optimizer (no update,
    no weight decay). Their BatchNorm layers stay in training mode and keep updating running statistics, as in
    yolov5.
    """
    model = unwrap_model(model)
    num_layers = len(model.model)
    outside = [index for index in layers if index >= num_layers]
    if outside:
        shown = " ".join(map(str, outside)) if len(outside) <= 5 else f"{outside[0]} ... {outside[-1]}"
        raise UserError(f"--freeze: the model has layers 0-{num_layers - 1}, not {shown}")
    prefixes = tuple(f"model.{index}." for index in layers)
    frozen = [parameter for name, parameter in model.named_parameters() if name.startswith(prefixes)]
    if frozen and len(frozen) == len(list(model.parameters())):
        raise UserError(f"--freeze freezes every layer of the model (0-{num_layers - 1}): nothing would train")
    for parameter in frozen:
        parameter.requires_grad_(False)
    contiguous = len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1))
    shown = f"{prefixes[0]} ... {prefixes[-1]}" if contiguous else " ".join(prefixes)
    return f"freezing {shown} ({len(frozen)} tensors)"


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """An optimizer with the groups of ``parameter_groups`` in GROUP_NAMES order, each tagged with its "name".

    Only the "decay" group gets ``weight_decay`` (pass it already scaled by ``scaled_weight_decay``). ``momentum`` is
    SGD's (Nesterov) and RMSprop's momentum and Adam's / AdamW's beta1; beta2 is 0.999 and RMSprop's alpha is 0.9.
    """
    name = optimizer_name(name)
    groups = parameter_groups(model)
    param_groups = [
        {"params": groups[group], "name": group, "weight_decay": weight_decay if group == "decay" else 0.0}
        for group in GROUP_NAMES
    ]
    if name == "SGD":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "Adam":
        return torch.optim.Adam(param_groups, lr=lr, betas=(momentum, ADAM_BETA2))
    if name == "AdamW":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(momentum, ADAM_BETA2))
    return torch.optim.RMSprop(param_groups, lr=lr, momentum=momentum, alpha=RMSPROP_ALPHA)


def nominal_accumulation(batch_size: int, nominal: int = NOMINAL_BATCH) -> int:
    """Batches to accumulate per optimizer step so that a step sees about ``nominal`` images."""
    return max(round(nominal / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nominal: int = NOMINAL_BATCH) -> float:
    """Weight decay for steps of ``batch_size * accumulate`` images, given a value tuned for ``nominal`` images."""
    return weight_decay * batch_size * accumulate / nominal


def fit_learning_rate(lr0: float, batch_size: int, optimizer: str, nominal: int = NOMINAL_BATCH) -> float:
    """--lr-fit: lr0 scaled linearly by the images per optimizer step over ``nominal``, clamped to LR_FIT_LIMITS.

    Images per step is ``batch_size * nominal_accumulation(batch_size)``: below 64 the accumulation already restores
    about 64 images per step, so the scale is about 1 there, and it is ``batch_size / 64`` from 64 up.
    Limits [min, max]: SGD [1e-4, 0.05]; Adam, AdamW and RMSprop [1e-5, 0.003]. The result is logged.
    """
    optimizer = optimizer_name(optimizer)
    low, high = LR_FIT_LIMITS[optimizer]
    images_per_step = batch_size * nominal_accumulation(batch_size, nominal)
    fitted = min(max(lr0 * images_per_step / nominal, low), high)
    LOGGER.info(
        "--lr-fit: lr0 %.6g -> %.6g (%s, %d images per step, limits [%g, %g])",
        lr0,
        fitted,
        optimizer,
        images_per_step,
        low,
        high,
    )
    return fitted
