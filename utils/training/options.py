"""What a training run is told besides its hyp, split along its seams: the run, its outputs, and distribution."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class OutputOptions:
    """What a run writes; ``save_dir`` None writes nothing at all (evolution children)."""

    save_dir: Path | None = None
    save_weights: bool = True  # --nosave keeps only the final last.pt
    plots: bool = True
    show_progress: bool = True
    record: dict = field(default_factory=dict)  # the CLI options as given, saved to opt.yaml and checkpoints
    save_period: int = -1  # --save-period: also save weights/epochN.pt every N epochs (<= 0: off)


@dataclass(frozen=True)
class DistributedOptions:
    """This process's place under torchrun; the defaults are a single process."""

    rank: int = -1  # global rank; -1 outside DDP
    world_size: int = 1
    sync_bn: bool = False

    @property
    def is_main_process(self) -> bool:
        return self.rank in (-1, 0)


@dataclass(frozen=True)
class TrainOptions:
    """Everything about a training run that is not a hyperparameter; built from the CLI by ``utils.cli``."""

    epochs: int = 30
    batch_size: int = 16  # total over all processes
    nominal_batch: int = 64  # images per optimizer step that hyp values are tuned for (yolov5's nbs)
    cfg: str = "yolov5n.yaml"
    weights: str = ""  # a .pt to transfer matching tensors from
    freeze: tuple[int, ...] = ()  # top-level layers whose parameters never train (--freeze, resolved)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0  # loader processes; train.py: 0 on a CPU (every core trains), 2 on CUDA
    optimizer: str = "SGD"
    scheduler: dict = field(default_factory=lambda: {"name": "linear"})  # build_scheduler keyword arguments
    close_mosaic: int = 0
    lr_fit: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    seed: int = 0
    deterministic: bool = False
    autoanchor: bool = True
    validate_every_epoch: bool = True  # --noval validates the final epoch only
    fitness_weights: dict[str, float] | None = None
    amp: bool = True  # fp16 autocast with loss scaling, only ever on for CUDA
    cpu_fast: bool = True  # on a CPU, channels_last, and bf16 autocast where the CPU runs bf16 natively (--no-cpu-fast)
    gpu_augment: str = "auto"  # on | off | auto (on for CUDA devices); augment batches on the device
    min_warmup_iters: int = 100  # yolov5's floor under warmup_epochs x batches per epoch
    resume: str | None = None  # a last.pt to continue from
    single_cls: bool = False  # --single-cls: every label is class 0; the data must be prepared the same way
    rect: bool = False  # --rect: rectangular batches in aspect order, no mosaic, no shuffle
    multi_scale: bool = False  # --multi-scale: each batch resized to a random stride multiple of 0.5-1.5 x img
    image_weights: bool = False  # --image-weights: each epoch draws images by class rarity and per-class mAP
    outputs: OutputOptions = field(default_factory=OutputOptions)
    distributed: DistributedOptions = field(default_factory=DistributedOptions)

    @property
    def is_main_process(self) -> bool:
        return self.distributed.is_main_process

    def with_outputs(self, **changes: object) -> TrainOptions:
        """A copy with some ``OutputOptions`` fields changed (``save_dir=...``, ``plots=False``)."""
        return dataclasses.replace(self, outputs=dataclasses.replace(self.outputs, **changes))
