"""GpuBatchAugmenter: a split's images held once as tensors, augmented a whole batch at a time on their device."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.dataset import EpochSampler
from utils.data.gpu_augment.box_warp import warp_boxes
from utils.data.gpu_augment.draws import BatchPlan, batch_generator, draw_plan, warp_matrices
from utils.data.gpu_augment.pixels import adjust_hsv, flip_images, tile_offsets, warp_tiles
from utils.data.image_cache import ImageCache, load_resized
from utils.data.labels import LabeledSplit

STORAGES = ("auto", "device", "host")
DEVICE_MEMORY_FRACTION = 0.5  # "auto" keeps images on the GPU only if they leave half its free memory to training


def pack_images(
    load: Callable[[int], np.ndarray], count: int, img_size: int, pin: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``count`` BGR images (long side ``img_size``) into one RGB buffer (count, S, S, 3) uint8, each at the
    top-left of its S x S slot -> (buffer, sizes (count, 2) long (h, w))."""
    buffer = torch.empty((count, img_size, img_size, 3), dtype=torch.uint8, pin_memory=pin)
    sizes = torch.zeros((count, 2), dtype=torch.long)

    def fill(index: int) -> None:
        image = load(index)
        height, width = image.shape[:2]
        if max(height, width) != img_size:
            raise ValueError(f"image {index} is {height}x{width}; its long side must be {img_size}")
        buffer[index, :height, :width] = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1]))  # BGR -> RGB
        sizes[index] = torch.tensor([height, width])

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # cv2 decodes without the GIL
        list(pool.map(fill, range(count)))
    return buffer, sizes


def _keep_on_device(num_bytes: int, device: torch.device, storage: str) -> bool:
    """Whether batches read the image buffer in place on ``device``, rather than copy their images over from the
    host (pinned for CUDA). On the CPU both live in the same memory; "host" still takes the copying path."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if storage != "auto":
        return storage == "device"
    return device.type != "cuda" or num_bytes < DEVICE_MEMORY_FRACTION * torch.cuda.mem_get_info(device)[0]


class GpuBatchAugmenter:
    """Mosaic, perspective, mixup, HSV and flips for a whole batch in torch, with ``YoloDataset``'s distributions.

    Holds the images (long side ``img_size``, as ``ImageCache`` stores them) in one uint8 buffer on ``device`` when
    they fit, else in pinned host memory, and every label as one (m, 6) tensor ``[image, cls, x, y, w, h]``.
    ``batch(indices, generator)`` returns what the training DataLoader's collate returns: images uint8
    (b, 3, S, S) RGB and targets (n, 6) ``[batch index, cls, x, y, w, h]`` normalised, both on ``device``.
    Boxes only: segments (and with them copy_paste) are ignored, see ``supports``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor,
        labels: Sequence[np.ndarray],
        img_size: int,
        hyp: dict[str, float],
        device: torch.device | str = "cpu",
        storage: str = "auto",
        seed: int = 0,
        paths: Sequence[str] | None = None,
    ) -> None:
        self.device, self.img_size, self.hyp, self.seed = torch.device(device), img_size, dict(hyp), seed
        self.images_on_device = _keep_on_device(images.numel(), self.device, storage)
        self.images = images.to(self.device) if self.images_on_device else images  # (N, S, S, 3) uint8 RGB
        self.sizes = sizes.long()  # (N, 2) (h, w), on the CPU: the plan is built there
        counts = torch.tensor([len(image_labels) for image_labels in labels], dtype=torch.long)
        self.label_starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        rows = [np.asarray(image_labels, np.float32).reshape(-1, 5) for image_labels in labels]
        owners = torch.repeat_interleave(torch.arange(len(labels)), counts).float()[:, None]
        # (m, 6) [image, cls, x, y, w, h] normalised; kept on the CPU, where the boxes are transformed
        self.labels = torch.cat([owners, torch.from_numpy(np.concatenate(rows or [np.zeros((0, 5), np.float32)]))], 1)
        self.paths = list(paths) if paths is not None else [str(index) for index in range(len(images))]
        self.epoch, self.use_mosaic = 0, True
        self.image_weights: np.ndarray | None = None  # --image-weights: EpochSampler draws by these

    @classmethod
    def from_split(
        cls,
        split: LabeledSplit,
        img_size: int,
        hyp: dict[str, float],
        device: torch.device | str = "cpu",
        image_cache: ImageCache | None = None,
        storage: str = "auto",
        seed: int = 0,
    ) -> GpuBatchAugmenter:
        """Decode (or take from ``image_cache``) every image of ``split`` once."""
        device = torch.device(device)
        on_device = _keep_on_device(len(split) * img_size * img_size * 3, device, storage)

        def load(index: int) -> np.ndarray:
            if image_cache is not None:
                return image_cache.load(index)[0]
            return load_resized(split.image_files[index], img_size)[0]

        images, sizes = pack_images(load, len(split), img_size, pin=device.type == "cuda" and not on_device)
        paths = [str(path) for path in split.image_files]
        placement = "device" if on_device else "host"
        return cls(images, sizes, split.labels, img_size, hyp, device, placement, seed, paths)

    def with_hyp(self, hyp: dict[str, float], seed: int = 0) -> GpuBatchAugmenter:
        """A fresh augmenter (epoch 0, mosaic on) for another run, sharing these images and labels: build the
        storage once per process and give each evolution child its own hyp."""
        fresh = copy.copy(self)
        fresh.hyp, fresh.seed, fresh.epoch, fresh.use_mosaic = dict(hyp), seed, 0, True
        fresh.image_weights = None
        return fresh

    @staticmethod
    def supports(hyp: dict[str, float], split: LabeledSplit) -> bool:
        """False when the CPU pipeline would use polygons: copy_paste, and box fitting from segments."""
        return not any(len(segments) for segments in split.segments) or not hyp["copy_paste"]

    def __len__(self) -> int:
        return len(self.sizes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def close_mosaic(self) -> None:
        """Turn mosaic (and with it mixup) off, usually for the last epochs."""
        self.use_mosaic = False

    def set_image_weights(self, weights: np.ndarray | None) -> None:
        """--image-weights: from the next epoch, draw images with replacement in proportion to ``weights``."""
        self.image_weights = weights

    def plan(self, indices: Sequence[int] | torch.Tensor, generator: torch.Generator) -> BatchPlan:
        """All random draws of one batch of split ``indices``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return draw_plan(indices, len(self), self.img_size, self.hyp, self.use_mosaic, generator)

    def batch(
        self, indices: Sequence[int] | torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment split ``indices`` -> (images uint8 (b, 3, S, S) RGB, targets (n, 6) normalised) on the device."""
        return self.render(self.plan(indices, generator))

    def render(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a drawn plan: warp the tiles, blend mixup pairs, HSV, flips; move the boxes alongside.

        Boxes (a few hundred) are computed on the CPU and only pixels on the device, so nothing here waits for the
        device: the previous training step keeps running while the next batch is queued behind it.
        """
        size, count = self.img_size, plan.batch_size
        if self.images_on_device:  # read the tiles in place
            sources, slots = self.images, plan.tiles
        else:  # copy over only the images this batch shows
            used, slots = torch.unique(plan.tiles, return_inverse=True)
            sources = self.images[used].to(self.device, non_blocking=True)
        canvas_sizes = torch.where(plan.mosaic, 2 * size, size)
        tile_sizes = self.sizes[plan.tiles]
        layout = {"slots": slots, "tile_sizes": tile_sizes, "centres": plan.centres, "canvas_sizes": canvas_sizes}
        layout["offsets"] = tile_offsets(plan.centres, tile_sizes, plan.mosaic, size)
        matrices = warp_matrices(plan.warps, canvas_sizes, size)
        targets = self._targets(plan, layout, matrices).to(self.device, non_blocking=True)
        to_device = {name: value.to(self.device, non_blocking=True) for name, value in layout.items()}
        warped = warp_tiles(sources, to_device, torch.linalg.inv(matrices).float().to(self.device), size)
        if len(plan.mixup_parent):
            parents = plan.mixup_parent.to(self.device)
            ratio = plan.mixup_ratio.float().to(self.device)[:, None, None]
            warped[parents] = warped[parents] * ratio + warped[count:] * (1 - ratio)
        images = warped[:count]
        if any(self.hyp[key] for key in ("hsv_h", "hsv_s", "hsv_v")):
            images = adjust_hsv(images, plan.hsv_gains.float().to(self.device))
        images = images.round_().clamp_(0, 255).to(torch.uint8).view(count, size, size, 3)
        images = flip_images(images, plan.flip_up_down, plan.flip_left_right)
        return images.permute(0, 3, 1, 2).contiguous(), targets

    def _label_rows(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every label each warp shows -> (label row, warp, tile), warp-major then tile then label order."""
        counts = (self.label_starts[plan.tiles + 1] - self.label_starts[plan.tiles]).clone()  # (w, 4)
        counts[~plan.mosaic, :3] = 0  # a letterboxed warp shows its image once, as tile 3
        flat_counts = counts.flatten()
        owner = torch.repeat_interleave(torch.arange(len(flat_counts)), flat_counts)
        first_of_owner = torch.cumsum(flat_counts, 0) - flat_counts
        position = torch.arange(len(owner)) - first_of_owner[owner]
        warp, tile = owner // 4, owner % 4
        return self.label_starts[plan.tiles[warp, tile]] + position, warp, tile

    def _targets(self, plan: BatchPlan, layout: dict[str, torch.Tensor], matrices: torch.Tensor) -> torch.Tensor:
        """Boxes of every tile through their warp, filtered like random_perspective, flipped, in collate format.

        Runs on the CPU (``layout`` and ``matrices`` there too) and returns float32 (n, 6).
        """
        rows, warp, tile = self._label_rows(plan)
        labels = self.labels[rows].double()
        heights, widths = layout["tile_sizes"][warp, tile].double().unbind(-1)
        offset_x, offset_y = layout["offsets"][warp, tile].double().unbind(-1)
        boxes = xywhn2xyxy(labels[:, 2:6], widths, heights, offset_x, offset_y)
        is_mosaic = plan.mosaic[warp]
        boxes = torch.where(is_mosaic[:, None], boxes.clamp(0, 2 * self.img_size), boxes)  # as mosaic4 clips
        boxes, keep = warp_boxes(boxes, matrices[warp], plan.warps.scale[warp], self.img_size)
        item = torch.cat([torch.arange(plan.batch_size), plan.mixup_parent])[warp][keep]
        xywh = xyxy2xywhn(boxes[keep].clamp(0, self.img_size), self.img_size, self.img_size)
        xywh[:, 0] = torch.where(plan.flip_left_right[item], 1 - xywh[:, 0], xywh[:, 0])
        xywh[:, 1] = torch.where(plan.flip_up_down[item], 1 - xywh[:, 1], xywh[:, 1])
        targets = torch.cat([item.double()[:, None], labels[keep, 1:2], xywh], 1).float()
        return targets[torch.sort(item, stable=True).indices]  # mixup labels follow their item's own

    def epoch_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple]:
        """This epoch's batches in the training DataLoader's format ``(images, targets, paths, shapes)``.

        The order is ``EpochSampler``'s (the CPU loader's shuffle) and batch ``k`` draws from
        ``batch_generator(seed, epoch, k, rank)``, so an epoch is reproducible and resumable.
        """
        order = list(EpochSampler(self, shuffle=True, seed=self.seed, rank=rank, world_size=world_size))
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            indices = order[start : start + batch_size]
            images, targets = self.batch(indices, batch_generator(self.seed, self.epoch, batch_index, rank))
            yield images, targets, tuple(self.paths[index] for index in indices), (None,) * len(indices)


class GpuAugmentLoader:
    """An iterable with ``len`` like the training DataLoader, over ``GpuBatchAugmenter.epoch_batches``."""

    def __init__(self, augmenter: GpuBatchAugmenter, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.augmenter, self.batch_size, self.rank, self.world_size = augmenter, batch_size, max(rank, 0), world_size

    def __len__(self) -> int:
        per_rank = -(-len(self.augmenter) // self.world_size)
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        return self.augmenter.epoch_batches(self.batch_size, self.rank, self.world_size)
