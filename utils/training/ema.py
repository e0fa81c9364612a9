"""Exponential moving average of a model's weights, with yolov5's ramped decay."""

from __future__ import annotations

import math
from collections.abc import Mapping
from copy import deepcopy

import torch
from torch import nn

from utils.training.distributed import unwrap_model


class ModelEMA:
    """An eval-mode copy of the model whose floating-point state follows the training model.

    After the n-th ``update`` the copy is ``d * ema + (1 - d) * model`` with ``d = decay * (1 - exp(-n / tau))``:
    the ramp keeps the early average from being dominated by the random initial weights.
    Integer buffers (BatchNorm's num_batches_tracked) are left as copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0) -> None:
        self.ema = deepcopy(unwrap_model(model)).eval()
        self.decay = decay
        self.tau = tau
        self.updates = updates
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The weight kept from the average at update number ``updates``."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the training model's current weights into the average; call after each optimizer step."""
        self.updates += 1
        keep = self.decay_at(self.updates)
        model_state = unwrap_model(model).state_dict()
        averages = {key: value for key, value in self.ema.state_dict().items() if value.dtype.is_floating_point}
        currents = [model_state[key].detach().to(average.dtype) for key, average in averages.items()]
        # lerp by (1 - keep) is keep * average + (1 - keep) * current; one fused call instead of a kernel per tensor
        torch._foreach_lerp_(list(averages.values()), currents, 1 - keep)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict (store ``updates`` next to it, as the checkpoint's "ema_updates")."""
        return self.ema.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restore the average and the update count, so the decay ramp continues where it stopped."""
        self.ema.load_state_dict(state_dict)
        self.updates = updates
