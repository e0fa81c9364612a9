"""DDP under torchrun: the process group, wrapping and unwrapping the model, and rank 0's decisions shared."""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.training.options import DistributedOptions


def init_distributed(device: torch.device, world_size: int) -> None:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU); nothing to do for a single process."""
    if world_size <= 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and barrier() must use this rank's device, not a guessed one
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def close_distributed(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.destroy_process_group()


def barrier_for_main_process(rank: int, first: bool) -> None:
    """Make the other ranks wait while rank 0 does shared work once (call with first=True before, False after)."""
    if rank >= 0 and (rank > 0) == first:
        torch.distributed.barrier()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def wrap_distributed(model: nn.Module, distributed: DistributedOptions, device: torch.device) -> nn.Module:
    """DDP (and optional SyncBatchNorm) around the model when running under torchrun."""
    if distributed.rank == -1:
        return model
    if distributed.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def share_from_main_process(
    epoch_fitness: float | None, stop: bool, distributed: DistributedOptions, device: torch.device
) -> tuple[float | None, bool]:
    """Only rank 0 validates; under DDP every rank takes its fitness (for plateau) and its early-stop decision."""
    if distributed.world_size <= 1:
        return epoch_fitness, stop
    shared = torch.tensor([math.nan if epoch_fitness is None else epoch_fitness, float(stop)], device=device)
    torch.distributed.broadcast(shared, src=0)
    fitness_value = shared[0].item()
    return (None if math.isnan(fitness_value) else fitness_value), bool(shared[1].item())
