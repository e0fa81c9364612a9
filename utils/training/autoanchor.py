"""AutoAnchor: measure how well the anchors fit the labels, and refit them with k-means plus a genetic search."""

from __future__ import annotations

import logging

import numpy as np
import torch

from utils.data.labels import MIN_BOX_PIXELS

LOGGER = logging.getLogger(__name__)

RECALL_TARGET = 0.98  # below this best possible recall the anchors are refitted
SCALE_JITTER = (0.9, 1.1)  # yolov5's random rescale of label sizes before measuring recall
MUTATION_PROBABILITY = 0.9
MUTATION_SIGMA = 0.1
# Seeded subsamples bound the run time on large datasets; a few thousand boxes pin down 9 anchors well.
MAX_KMEANS_BOXES = 5_000
MAX_FIT_BOXES = 10_000


def _best_ratio(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(n, k): for each box and anchor, the worse of the two side ratios, folded into (0, 1]."""
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-sized placeholder anchors give 0 / 0
        # one side at a time: numpy reduces over a length-2 axis far slower than it compares two arrays
        sides = [
            np.minimum(wh[:, side, None], anchors[None, :, side])
            / np.maximum(wh[:, side, None], anchors[None, :, side])
            for side in (0, 1)
        ]
        return np.nan_to_num(np.minimum(*sides))


def best_possible_recall(
    anchors_pixels: np.ndarray | torch.Tensor, wh: np.ndarray, anchor_t: float
) -> tuple[float, float]:
    """(fraction of boxes that some anchor can match, mean number of anchors each box matches).

    A box matches an anchor when neither side differs by more than ``anchor_t`` times, as in the loss.
    """
    anchors = torch.as_tensor(anchors_pixels).detach().cpu().numpy().reshape(-1, 2).astype(np.float64)
    fit = _best_ratio(anchors, np.asarray(wh, dtype=np.float64).reshape(-1, 2))
    if fit.shape[0] == 0:
        return 0.0, 0.0
    bpr = float((fit.max(1) > 1 / anchor_t).mean())
    anchors_above_threshold = float((fit > 1 / anchor_t).sum(1).mean())
    return bpr, anchors_above_threshold


def _anchor_fitness(anchors: np.ndarray, wh: np.ndarray, anchor_t: float) -> float:
    best = _best_ratio(anchors, wh).max(1)
    return float((best * (best > 1 / anchor_t)).mean())


def _kmeans_init(wh: np.ndarray, n: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.cluster.vq import kmeans

    if len(wh) > MAX_KMEANS_BOXES:
        wh = wh[rng.choice(len(wh), MAX_KMEANS_BOXES, replace=False)]
    if n <= len(wh):
        std = wh.std(0)
        std[std == 0] = 1.0  # identical widths or heights would otherwise divide by zero when whitening
        centroids = kmeans(wh / std, n, iter=30, seed=rng)[0] * std
        if len(centroids) == n:
            return centroids
    # k-means drops empty clusters (or has too few boxes): start from random sizes instead
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def kmean_anchors(
    wh: np.ndarray, n: int, img_size: int, anchor_t: float, generations: int = 300, seed: int = 0
) -> np.ndarray:
    """Fit ``n`` anchors (pixels) to box sizes ``wh`` (m, 2): k-means, then a seeded genetic refinement.

    Returns (n, 2) float32 sorted by area, smallest first.
    """
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    wh = wh[(wh >= MIN_BOX_PIXELS).any(1)]
    if len(wh) > MAX_FIT_BOXES:
        wh = wh[rng.choice(len(wh), MAX_FIT_BOXES, replace=False)]
    anchors = _kmeans_init(wh, n, img_size, rng)
    fitness = _anchor_fitness(anchors, wh, anchor_t)
    for _ in range(generations):
        factor = np.ones(anchors.shape)
        while (factor == 1).all():  # redraw until at least one value mutates
            mutate = rng.random(anchors.shape) < MUTATION_PROBABILITY
            factor = (mutate * rng.random() * rng.standard_normal(anchors.shape) * MUTATION_SIGMA + 1).clip(0.3, 3.0)
        candidate = (anchors * factor).clip(min=MIN_BOX_PIXELS)
        candidate_fitness = _anchor_fitness(candidate, wh, anchor_t)
        if candidate_fitness > fitness:
            fitness, anchors = candidate_fitness, candidate
    return anchors[np.argsort(anchors.prod(1))].astype(np.float32)


def check_anchors(model: torch.nn.Module, wh: np.ndarray, anchor_t: float, img_size: int, seed: int = 0) -> bool:
    """Refit ``model.detect.anchors`` when their best possible recall on ``wh`` is under 0.98.

    ``wh``: (m, 2) label sizes in pixels at ``img_size`` (see ``utils.data.labels.label_sizes``). The new anchors
    are kept only if they recall more. Returns True when the anchors were replaced.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) == 0:
        LOGGER.info("autoanchor: no labels, keeping the current anchors")
        return False
    detect = model.detect
    stride = detect.stride.view(-1, 1, 1)
    rng = np.random.default_rng(seed)
    jittered = wh * rng.uniform(*SCALE_JITTER, size=(len(wh), 1))
    bpr, above = best_possible_recall(detect.anchors * stride, jittered, anchor_t)
    summary = f"autoanchor: {above:.2f} anchors/target, {bpr:.3f} best possible recall"
    if bpr > RECALL_TARGET:
        LOGGER.info(f"{summary}; current anchors are a good fit")
        return False
    new_anchors = kmean_anchors(wh, detect.anchors.numel() // 2, img_size, anchor_t, seed=seed)
    new_bpr, _ = best_possible_recall(new_anchors, jittered, anchor_t)
    if new_bpr <= bpr:
        LOGGER.info(f"{summary}; refitted anchors reach {new_bpr:.3f}, keeping the current ones")
        return False
    # sorted small to large, which matches the levels when strides increase (DetectionModel guarantees order)
    pixels = torch.as_tensor(new_anchors).to(detect.anchors).view_as(detect.anchors)
    if stride.flatten()[-1] < stride.flatten()[0]:
        pixels = pixels.flip(0)
    with torch.no_grad():
        detect.anchors.copy_(pixels / stride)
    LOGGER.info(f"{summary}; replaced anchors, new best possible recall {new_bpr:.3f}")
    return True
