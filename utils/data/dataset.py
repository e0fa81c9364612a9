"""The training/validation Dataset and DataLoader: load, augment and batch the images of a LabeledSplit."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.boxes import clip_boxes, xyxy2xywhn
from utils.data.augment import (
    augment_hsv,
    copy_paste,
    flip_labels,
    letterbox,
    mixup,
    mosaic4,
    random_perspective,
    scale_labels_to_pixels,
)
from utils.data.config import DataConfig
from utils.data.image_cache import ImageCache, load_resized
from utils.data.image_weights import draw_weighted
from utils.data.labels import LabeledSplit, as_single_class, scan_split

Item = tuple[torch.Tensor, torch.Tensor, str, tuple | None]


def rect_batch_shapes(
    shapes: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Order images by aspect ratio and give each batch the smallest stride-multiple (h, w) that fits it.

    ``shapes`` is (n, 2) original (w, h) -> (order (n,) split indices, batch shapes (num_batches, 2) int (h, w)).
    """
    aspect = shapes[:, 1] / shapes[:, 0]  # h / w
    order = np.argsort(aspect, kind="stable")
    aspect = aspect[order]
    num_batches = math.ceil(len(order) / batch_size)
    batch_shapes = np.ones((num_batches, 2))
    for batch in range(num_batches):
        chunk = aspect[batch * batch_size : (batch + 1) * batch_size]
        if chunk.max() < 1:  # all landscape: full width, height of the tallest
            batch_shapes[batch] = [chunk.max(), 1]
        elif chunk.min() > 1:  # all portrait
            batch_shapes[batch] = [1, 1 / chunk.min()]
    return order, (np.ceil(batch_shapes * img_size / stride + pad) * stride).astype(np.int64)


class YoloDataset(Dataset):
    """Items ``(image uint8 (3, H, W) RGB, targets (n, 6) [0, cls, x, y, w, h] normalised, path, shapes)``.

    Cheap to build from a scanned split, so each evolution child gets its own with its own hyp. Every random draw
    of item ``index`` comes from ``default_rng([seed, epoch, index])``: the result depends on neither the worker
    count nor the order items are fetched in. Call ``set_epoch`` before iterating each epoch.
    """

    def __init__(
        self,
        split: LabeledSplit,
        img_size: int,
        hyp: dict,
        augment: bool,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.0,
        seed: int = 0,
        image_cache: ImageCache | None = None,
    ) -> None:
        if image_cache is not None and (image_cache.split is not split or image_cache.img_size != img_size):
            raise ValueError("image_cache was built for another split or image size")
        self.split, self.img_size, self.hyp, self.augment = split, img_size, dict(hyp), augment
        self.rect, self.batch_size, self.stride, self.seed = rect, batch_size, stride, seed
        self.image_cache = image_cache
        self.epoch = 0
        self.use_mosaic = augment and not rect  # mosaic squares would defeat rectangular batches
        self.order = np.arange(len(split))
        self.batch_shapes = None
        self.image_weights: np.ndarray | None = None  # --image-weights: EpochSampler draws by these
        if rect:
            self.order, self.batch_shapes = rect_batch_shapes(split.shapes, batch_size, img_size, stride, pad)

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def close_mosaic(self) -> None:
        """Turn mosaic (and with it mixup) off, usually for the last epochs."""
        self.use_mosaic = False

    def set_image_weights(self, weights: np.ndarray | None) -> None:
        """--image-weights: from the next epoch, draw split images with replacement in proportion to ``weights``."""
        if self.rect and weights is not None:  # a drawn image would land in another image's rectangular batch
            raise ValueError("image weights need a dataset without rect batches")
        self.image_weights = weights

    def load_image(self, split_index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """BGR image with its long side ``img_size`` -> (image, (h0, w0), (h, w))."""
        if self.image_cache is not None:
            return self.image_cache.load(split_index)
        return load_resized(self.split.image_files[split_index], self.img_size)

    def _load_mosaic(self, split_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        indices = [split_index, *rng.integers(0, len(self.split), 3)]
        images = [self.load_image(int(i))[0] for i in indices]
        labels = [self.split.labels[i] for i in indices]
        segments = [self.split.segments[i] for i in indices]
        image, labels, segments = mosaic4(images, labels, segments, self.img_size, rng)
        image, labels, segments = copy_paste(image, labels, segments, rng, self.hyp["copy_paste"])
        border = -(self.img_size // 2)
        image, labels, _ = random_perspective(image, labels, segments, rng, self.hyp, border=(border, border))
        return image, labels

    def _load_letterboxed(
        self, split_index: int, shape: int | tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple]:
        image, (h0, w0), (h, w) = self.load_image(split_index)
        image, ratio, pad = letterbox(image, shape, auto=False, scaleup=self.augment)
        shapes = ((h0, w0), ((h * ratio / h0, w * ratio / w0), pad))
        labels = scale_labels_to_pixels(self.split.labels[split_index], w * ratio, h * ratio, pad)
        if self.augment:
            segments = [s * (w * ratio, h * ratio) + pad for s in self.split.segments[split_index]]
            image, labels, _ = random_perspective(image, labels, segments, rng, self.hyp)
        return image, labels, shapes

    def __getitem__(self, index: int) -> Item:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        split_index = int(self.order[index])
        shapes = None
        if self.use_mosaic and rng.random() < self.hyp["mosaic"]:
            image, labels = self._load_mosaic(split_index, rng)
            if rng.random() < self.hyp["mixup"]:
                other_image, other_labels = self._load_mosaic(int(rng.integers(len(self.split))), rng)
                image, labels = mixup(image, labels, other_image, other_labels, rng)
        else:
            shape = tuple(int(v) for v in self.batch_shapes[index // self.batch_size]) if self.rect else self.img_size
            image, labels, shapes = self._load_letterboxed(split_index, shape, rng)
        height, width = image.shape[:2]
        labels = labels.astype(np.float32, copy=True)
        if len(labels):
            labels[:, 1:] = xyxy2xywhn(clip_boxes(labels[:, 1:], height, width), width, height)
        if self.augment:
            image = augment_hsv(image, rng, *(self.hyp[k] for k in ("hsv_h", "hsv_s", "hsv_v")))
            if rng.random() < self.hyp["flipud"]:
                image, labels = np.flipud(image), flip_labels(labels, horizontal=False)
            if rng.random() < self.hyp["fliplr"]:
                image, labels = np.fliplr(image), flip_labels(labels, horizontal=True)
        targets = torch.zeros((len(labels), 6))
        targets[:, 1:] = torch.from_numpy(labels)
        image = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(image), targets, str(self.split.image_files[split_index]), shapes

    @staticmethod
    def collate_fn(batch: list[Item]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images and concatenate targets, writing each target's image index into column 0."""
        images, targets, paths, shapes = zip(*batch)
        for image_index, image_targets in enumerate(targets):
            image_targets[:, 0] = image_index
        return torch.stack(images), torch.cat(targets, 0), paths, shapes


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, dataset epoch), so an epoch's order is reproducible on resume.
    A dataset with ``image_weights`` (--image-weights) is instead drawn with replacement in proportion to them.

    With ``world_size > 1`` each rank takes every ``world_size``-th index of the same permutation.
    """

    def __init__(self, dataset: YoloDataset, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.rank, self.world_size = max(rank, 0), world_size
        self.num_samples = math.ceil(len(dataset) / world_size)

    def __iter__(self):
        if self.dataset.image_weights is not None:
            indices = draw_weighted(self.dataset.image_weights, np.random.default_rng([self.seed, self.dataset.epoch]))
            indices = indices.tolist()
        elif self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.dataset.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            indices = list(range(len(self.dataset)))
        indices += indices[: self.num_samples * self.world_size - len(indices)]  # equal share per rank
        return iter(indices[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(0)  # one process per core already; cv2's own threads would oversubscribe


def build_dataloader(
    dataset: YoloDataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    rank: int = -1,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader over ``dataset``; rectangular datasets keep their aspect-sorted order (no shuffle)."""
    if dataset.rect and batch_size != dataset.batch_size:
        raise ValueError(f"rect dataset was built for batch size {dataset.batch_size}, not {batch_size}")
    if dataset.rect and world_size > 1:  # a rank's slice would mix images from batches of different shapes
        raise ValueError("rect datasets are validated on one process; build them with world_size=1")
    sampler = EpochSampler(dataset, shuffle and not dataset.rect, seed, rank, world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate_fn,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,  # fresh workers each epoch see the current set_epoch/close_mosaic state
    )


def prepare_split(
    config: DataConfig, split_name: str, img_size: int, cache_mode: str | None = None, single_cls: bool = False
) -> tuple[LabeledSplit, ImageCache | None]:
    """Scan a split of a data config once (label cache) and optionally cache its resized images.

    ``single_cls`` makes every label class 0 after the scan, which still checks classes against the yaml's names.
    """
    split = scan_split(config.image_files(split_name), config.num_classes, name=split_name)
    if single_cls:
        split = as_single_class(split)
    image_cache = ImageCache(split, img_size, cache_mode) if cache_mode else None
    return split, image_cache
