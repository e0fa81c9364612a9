"""Every random draw of a GPU-augmented batch, with the CPU pipeline's distributions, from one torch.Generator.

The draws run on the CPU generator and are tiny, so a seed gives the same plan on any device. The distributions
follow ``utils.data.dataset.YoloDataset`` and ``utils.data.augment`` key by key (see each field's comment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MIXUP_BETA = 32  # mixup's ratio is Beta(32, 32), as in utils.data.augment.mixup


@dataclass
class WarpDraws:
    """The random_perspective parameters of n warps (float64 (n,) unless noted)."""

    perspective: torch.Tensor  # (n, 2) U(-perspective, perspective)
    angle: torch.Tensor  # degrees, U(-degrees, degrees)
    scale: torch.Tensor  # U(1 - scale, 1 + scale)
    shear: torch.Tensor  # (n, 2) degrees, U(-shear, shear)
    translation: torch.Tensor  # (n, 2) fractions of the output size, U(0.5 - translate, 0.5 + translate)

    def select(self, rows: slice | torch.Tensor) -> WarpDraws:
        return WarpDraws(**{name: value[rows] for name, value in vars(self).items()})


@dataclass
class BatchPlan:
    """What one batch does: which images go where and every random parameter, before any pixel moves.

    A batch of b items renders w = b + (number of mixup items) warps: warp i < b is item i, and the extra warps
    are the second mosaics of the mixup items, blended into item ``mixup_parent[i - b]``.
    """

    tiles: torch.Tensor  # (w, 4) long: split image of each mosaic tile (a letterboxed item uses column 3 only)
    mosaic: torch.Tensor  # (w,) bool: a 2S mosaic canvas, else the image letterboxed into S
    centres: torch.Tensor  # (w, 2) long: mosaic centre (x, y), int(U(S/2, 3S/2)); 0 for letterboxed items
    warps: WarpDraws  # w warps
    mixup_parent: torch.Tensor  # (m,) long: the item each extra warp is blended into
    mixup_ratio: torch.Tensor  # (m,) float64 Beta(32, 32): weight of the parent's image
    hsv_gains: torch.Tensor  # (b, 3) float64 U(-1, 1) * (hsv_h, hsv_s, hsv_v) + 1
    flip_up_down: torch.Tensor  # (b,) bool with probability flipud
    flip_left_right: torch.Tensor  # (b,) bool with probability fliplr

    @property
    def batch_size(self) -> int:
        return len(self.hsv_gains)


def batch_generator(seed: int, epoch: int, batch_index: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for one batch, seeded like the CPU pipeline's ``default_rng([seed, epoch, index])``."""
    state = np.random.SeedSequence([seed, epoch, batch_index, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _bernoulli(count: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator, dtype=torch.float64) < probability


def draw_warps(count: int, hyp: dict, generator: torch.Generator) -> WarpDraws:
    """``count`` sets of random_perspective parameters (the ranges of ``utils.data.augment._perspective_matrix``)."""
    perspective, degrees = hyp["perspective"], hyp["degrees"]
    scale, shear, translate = hyp["scale"], hyp["shear"], hyp["translate"]
    return WarpDraws(
        perspective=_uniform((count, 2), -perspective, perspective, generator),
        angle=_uniform((count,), -degrees, degrees, generator),
        scale=_uniform((count,), 1 - scale, 1 + scale, generator),
        shear=_uniform((count, 2), -shear, shear, generator),
        translation=_uniform((count, 2), 0.5 - translate, 0.5 + translate, generator),
    )


def draw_beta(count: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(32, 32) draws: the 32nd smallest of 63 uniforms has exactly that law (torch's Beta takes no generator)."""
    uniforms = torch.rand((count, 2 * MIXUP_BETA - 1), generator=generator, dtype=torch.float64)
    return uniforms.median(dim=1).values


def _draw_mosaics(
    count: int, num_images: int, img_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three random partner images per mosaic and the mosaic centre (x, y)."""
    partners = torch.randint(0, num_images, (count, 3), generator=generator)
    centres = _uniform((count, 2), img_size / 2, 3 * img_size / 2, generator).long()  # int() truncates, as on CPU
    return partners, centres


def draw_plan(
    indices: torch.Tensor, num_images: int, img_size: int, hyp: dict, use_mosaic: bool, generator: torch.Generator
) -> BatchPlan:
    """Draw everything a batch of split ``indices`` needs, the way ``YoloDataset.__getitem__`` does per item."""
    indices = indices.long().cpu()
    count = len(indices)
    mosaic = _bernoulli(count, hyp["mosaic"], generator) & use_mosaic
    partners, centres = _draw_mosaics(count, num_images, img_size, generator)
    mixup = _bernoulli(count, hyp["mixup"], generator) & mosaic  # mixup blends two mosaics only
    mixup_parent = mixup.nonzero().flatten()
    extra = len(mixup_parent)
    extra_first = torch.randint(0, num_images, (extra,), generator=generator)
    extra_partners, extra_centres = _draw_mosaics(extra, num_images, img_size, generator)
    tiles = torch.cat(
        [
            torch.cat([indices[:, None], partners], 1),
            torch.cat([extra_first[:, None], extra_partners], 1),
        ]
    )
    tiles[:count][~mosaic] = indices[~mosaic, None]  # a letterboxed item shows its own image only
    all_mosaic = torch.cat([mosaic, torch.ones(extra, dtype=torch.bool)])
    all_centres = torch.cat([centres, extra_centres]) * all_mosaic[:, None]
    gains = torch.tensor([hyp[key] for key in ("hsv_h", "hsv_s", "hsv_v")], dtype=torch.float64)
    return BatchPlan(
        tiles=tiles,
        mosaic=all_mosaic,
        centres=all_centres,
        warps=draw_warps(count + extra, hyp, generator),
        mixup_parent=mixup_parent,
        mixup_ratio=draw_beta(extra, generator),
        hsv_gains=_uniform((count, 3), -1, 1, generator) * gains + 1,
        flip_up_down=_bernoulli(count, hyp["flipud"], generator),
        flip_left_right=_bernoulli(count, hyp["fliplr"], generator),
    )


def warp_matrices(warps: WarpDraws, canvas_sizes: torch.Tensor, output_size: int) -> torch.Tensor:
    """(n, 3, 3) float64 canvas -> output pixel maps: translate @ shear @ rotate+scale @ perspective @ centre.

    ``canvas_sizes`` (n,) is each square canvas's side (2S for a mosaic, S for a letterboxed image). This is the
    composition of ``utils.data.augment._perspective_matrix``, with cv2.getRotationMatrix2D written out.
    """
    count, options = len(canvas_sizes), {"dtype": torch.float64, "device": canvas_sizes.device}

    def identities() -> torch.Tensor:
        return torch.eye(3, **options).repeat(count, 1, 1)

    centre, perspective, rotation, shear, translation = (identities() for _ in range(5))
    centre[:, 0, 2] = centre[:, 1, 2] = -canvas_sizes.to(torch.float64) / 2
    perspective[:, 2, :2] = warps.perspective
    radians = warps.angle * (math.pi / 180)
    cosine, sine = warps.scale * torch.cos(radians), warps.scale * torch.sin(radians)
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cosine, sine, -sine, cosine
    shear_tangent = torch.tan(warps.shear * (math.pi / 180))
    shear[:, 0, 1], shear[:, 1, 0] = shear_tangent[:, 0], shear_tangent[:, 1]
    translation[:, :2, 2] = warps.translation * output_size
    return translation @ shear @ rotation @ perspective @ centre
