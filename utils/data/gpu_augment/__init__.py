"""GPU-side batched augmentation: YoloDataset's mosaic, perspective, mixup, HSV and flips as torch ops on a batch."""

from utils.data.gpu_augment.augmenter import GpuAugmentLoader, GpuBatchAugmenter, pack_images
from utils.data.gpu_augment.draws import BatchPlan, batch_generator, draw_plan

__all__ = ["BatchPlan", "GpuAugmentLoader", "GpuBatchAugmenter", "batch_generator", "draw_plan", "pack_images"]
