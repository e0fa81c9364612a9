"""Boxes through a batch of perspective warps in torch: corners, exact clipped extents, yolov5's survival rule."""

from __future__ import annotations

import torch

from utils.boxes import box_candidates


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(n, 4) xyxy -> (n, 4, 2) corners, going round the box."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2, y1, x2, y2, x1, y2], -1).view(-1, 4, 2)


def warp_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Points (n, k, 2) through one 3x3 matrix each (n, 3, 3), with the perspective divide -> (n, k, 2)."""
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ matrices.transpose(1, 2)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def _contains(polygons: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Whether each closed polygon (n, k, 2) contains the point (x, y): odd ray crossings -> (n,) bool."""
    start, end = polygons, polygons.roll(-1, dims=1)
    straddles = (start[..., 1] > y) != (end[..., 1] > y)
    rise = torch.where(straddles, end[..., 1] - start[..., 1], torch.ones_like(start[..., 1]))
    crossing_x = start[..., 0] + (y - start[..., 1]) * (end[..., 0] - start[..., 0]) / rise
    return ((straddles & (x < crossing_x)).sum(1) % 2) == 1


def polygon_extents(polygons: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Exact xyxy extent of the part of each closed polygon (n, k, 2) inside the image -> (n, 4); zeros if none.

    The torch twin of ``utils.data.augment.polygon_extents``: each edge is clipped to the image (Liang-Barsky), so a
    rotated box cut by the border gets the box of its visible part, not the clipped box of its corners.
    """
    start = polygons.double()
    delta = start.roll(-1, dims=1) - start
    t_low, t_high = torch.zeros_like(start[..., 0]), torch.ones_like(start[..., 0])
    rejected = torch.zeros_like(t_low, dtype=torch.bool)
    for axis, limit in ((0, width), (1, height)):
        for p, q in ((-delta[..., axis], start[..., axis]), (delta[..., axis], limit - start[..., axis])):
            ratio = q / torch.where(p == 0, torch.ones_like(p), p)
            rejected |= (p == 0) & (q < 0)
            t_low = torch.where(p < 0, torch.maximum(t_low, ratio), t_low)
            t_high = torch.where(p > 0, torch.minimum(t_high, ratio), t_high)
    inside = ~rejected & (t_low <= t_high)
    points = torch.cat([start + t_low[..., None] * delta, start + t_high[..., None] * delta], 1)
    valid = torch.cat([inside, inside], 1)[..., None]
    low = torch.where(valid, points, torch.inf).amin(1)
    high = torch.where(valid, points, -torch.inf).amax(1)
    extents = torch.cat([low, high], 1).to(polygons.dtype)
    visible = valid.any(1).squeeze(1)
    extents = torch.where(visible[:, None], extents, torch.zeros_like(extents))
    whole_image = torch.tensor([0.0, 0.0, width, height], dtype=extents.dtype, device=extents.device)
    covering = ~visible & _contains(start, width / 2, height / 2)  # the object covers the whole image
    return torch.where(covering[:, None], whole_image, extents)


def warp_boxes(
    boxes: torch.Tensor, matrices: torch.Tensor, scales: torch.Tensor, output_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel xyxy boxes (n, 4) on their canvas through their own matrix (n, 3, 3) -> (boxes in the S x S output,
    keep mask). ``scales`` (n,) is each warp's random scale, against which box_candidates measures area loss."""
    if not len(boxes):
        return boxes.new_zeros((0, 4)), torch.zeros(0, dtype=torch.bool, device=boxes.device)
    corners = warp_points(box_corners(boxes.double()), matrices.double())
    warped = polygon_extents(corners, output_size, output_size).to(boxes.dtype)
    keep = box_candidates(boxes * scales[:, None], warped)
    return warped, keep
