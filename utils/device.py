"""Turn a yolov5-style --device string ('', 'cpu', '0', '0,1') into a torch.device, with clear errors."""

from __future__ import annotations

import os

import torch

from utils.errors import UserError


def select_device(device: str = "", local_rank: int = -1) -> torch.device:
    """Pick the device for this process; under torchrun each rank takes its own CUDA index from ``local_rank``."""
    spec = str(device).strip().lower().replace("cuda:", "").replace(" ", "")
    if spec == "cpu" or (spec == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec in ("", "cuda"):
        return torch.device("cuda", max(local_rank, 0))
    indices = spec.split(",")
    if not all(index.isdigit() for index in indices):
        raise UserError(f"--device {device!r} is not valid: use 'cpu', a CUDA index like 0, or a list like 0,1")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device!r} asks for CUDA, but no CUDA device is available here (use --device cpu)")
    count = torch.cuda.device_count()
    missing = [index for index in indices if int(index) >= count]
    if missing:
        raise UserError(f"--device {device!r}: CUDA device {missing[0]} does not exist ({count} visible)")
    if local_rank >= 0:
        return torch.device("cuda", int(indices[local_rank % len(indices)]))
    return torch.device("cuda", int(indices[0]))


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated, slowly.
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` is not this test: it is true on any AVX-512 CPU.)"""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def trains_in_bf16(cpu_fast: bool, device: torch.device) -> bool:
    """Whether --cpu-fast trains in bf16 here: on a CPU that runs bf16 natively (CUDA uses fp16 AMP instead)."""
    return bool(cpu_fast) and device.type == "cpu" and cpu_has_bf16()


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun; (-1, -1, 1) outside it."""
    rank = int(os.environ.get("RANK", -1))
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world_size
