"""GpuBatchAugmenter: boxes stay on their objects, draws follow the CPU pipeline's laws, batches are reproducible."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.rectangles import (
    COLOUR_TOLERANCE,
    COLOURS,
    assert_box_bounds_mask,
    assert_boxes_on_objects,
    rectangles_image,
)
from utils.boxes import box_candidates, xywhn2xyxy
from utils.data.augment import (
    _perspective_matrix,
    augment_hsv,
    mosaic4,
    polygon_extents,
    random_perspective,
)
from utils.data.dataset import YoloDataset
from utils.data.gpu_augment import (
    GpuAugmentLoader,
    GpuBatchAugmenter,
    batch_generator,
    box_warp,
    draw_plan,
    pack_images,
)
from utils.data.gpu_augment.draws import BatchPlan, WarpDraws, draw_beta, draw_warps, warp_matrices
from utils.data.gpu_augment.pixels import adjust_hsv
from utils.data.image_cache import ImageCache
from utils.data.labels import LabeledSplit, ScanReport, scan_split

SIZE = 96
SHAPES = [(72, 96), (96, 72), (96, 96), (60, 96)]  # (h, w), long side SIZE as ImageCache stores them
OBJECTS_PER_IMAGE = 3
NO_AUGMENT = dict.fromkeys(
    ["hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr",
     "mosaic", "mixup", "copy_paste"], 0.0,
)  # fmt: skip
COLOUR_SAFE_OPS = {  # geometry that keeps edges axis-aligned, so colour extents are exact
    "letterbox": {},
    "translate": {"translate": 0.3},
    "scale": {"scale": 0.5},
    "flips": {"fliplr": 0.5, "flipud": 0.5},
    "mosaic": {"mosaic": 1.0},
    "mosaic-scale-translate-flip": {"mosaic": 1.0, "scale": 0.5, "translate": 0.2, "fliplr": 0.5, "flipud": 0.5},
}
TILTING_OPS = {  # edges tilt: check each box against its object's own anti-aliased mask
    "degrees": {"degrees": 40.0},
    "shear": {"shear": 10.0},
    "perspective": {"perspective": 0.001},
    "all": {"degrees": 30.0, "translate": 0.2, "scale": 0.5, "shear": 5.0, "perspective": 0.0005},
}
FULL_HYP = {
    "mosaic": 1.0,
    "mixup": 0.5,
    "degrees": 10.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 2.0,
    "perspective": 0.0005,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "flipud": 0.3,
    "fliplr": 0.5,
}
MASK_BACKGROUND = 114  # equal to the padding, so coverage is (value - 114) / (255 - 114) everywhere


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on shared cores a second intra-op thread makes every op wait for it (~100x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _object_boxes(height: int) -> list[tuple[int, int, int, int]]:
    return [(6, 8, 34, 30), (44, 36, 66, 58), (14, height - 26, 36, height - 6)]


def _scene() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """4 BGR images of 3 rectangles; class = colour, unique in the scene, so a class names its source image."""
    images, labels = [], []
    for index, (height, width) in enumerate(SHAPES):
        classes = [OBJECTS_PER_IMAGE * index + k for k in range(OBJECTS_PER_IMAGE)]
        image, image_labels = rectangles_image(height, width, _object_boxes(height), classes)
        images.append(image)
        labels.append(image_labels)
    return images, labels


def _augmenter(hyp: dict, images: list[np.ndarray] | None = None, labels: list[np.ndarray] | None = None,
               seed: int = 0, storage: str = "auto") -> GpuBatchAugmenter:  # fmt: skip
    scene_images, scene_labels = _scene()
    images = scene_images if images is None else images
    labels = scene_labels if labels is None else labels
    buffer, sizes = pack_images(lambda index: images[index], len(images), SIZE)
    return GpuBatchAugmenter(buffer, sizes, labels, SIZE, {**NO_AUGMENT, **hyp}, storage=storage, seed=seed)


def _bgr(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.numpy().transpose(1, 2, 0)[:, :, ::-1])


def _pixel_boxes(targets: torch.Tensor) -> np.ndarray:
    return xywhn2xyxy(targets[:, 2:].numpy(), SIZE, SIZE)


@pytest.mark.parametrize("op", COLOUR_SAFE_OPS, ids=list(COLOUR_SAFE_OPS))
@pytest.mark.parametrize("seed", [0, 1])
def test_boxes_bound_their_coloured_objects(op: str, seed: int) -> None:
    images, targets = _augmenter(COLOUR_SAFE_OPS[op]).batch([0, 1, 2, 3, 1, 2], batch_generator(seed, 0, 0))
    assert len(targets) >= 6
    for index in range(len(images)):
        rows = targets[targets[:, 0] == index]
        if len(rows):
            assert_boxes_on_objects(_bgr(images[index]), _pixel_boxes(rows), rows[:, 1].numpy())


def _masked_scene(cls: int) -> list[np.ndarray]:
    """The scene with only object ``cls`` at full brightness on a padding-grey background."""
    masks = []
    for index, (height, width) in enumerate(SHAPES):
        mask = np.full((height, width, 3), MASK_BACKGROUND, np.uint8)
        if cls // OBJECTS_PER_IMAGE == index:
            x1, y1, x2, y2 = _object_boxes(height)[cls % OBJECTS_PER_IMAGE]
            mask[y1:y2, x1:x2] = 255
        masks.append(mask)
    return masks


@pytest.mark.parametrize("op", TILTING_OPS, ids=list(TILTING_OPS))
@pytest.mark.parametrize("mosaic", [0.0, 1.0], ids=["letterbox", "mosaic"])
def test_tilted_boxes_bound_their_object_masks(op: str, mosaic: float) -> None:
    """Render the same plan once per object with only that object lit, and hold its box to that mask."""
    hyp = {**TILTING_OPS[op], "mosaic": mosaic}
    augmenter = _augmenter(hyp)
    plan = augmenter.plan([0, 1, 2, 3], batch_generator(0, 0, 0))
    plan.tiles[plan.mosaic] = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])[plan.mosaic]
    _, targets = augmenter.render(plan)
    assert len(targets) >= 4
    for cls in targets[:, 1].unique().int().tolist():
        masked = _augmenter(hyp, images=_masked_scene(cls))
        lit, _ = masked.render(plan)
        for item, _, *box in targets[targets[:, 1] == cls].tolist():
            value = lit[int(item), 0].numpy().astype(np.float32)
            coverage = ((value - MASK_BACKGROUND) * 255 / (255 - MASK_BACKGROUND)).clip(0, 255).astype(np.uint8)
            assert_box_bounds_mask(xywhn2xyxy(np.array(box, np.float32), SIZE, SIZE), coverage)


def test_no_augmentation_equals_the_cpu_dataset(tmp_path: Path) -> None:
    """With every hyp at 0 (and with forced flips) the batch is YoloDataset's letterboxed items, pixel for pixel."""
    images, labels = _scene()
    files = []
    for index, (image, image_labels) in enumerate(zip(images, labels)):
        files.append(tmp_path / "images" / f"{index}.png")
        files[-1].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(files[-1]), image)
        (tmp_path / "labels").mkdir(exist_ok=True)
        rows = "".join(f"{int(r[0])} {r[1]:.8f} {r[2]:.8f} {r[3]:.8f} {r[4]:.8f}\n" for r in image_labels)
        (tmp_path / "labels" / f"{index}.txt").write_text(rows)
    split = scan_split(files, num_classes=12, name="scene", use_cache=False)
    for flips in ({}, {"fliplr": 1.0, "flipud": 1.0}):
        hyp = {**NO_AUGMENT, **flips}
        cpu = YoloDataset.collate_fn([YoloDataset(split, SIZE, hyp, augment=True)[i] for i in range(4)])
        gpu = GpuBatchAugmenter.from_split(split, SIZE, hyp, image_cache=ImageCache(split, SIZE, "ram"))
        images_gpu, targets_gpu = gpu.batch([0, 1, 2, 3], batch_generator(0, 0, 0))
        torch.testing.assert_close(images_gpu, cpu[0], rtol=0, atol=0)
        torch.testing.assert_close(targets_gpu, cpu[1], rtol=0, atol=1e-5)


def test_mosaic_boxes_come_from_their_tiles_with_their_class() -> None:
    augmenter = _augmenter({"mosaic": 1.0, "mixup": 0.5, "scale": 0.3, "translate": 0.1})
    for batch_index in range(3):
        plan = augmenter.plan([0, 1, 2, 3, 0, 1], batch_generator(0, 0, batch_index))
        _, targets = augmenter.render(plan)
        assert len(targets)
        for item in range(plan.batch_size):
            warps = [item] + [plan.batch_size + k for k, parent in enumerate(plan.mixup_parent) if parent == item]
            shown = {OBJECTS_PER_IMAGE * int(image) + k for image in plan.tiles[warps].flatten()
                     for k in range(OBJECTS_PER_IMAGE)}  # fmt: skip
            assert set(targets[targets[:, 0] == item, 1].int().tolist()) <= shown


def _without_mixup(plan: BatchPlan) -> BatchPlan:
    """The same batch with the second mosaics dropped: what it looks like when the mixup draws all fail."""
    count = plan.batch_size
    return dataclasses.replace(plan, tiles=plan.tiles[:count], mosaic=plan.mosaic[:count],
                               centres=plan.centres[:count], warps=plan.warps.select(slice(0, count)),
                               mixup_parent=plan.mixup_parent[:0], mixup_ratio=plan.mixup_ratio[:0])  # fmt: skip


def test_mixup_blends_near_half_and_keeps_both_label_sets() -> None:
    white = [np.full((height, width, 3), 250, np.uint8) for height, width in SHAPES]
    plain = _augmenter({"mosaic": 1.0}, images=white)
    mixed = _augmenter({"mosaic": 1.0, "mixup": 1.0}, images=white)
    plan = mixed.plan([0, 1, 2, 3], batch_generator(0, 0, 0))
    assert plan.mixup_parent.tolist() == [0, 1, 2, 3] and (plan.mixup_ratio - 0.5).abs().max() < 0.25
    images, targets = mixed.render(plan)
    _, plain_targets = plain.render(_without_mixup(plan))
    assert len(targets) > len(plain_targets)
    for item in range(4):
        own = plain_targets[plain_targets[:, 0] == item]
        torch.testing.assert_close(targets[targets[:, 0] == item][: len(own)], own)
    for item, ratio in enumerate(plan.mixup_ratio.tolist()):  # each pixel blends image or padding from each mosaic
        blends = torch.tensor([250.0, 114.0, 250 * ratio + 114 * (1 - ratio), 114 * ratio + 250 * (1 - ratio)])
        assert ((images[item].float()[..., None] - blends).abs().min(-1).values <= 1).all()


def test_identity_keeps_every_box_and_far_translation_drops_some() -> None:
    _, labels = _scene()
    _, targets = _augmenter({}).batch([0, 1, 2, 3], batch_generator(0, 0, 0))
    assert len(targets) == sum(len(image_labels) for image_labels in labels)
    counts = [len(_augmenter({"translate": 0.9}).batch([0, 1, 2, 3], batch_generator(s, 0, 0))[1]) for s in range(4)]
    assert min(counts) < len(targets)


def test_visible_objects_keep_their_boxes_in_a_mosaic() -> None:
    """Every object at least half visible in the output crop has a box (box_candidates only drops slivers)."""
    images, targets = _augmenter({"mosaic": 1.0}).batch([0, 1, 2, 3], batch_generator(0, 0, 0))
    for index in range(len(images)):
        image = _bgr(images[index]).astype(np.int32)
        classes = set(targets[targets[:, 0] == index, 1].int().tolist())
        for cls in range(len(SHAPES) * OBJECTS_PER_IMAGE):
            pixels = (np.abs(image - COLOURS[cls].astype(np.int32)).max(-1) <= COLOUR_TOLERANCE).sum()
            x1, y1, x2, y2 = _object_boxes(SHAPES[cls // OBJECTS_PER_IMAGE][0])[cls % OBJECTS_PER_IMAGE]
            if pixels >= 0.5 * (x2 - x1) * (y2 - y1):
                assert cls in classes, f"item {index}: class {cls} shows {pixels} px but has no box"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10]),
        ([0, 0, 10, 10], [0, 0, 1.5, 10]),
        ([0, 0, 100, 100], [0, 0, 300, 2.5]),
        ([0, 0, 100, 100], [0, 0, 30, 30]),
        ([0, 0, 100, 100], [0, 0, 40, 40]),
    ],
)
def test_box_candidates_agree_with_the_cpu_rule(before: list[float], after: list[float]) -> None:
    cpu = box_candidates(np.array([before], float), np.array([after], float))
    gpu = box_candidates(torch.tensor([before], dtype=torch.float64), torch.tensor([after]).double())
    assert gpu.tolist() == cpu.tolist()


def test_polygon_extents_agree_with_the_cpu_clip() -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform(-20, 120, (300, 1, 2))
    angles = rng.uniform(0, np.pi, (300, 1)) + np.arange(4) * np.pi / 2
    radii = rng.uniform(5, 200, (300, 1))
    polygons = centres + radii[..., None] * np.stack([np.cos(angles), np.sin(angles)], -1)
    cpu = polygon_extents(polygons, 100, 80)
    gpu = box_warp.polygon_extents(torch.from_numpy(polygons), 100, 80).numpy()
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


class ScriptedRng:
    """Stands in for numpy's Generator in mosaic4 and random_perspective: ``uniform`` returns scripted values."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def uniform(self, low: float, high: float, size: int | None = None) -> float | np.ndarray:
        values = np.array([self.values.pop(0) for _ in range(1 if size is None else size)])
        assert ((low <= values) & (values <= high)).all(), f"scripted {values} outside [{low}, {high}]"
        return values[0] if size is None else values


def _cpu_script(warps: WarpDraws, row: int) -> list[float]:
    """The values _perspective_matrix draws, in its order, for warp ``row``."""
    return [*warps.perspective[row].tolist(), warps.angle[row].item(), warps.scale[row].item(),
            *warps.shear[row].tolist(), *warps.translation[row].tolist()]  # fmt: skip


def test_warp_matrix_is_the_cpu_composition() -> None:
    """Same parameters -> the same matrix as utils.data.augment._perspective_matrix, term by term."""
    hyp = {"degrees": 30.0, "translate": 0.2, "scale": 0.5, "shear": 5.0, "perspective": 0.001}
    warps = draw_warps(1, hyp, torch.Generator().manual_seed(0))
    cpu, cpu_scale = _perspective_matrix((2 * SIZE, 2 * SIZE), (SIZE, SIZE), ScriptedRng(_cpu_script(warps, 0)), hyp)
    gpu = warp_matrices(warps, torch.tensor([2 * SIZE]), SIZE)[0].numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)
    assert warps.scale.item() == pytest.approx(cpu_scale)


@pytest.mark.parametrize("seed", [0, 1])
def test_mosaic_warp_matches_cpu_mosaic4_then_random_perspective(seed: int) -> None:
    """The fused sampler equals cv2 warping mosaic4's canvas with the same centre and parameters."""
    hyp = {**NO_AUGMENT, **TILTING_OPS["all"], "mosaic": 1.0}
    augmenter = _augmenter(hyp)
    plan = augmenter.plan([0], batch_generator(seed, 0, 0))
    plan.tiles[0] = torch.tensor([seed, 3, 1, 2])
    images, labels = _scene()
    order = plan.tiles[0].tolist()
    rng = ScriptedRng([value + 0.5 for value in plan.centres[0].tolist()] + _cpu_script(plan.warps, 0))
    canvas, canvas_labels, _ = mosaic4([images[i] for i in order], [labels[i] for i in order], [[]] * 4, SIZE, rng)
    border = -(SIZE // 2)
    cpu_image, cpu_labels, _ = random_perspective(canvas, canvas_labels, [], rng, hyp, border=(border, border))
    gpu_images, gpu_targets = augmenter.render(plan)
    difference = np.abs(_bgr(gpu_images[0]).astype(np.int32) - cpu_image.astype(np.int32))
    assert difference.mean() < 0.2 and difference.max() <= 8  # cv2 interpolates in 1/32 px steps
    assert len(cpu_labels) >= 3 and gpu_targets[:, 1].tolist() == cpu_labels[:, 0].tolist()
    np.testing.assert_allclose(_pixel_boxes(gpu_targets), cpu_labels[:, 1:], atol=0.01)


def _assert_same_law(cpu: np.ndarray, gpu: np.ndarray, name: str, tail: float | None = 0.05) -> None:
    """Equal quantiles, mean, spread and (for bounded laws, given ``tail``) range, in units of the CPU draws' spread.

    Both samples hold a few thousand draws, so the tolerances are several standard errors wide.
    """
    spread = max(np.quantile(cpu, 0.95) - np.quantile(cpu, 0.05), 1e-12)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(np.quantile(gpu, q) - np.quantile(cpu, q)) < 0.05 * spread, f"{name}: quantile {q}"
    assert abs(gpu.mean() - cpu.mean()) < 0.04 * spread, f"{name}: mean"
    assert abs(gpu.std() / max(cpu.std(), 1e-12) - 1) < 0.06, f"{name}: standard deviation"
    if tail is not None:
        assert abs(gpu.min() - cpu.min()) < tail * spread, f"{name}: minimum"
        assert abs(gpu.max() - cpu.max()) < tail * spread, f"{name}: maximum"


DRAWS = 3000
WARP_HYPS = {
    "scratch-low": {"degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0, "perspective": 0.0},
    "all": {"degrees": 30.0, "translate": 0.2, "scale": 0.9, "shear": 8.0, "perspective": 0.0008},
}


@pytest.mark.parametrize("hyp_name", WARP_HYPS)
def test_warp_draws_follow_the_cpu_law(hyp_name: str) -> None:
    """Every entry of the mosaic warp matrix has the CPU pipeline's distribution (and so do the scales)."""
    hyp, rng = WARP_HYPS[hyp_name], np.random.default_rng(0)
    cpu = [_perspective_matrix((2 * SIZE, 2 * SIZE), (SIZE, SIZE), rng, hyp) for _ in range(DRAWS)]
    cpu_matrices, cpu_scales = np.stack([matrix for matrix, _ in cpu]), np.array([scale for _, scale in cpu])
    warps = draw_warps(DRAWS, hyp, torch.Generator().manual_seed(0))
    gpu_matrices = warp_matrices(warps, torch.full((DRAWS,), 2 * SIZE), SIZE).numpy()
    _assert_same_law(cpu_scales, warps.scale.numpy(), "scale", tail=0.02)
    for row in range(3):
        for column in range(3):
            if cpu_matrices[:, row, column].std() > 0:
                _assert_same_law(cpu_matrices[:, row, column], gpu_matrices[:, row, column], f"M[{row},{column}]", 0.1)
            else:
                np.testing.assert_allclose(gpu_matrices[:, row, column], cpu_matrices[0, row, column], atol=1e-9)


def test_mosaic_centre_follows_the_cpu_law() -> None:
    """The CPU centre is read off mosaic4's canvas: tile 0 (solid, S x S) ends at it."""
    solid = [np.full((32, 32, 3), 10 * (k + 1), np.uint8) for k in range(4)]
    no_labels = [np.zeros((0, 5), np.float32)] * 4
    cpu = []
    for seed in range(1000):
        canvas = mosaic4(solid, no_labels, [[]] * 4, 32, np.random.default_rng(seed))[0]
        ys, xs = np.nonzero(canvas[..., 0] == 10)
        cpu.append([xs.max() + 1, ys.max() + 1])
    plan = draw_plan(torch.zeros(1000, dtype=torch.long), 4, 32, {**NO_AUGMENT, "mosaic": 1.0}, True, torch.Generator())
    cpu, gpu = np.array(cpu, float), plan.centres.numpy().astype(float)
    for axis in range(2):
        _assert_same_law(cpu[:, axis], gpu[:, axis], f"centre {axis}")


def test_mixup_ratio_follows_the_cpu_beta() -> None:
    rng = np.random.default_rng(0)
    _assert_same_law(rng.beta(32.0, 32.0, DRAWS), draw_beta(DRAWS, torch.Generator().manual_seed(0)).numpy(), "beta",
                     tail=None)  # fmt: skip


@pytest.mark.parametrize("key", ["hsv_h", "hsv_s", "hsv_v"])
def test_hsv_gains_follow_the_cpu_law(key: str) -> None:
    """One pixel through augment_hsv (BGR, 8-bit LUTs) and adjust_hsv: the output colours share their law."""
    hyp, bgr = {**NO_AUGMENT, key: 0.6}, np.array([[[60, 120, 200]]], np.uint8)
    cpu = np.stack([augment_hsv(bgr, np.random.default_rng(s), hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])[0, 0, ::-1]
                    for s in range(1500)]).astype(float)  # fmt: skip
    plan = draw_plan(torch.zeros(1500, dtype=torch.long), 1, 1, hyp, False, torch.Generator().manual_seed(0))
    rgb = torch.tensor(bgr[0, 0, ::-1].copy(), dtype=torch.float32).expand(1500, 1, 3)
    gpu = adjust_hsv(rgb, plan.hsv_gains.float())[:, 0].round().numpy()
    for channel in range(3):
        if cpu[:, channel].std() > 0:
            _assert_same_law(cpu[:, channel], gpu[:, channel], f"{key} channel {channel}", tail=0.08)


@pytest.mark.parametrize(("key", "field"), [("flipud", "flip_up_down"), ("fliplr", "flip_left_right"),
                                            ("mosaic", "mosaic")])  # fmt: skip
@pytest.mark.parametrize("probability", [0.0, 0.3, 1.0])
def test_draw_rates_match_their_probability(key: str, field: str, probability: float) -> None:
    """The CPU pipeline's ``rng.random() < p``: the rate is p within 4 binomial standard deviations."""
    plan = draw_plan(torch.arange(4000) % 4, 4, SIZE, {**NO_AUGMENT, key: probability}, True,
                     torch.Generator().manual_seed(1))  # fmt: skip
    rate = getattr(plan, field)[:4000].double().mean().item()
    assert abs(rate - probability) <= 4 * (probability * (1 - probability) / 4000) ** 0.5 + 1e-12


def test_mixup_only_follows_mosaic_with_its_probability() -> None:
    hyp = {**NO_AUGMENT, "mosaic": 0.5, "mixup": 0.4}
    plan = draw_plan(torch.zeros(4000, dtype=torch.long), 7, SIZE, hyp, True, torch.Generator().manual_seed(2))
    parents = plan.mixup_parent
    assert plan.mosaic[parents].all()
    assert abs(len(parents) / plan.mosaic[:4000].sum().item() - 0.4) < 0.04
    partners = plan.tiles[plan.mosaic][:, 1:].flatten().double()
    assert partners.min() == 0 and partners.max() == 6 and abs(partners.mean().item() - 3) < 0.1


def test_closed_mosaic_draws_no_mosaic_and_a_new_run_reopens_it() -> None:
    augmenter = _augmenter({"mosaic": 1.0, "mixup": 1.0})
    augmenter.close_mosaic()
    plan = augmenter.plan([0, 1, 2, 3], batch_generator(0, 0, 0))
    assert not plan.mosaic.any() and not len(plan.mixup_parent)
    child = augmenter.with_hyp({**NO_AUGMENT, "mosaic": 1.0}, seed=4)
    assert child.images is augmenter.images and child.labels is augmenter.labels and child.seed == 4
    assert child.plan([0, 1], batch_generator(0, 0, 0)).mosaic.all() and not augmenter.use_mosaic


def test_seed_epoch_and_batch_index_reproduce_a_batch() -> None:
    """The same generator seed gives the same batch, whether images are read in place or copied per batch."""
    augmenter = _augmenter(FULL_HYP)
    first = augmenter.batch([3, 1, 2, 0], batch_generator(5, 2, 7))
    again = _augmenter(FULL_HYP, storage="host").batch([3, 1, 2, 0], batch_generator(5, 2, 7))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for other in (batch_generator(6, 2, 7), batch_generator(5, 3, 7), batch_generator(5, 2, 8)):
        assert not torch.equal(first[0], augmenter.batch([3, 1, 2, 0], other)[0])


def test_epochs_are_reproducible_and_differ() -> None:
    augmenter = _augmenter(FULL_HYP, seed=3)
    loader = GpuAugmentLoader(augmenter, batch_size=3)
    assert len(loader) == 2
    first, again = list(loader), list(loader)
    for (images_a, targets_a, paths_a, _), (images_b, targets_b, paths_b, _) in zip(first, again):
        assert paths_a == paths_b and torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b)
    assert sorted(path for batch in first for path in batch[2]) == ["0", "1", "2", "3"]
    augmenter.set_epoch(1)
    assert not torch.equal(first[0][0], next(iter(loader))[0])


@pytest.mark.parametrize("hyp", [{}, {"mosaic": 1.0}, FULL_HYP, {**FULL_HYP, "mixup": 1.0}],
                         ids=["letterbox", "mosaic", "full", "mixup"])  # fmt: skip
def test_batch_contract(hyp: dict) -> None:
    images, targets = _augmenter(hyp).batch([0, 1, 2, 3, 2], batch_generator(0, 0, 0))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, SIZE, SIZE) and images.is_contiguous()
    assert targets.dtype == torch.float32 and targets.shape[1] == 6 and len(targets)
    assert targets[:, 0].tolist() == sorted(targets[:, 0].tolist()) and set(targets[:, 0].tolist()) <= set(range(5))
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 4:] > 0).all()
    assert (targets[:, 1] == targets[:, 1].round()).all() and (targets[:, 1] < 12).all()


@pytest.mark.parametrize("hyp", [{}, FULL_HYP], ids=["letterbox", "full"])
def test_images_without_labels(hyp: dict) -> None:
    images, labels = _scene()
    labels = [labels[0], np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), labels[3]]
    augmenter = _augmenter(hyp, labels=labels)
    empty_images, empty_targets = augmenter.batch([1, 2], batch_generator(0, 0, 0))
    assert empty_images.shape == (2, 3, SIZE, SIZE) and empty_targets.dtype == torch.float32
    if not hyp.get("mosaic"):  # a mosaic may bring in labelled partners
        assert empty_targets.shape == (0, 6)
    _, mixed_targets = augmenter.batch([0, 1, 2, 3], batch_generator(0, 0, 0))
    assert set(mixed_targets[:, 1].int().tolist()) <= {0, 1, 2, 9, 10, 11}
    no_labels = _augmenter(hyp, labels=[np.zeros((0, 5), np.float32)] * 4)
    assert no_labels.batch([0, 1, 2, 3], batch_generator(0, 0, 0))[1].shape == (0, 6)


@pytest.mark.parametrize(("copy_paste", "with_segments", "supported"), [(0.1, True, False), (0.0, True, True),
                                                                      (0.1, False, True)])  # fmt: skip
def test_supports_only_box_pipelines(copy_paste: float, with_segments: bool, supported: bool) -> None:
    polygon = np.array([[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]], np.float32)
    split = LabeledSplit([Path("a.png")], [np.zeros((1, 5), np.float32)], [[polygon] if with_segments else []],
                         np.array([[64, 64]]), ScanReport())  # fmt: skip
    assert GpuBatchAugmenter.supports({"copy_paste": copy_paste}, split) == supported


def test_images_must_have_the_cached_long_side() -> None:
    with pytest.raises(ValueError, match="long side"):
        pack_images(lambda index: np.zeros((50, 60, 3), np.uint8), 1, SIZE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_matches_the_cpu_batch() -> None:
    images, labels = _scene()
    buffer, sizes = pack_images(lambda index: images[index], len(images), SIZE)
    cpu = GpuBatchAugmenter(buffer, sizes, labels, SIZE, {**NO_AUGMENT, **FULL_HYP})
    gpu = GpuBatchAugmenter(buffer, sizes, labels, SIZE, {**NO_AUGMENT, **FULL_HYP}, device="cuda")
    cpu_images, cpu_targets = cpu.batch([0, 1, 2, 3], batch_generator(0, 0, 0))
    gpu_images, gpu_targets = gpu.batch([0, 1, 2, 3], batch_generator(0, 0, 0))
    assert gpu_images.is_cuda and gpu_targets.is_cuda
    assert (gpu_images.cpu().int() - cpu_images.int()).abs().max() <= 1
    torch.testing.assert_close(gpu_targets.cpu(), cpu_targets, rtol=0, atol=1e-4)
