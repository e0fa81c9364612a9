"""Batched pixel ops in torch: mosaic + perspective warp in one bilinear pass, HSV gains, flips.

Images here are channels-last: a batch is (b, S, S, 3) RGB, so one pixel is one row of 3 values to gather.
"""

from __future__ import annotations

import torch

from utils.data.augment import PAD_VALUE

TILE_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))  # bilinear neighbours (dx, dy)
WARPS_PER_CHUNK = 16  # at 640 px a chunk's index tensors take about half a GB


def tile_offsets(centres: torch.Tensor, tile_sizes: torch.Tensor, mosaic: torch.Tensor, img_size: int) -> torch.Tensor:
    """Canvas position (x, y) of each tile image's top-left pixel -> (w, 4, 2) long.

    A mosaic places tile 0 above-left of the centre, 1 above-right, 2 below-left, 3 below-right (``mosaic4``).
    A letterboxed warp has its centre at (0, 0), so every canvas pixel falls in tile 3, placed like ``letterbox``
    places the image: ``floor`` of half the padding on the top-left side.
    """
    heights, widths = tile_sizes.unbind(-1)  # (w, 4) each
    left_of_centre = torch.tensor([True, False, True, False], device=centres.device)  # tiles 0 and 2
    above_centre = torch.tensor([True, True, False, False], device=centres.device)  # tiles 0 and 1
    offset_x = torch.where(left_of_centre, centres[:, 0:1] - widths, centres[:, 0:1])
    offset_y = torch.where(above_centre, centres[:, 1:2] - heights, centres[:, 1:2])
    letterbox_x, letterbox_y = (img_size - widths[:, 3]) // 2, (img_size - heights[:, 3]) // 2
    offset_x[~mosaic, 3], offset_y[~mosaic, 3] = letterbox_x[~mosaic], letterbox_y[~mosaic]
    return torch.stack([offset_x, offset_y], -1)


def _tile_bounds(layout: dict[str, torch.Tensor], img_size: int) -> torch.Tensor:
    """Per warp and tile: canvas x_low, y_low, x_high, y_high of the tile image and the row of its canvas pixel
    (0, 0) in the flattened sources -> (w, 4, 5) long, so one gather finds all five for a pixel's tile."""
    x_low, y_low = layout["offsets"].unbind(-1)
    heights, widths = layout["tile_sizes"].unbind(-1)
    origin_row = layout["slots"] * img_size * img_size - y_low * img_size - x_low
    return torch.stack([x_low, y_low, x_low + widths, y_low + heights, origin_row], -1)


def _source_rows(
    canvas_x: torch.Tensor, canvas_y: torch.Tensor, layout: dict[str, torch.Tensor], bounds: torch.Tensor,
    img_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Row of the flattened sources that integer canvas pixel (x, y) (w, P) shows, and whether it shows one
    (outside every tile it shows the padding) -> (rows (w, P) long, valid (w, P) bool)."""
    canvas = layout["canvas_sizes"][:, None]
    inside = (canvas_x >= 0) & (canvas_y >= 0) & (canvas_x < canvas) & (canvas_y < canvas)
    tile = (canvas_x >= layout["centres"][:, 0:1]).long() + 2 * (canvas_y >= layout["centres"][:, 1:2]).long()
    x_low, y_low, x_high, y_high, origin_row = bounds.gather(1, tile[..., None].expand(-1, -1, 5)).unbind(-1)
    valid = inside & (canvas_x >= x_low) & (canvas_y >= y_low) & (canvas_x < x_high) & (canvas_y < y_high)
    return torch.where(valid, origin_row + canvas_y * img_size + canvas_x, 0), valid


def _canvas_points(inverse: torch.Tensor, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas (x, y) that each output pixel maps to, (w, P) each, kept finite and far out where undefined."""
    axis = torch.arange(img_size, device=inverse.device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([grid_x.flatten(), grid_y.flatten(), torch.ones_like(grid_x.flatten())])  # (3, P)
    mapped = inverse.float() @ points  # (w, 3, P)
    depth = mapped[:, 2]
    safe_depth = torch.where(depth.abs() > 1e-9, depth, torch.full_like(depth, 1e-9))
    limit = 4.0 * img_size  # beyond any canvas, and small enough to convert to integers
    canvas_x = (mapped[:, 0] / safe_depth).nan_to_num(limit).clamp(-limit, limit)
    canvas_y = (mapped[:, 1] / safe_depth).nan_to_num(limit).clamp(-limit, limit)
    return canvas_x, canvas_y


def warp_tiles(
    sources: torch.Tensor, layout: dict[str, torch.Tensor], inverse: torch.Tensor, img_size: int
) -> torch.Tensor:
    """Render each warp's canvas through its perspective matrix into an S x S float image -> (w, S * S, 3).

    ``sources`` (K, S, S, 3) uint8 holds the images, each top-left aligned in its S x S slot.
    ``layout`` gives per warp: ``slots`` (w, 4) source of each tile, ``tile_sizes`` (w, 4, 2) (h, w),
    ``offsets`` (w, 4, 2) from ``tile_offsets``, ``centres`` (w, 2) and ``canvas_sizes`` (w,).
    ``inverse`` (w, 3, 3) maps output pixels to canvas pixels. The canvas is never built: each output pixel
    reads its 4 bilinear neighbours straight from the tile they fall in, so it equals cv2.warpPerspective of the
    mosaic canvas (integer coordinates are pixel centres, PAD_VALUE outside) without a 2S x 2S copy.
    Warps go ``WARPS_PER_CHUNK`` at a time to bound the index tensors' memory.
    """
    rows = sources.reshape(-1, 3)
    output = torch.empty((len(inverse), img_size * img_size, 3), dtype=torch.float32, device=sources.device)
    for start in range(0, len(inverse), WARPS_PER_CHUNK):
        chunk = slice(start, start + WARPS_PER_CHUNK)
        chunk_layout = {name: value[chunk] for name, value in layout.items()}
        canvas_x, canvas_y = _canvas_points(inverse[chunk], img_size)
        left, top = canvas_x.floor(), canvas_y.floor()
        fraction_x, fraction_y = canvas_x - left, canvas_y - top
        left, top = left.long(), top.long()
        bounds = _tile_bounds(chunk_layout, img_size)
        padding_weight = torch.zeros_like(fraction_x)
        for corner, (dx, dy) in enumerate(TILE_CORNERS):
            weight = (fraction_x if dx else 1 - fraction_x) * (fraction_y if dy else 1 - fraction_y)
            neighbour, valid = _source_rows(left + dx, top + dy, chunk_layout, bounds, img_size)
            contribution = (weight * valid)[..., None] * rows[neighbour].float()
            output[chunk] = contribution if corner == 0 else output[chunk] + contribution
            padding_weight += weight * ~valid
        output[chunk] += padding_weight[..., None] * PAD_VALUE
    return output


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB in [0, 1] -> (..., 3) HSV, all in [0, 1] (hue 1 = 360 degrees)."""
    value, largest = rgb.max(-1)
    delta = value - rgb.min(-1).values
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    red, green, blue = rgb.unbind(-1)
    safe_delta = delta.clamp_min(1e-12)
    hue = torch.where(
        largest == 0,
        ((green - blue) / safe_delta) % 6,
        torch.where(largest == 1, (blue - red) / safe_delta + 2, (red - green) / safe_delta + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], -1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(..., 3) HSV in [0, 1] -> (..., 3) RGB in [0, 1]."""
    hue, saturation, value = hsv.unbind(-1)
    channels = []
    for shift in (5.0, 3.0, 1.0):  # red, green, blue
        k = (shift + hue * 6) % 6
        ramp = torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp_min(0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, -1)


def adjust_hsv(images: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Multiply hue (mod 1), saturation and value of float RGB images (b, ..., 3) in [0, 255] by ``gains`` (b, 3).

    The same gains as ``utils.data.augment.augment_hsv`` applies through its lookup tables, without the 8-bit steps.
    """
    shape = (len(images),) + (1,) * (images.dim() - 2)
    hsv = rgb_to_hsv(images / 255)
    hue = (hsv[..., 0] * gains[:, 0].view(shape)) % 1
    saturation = (hsv[..., 1] * gains[:, 1].view(shape)).clamp(0, 1)
    value = (hsv[..., 2] * gains[:, 2].view(shape)).clamp(0, 1)
    return hsv_to_rgb(torch.stack([hue, saturation, value], -1)) * 255


def flip_images(images: torch.Tensor, up_down: torch.Tensor, left_right: torch.Tensor) -> torch.Tensor:
    """Flip the chosen images of a channels-last batch (b, H, W, 3) up-down and/or left-right.

    The choices (b,) bool may live on the CPU: they are only read there to skip a flip nobody drew.
    """
    if up_down.any():
        images = torch.where(up_down.to(images.device)[:, None, None, None], images.flip(1), images)
    if left_right.any():
        images = torch.where(left_right.to(images.device)[:, None, None, None], images.flip(2), images)
    return images
