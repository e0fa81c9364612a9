"""Data scanned and cached once per process, then shared by every training run in it (evolution children)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.data.config import DataConfig, load_data_config, single_class_names
from utils.data.dataset import YoloDataset, build_dataloader, prepare_split
from utils.data.gpu_augment import GpuBatchAugmenter
from utils.data.image_cache import ImageCache
from utils.data.labels import LabeledSplit, label_sizes

VALIDATION_PAD = 0.5  # half a stride of padding around rectangular validation batches, as yolov5 does


@dataclass
class PreparedData:
    """A data config with its train and val splits scanned (and optionally image-cached) at one image size."""

    config: DataConfig
    img_size: int
    train_split: LabeledSplit
    val_split: LabeledSplit
    train_cache: ImageCache | None = None
    val_cache: ImageCache | None = None
    single_cls: bool = False  # --single-cls: the splits' labels are all class 0 and there is one name
    _val_loaders: dict[tuple, DataLoader] = field(default_factory=dict, repr=False)
    _gpu_augmenters: dict[str, GpuBatchAugmenter] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return single_class_names(self.config.names) if self.single_cls else self.config.names

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def label_sizes(self) -> np.ndarray:
        """(m, 2) training-label widths and heights in pixels at ``img_size``, for AutoAnchor."""
        return label_sizes(self.train_split.shapes, self.train_split.labels, self.img_size)

    def train_dataset(
        self, hyp: dict[str, float], batch_size: int, seed: int, augment: bool = True, rect: bool = False
    ) -> YoloDataset:
        """A fresh augmenting dataset over the scanned train split; cheap, so one per training run.

        ``rect`` (--rect): batches of ``batch_size`` images in aspect-ratio order, each letterboxed to its batch's
        shape as validation does (without its padding), still with the hyp's perspective, HSV and flips."""
        return YoloDataset(
            self.train_split,
            self.img_size,
            hyp,
            augment=augment,
            rect=rect,
            batch_size=batch_size,
            seed=seed,
            image_cache=self.train_cache,
        )

    def gpu_augmenter(self, hyp: dict[str, float], seed: int, device: torch.device) -> GpuBatchAugmenter:
        """A batched on-device augmenter for the train split; its image storage is built once per device."""
        key = str(device)
        if key not in self._gpu_augmenters:
            self._gpu_augmenters[key] = GpuBatchAugmenter.from_split(
                self.train_split, self.img_size, hyp, device, image_cache=self.train_cache, seed=seed
            )
        return self._gpu_augmenters[key].with_hyp(hyp, seed)

    def val_loader(self, batch_size: int, workers: int, stride: int = 32) -> DataLoader:
        """The rectangular validation loader, built on first use and reused by later runs."""
        key = (batch_size, workers, stride)
        if key not in self._val_loaders:
            self._val_loaders[key] = validation_loader(
                self.val_split, self.img_size, batch_size, workers, stride, self.val_cache
            )
        return self._val_loaders[key]


def validation_loader(
    split: LabeledSplit,
    img_size: int,
    batch_size: int,
    workers: int,
    stride: int,
    image_cache: ImageCache | None = None,
) -> DataLoader:
    """yolov5's validation loader: rectangular batches padded by half a stride, no augmentation, in order."""
    dataset = YoloDataset(
        split, img_size, {}, augment=False, rect=True, batch_size=batch_size, stride=stride, pad=VALIDATION_PAD,
        image_cache=image_cache,
    )  # fmt: skip
    return build_dataloader(dataset, batch_size, workers, shuffle=False)


def prepare_data(
    data: str | Path | DataConfig, img_size: int, cache_mode: str | None = None, single_cls: bool = False
) -> PreparedData:
    """Load the data yaml (generating or downloading the dataset if it asks to), scan train and val once.

    ``single_cls`` (--single-cls) trains and validates every object as one class."""
    config = data if isinstance(data, DataConfig) else load_data_config(data)
    train_split, train_cache = prepare_split(config, "train", img_size, cache_mode, single_cls)
    val_split, val_cache = prepare_split(config, "val", img_size, cache_mode, single_cls)
    return PreparedData(config, img_size, train_split, val_split, train_cache, val_cache, single_cls)
