"""The synthetic panoptic dataset in the exact COCO-panoptic layout (the Cityscapes-layout twin is
in :mod:`effm2f.data.synthetic_cityscapes`).

The embedded default of the pipeline: small images with stuff regions (sky, grass, water, and
void patches) and several overlapping thing instances of three shapes, each class with its own
colour, so that a small model learns them on a CPU in minutes. Everything is a pure function of the
seed: image ``i`` of a split is drawn from ``numpy.random.default_rng((seed, split, i))``.

COCO layout (under ``root``)::

    train2017/000000000001.jpg ...            val2017/...
    panoptic_train2017/000000000001.png ...   panoptic_val2017/...
    annotations/panoptic_train2017.json       annotations/panoptic_val2017.json
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from effm2f.config import ConfigError
from effm2f.data.metadata import SYNTHETIC
from effm2f.data.panoptic import id_to_rgb
from effm2f.data.util import build_atomically

SPLIT_CODES = {"train": 0, "val": 1}
THING_KINDS = {1: "disc", 2: "square", 3: "triangle"}
SKY, GRASS, WATER = 10, 11, 12
MIN_VISIBLE = 24
"""Fewest visible pixels a thing keeps after occlusion (else it is not placed)."""


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and content of the synthetic COCO-format dataset (defaults: the embedded ones)."""

    num_train: int = 300
    num_val: int = 50
    height: int = 128
    width: int = 128
    seed: int = 0
    min_things: int = 2
    max_things: int = 5
    crowd_prob: float = 0.1
    void_prob: float = 0.3
    water_prob: float = 0.5
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not 1 <= self.min_things <= self.max_things:
            raise ConfigError("synthetic data: need 1 <= min_things <= max_things")
        if min(self.height, self.width) < 32:
            raise ConfigError("synthetic data: images must be at least 32x32")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One painted region; shapes are painted in list order, later ones on top.

    ``kind`` and ``params`` (pixel units, x = column, y = row; a pixel (y, x) is covered when):
        rect (x0, y0, x1, y1): x0 <= x < x1 and y0 <= y < y1;
        disc (cx, cy, r): (x - cx)**2 + (y - cy)**2 <= r**2;
        square (cx, cy, h): |x - cx| <= h and |y - cy| <= h;
        triangle (cx, cy, h): apex (cx, cy - h), base y = cy + h: cy - h <= y <= cy + h and
            |x - cx| <= (y - cy + h) / 2.
    ``segment_id`` 0 paints void.
    """

    kind: str
    params: tuple[float, ...]
    category_id: int
    segment_id: int
    iscrowd: int = 0


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (each H x W float64) of every pixel."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return y, x


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """Boolean H x W mask of the pixels ``shape`` covers (see :class:`Shape`)."""
    y, x = _grid(height, width)
    p = shape.params
    if shape.kind == "rect":
        return (x >= p[0]) & (x < p[2]) & (y >= p[1]) & (y < p[3])
    if shape.kind == "disc":
        return (x - p[0]) ** 2 + (y - p[1]) ** 2 <= p[2] ** 2
    if shape.kind == "square":
        return (np.abs(x - p[0]) <= p[2]) & (np.abs(y - p[1]) <= p[2])
    if shape.kind == "triangle":
        inside_rows = (y >= p[1] - p[2]) & (y <= p[1] + p[2])
        return inside_rows & (np.abs(x - p[0]) <= (y - p[1] + p[2]) / 2)
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def paint(shapes: Iterable[Shape], height: int, width: int) -> np.ndarray:
    """Segment-id map (H x W int64) of ``shapes`` painted in order over void (0)."""
    ids = np.zeros((height, width), dtype=np.int64)
    for shape in shapes:
        ids[shape_mask(shape, height, width)] = shape.segment_id
    return ids


def _segment_ids(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` distinct random segment ids in [1, 2**24), so all three PNG channels get used."""
    ids: list[int] = []
    while len(ids) < n:
        candidate = int(rng.integers(1, 2**24))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _stuff_shapes(cfg: SyntheticConfig, rng: np.random.Generator, ids: list[int]) -> list[Shape]:
    """Sky above a random horizon, grass below, maybe a water pond, maybe a void patch."""
    h, w = cfg.height, cfg.width
    horizon = int(rng.integers(h // 4, 3 * h // 5))
    shapes = [Shape("rect", (0, 0, w, horizon), SKY, ids.pop()),
              Shape("rect", (0, horizon, w, h), GRASS, ids.pop())]
    if rng.random() < cfg.water_prob:
        x0 = int(rng.integers(0, w // 2))
        y0 = int(rng.integers(horizon + 2, max(horizon + 3, h - h // 6)))
        shapes.append(Shape("rect", (x0, y0, int(x0 + rng.integers(w // 4, w // 2)), h),
                            WATER, ids.pop()))
    if rng.random() < cfg.void_prob:
        x0, y0 = int(rng.integers(0, w - w // 8)), int(rng.integers(0, h - h // 8))
        shapes.append(Shape("rect", (x0, y0, x0 + w // 8, y0 + h // 8), 0, 0))
    return shapes


def _random_thing(cfg: SyntheticConfig, rng: np.random.Generator, seg_id: int,
                  near: Shape | None) -> Shape:
    """A thing of random class and size; next to ``near`` (to make overlaps) when given."""
    side = min(cfg.height, cfg.width)
    size = float(rng.uniform(0.06, 0.22) * side)
    if near is not None:
        angle = rng.uniform(0, 2 * np.pi)
        cx = near.params[0] + np.cos(angle) * (near.params[2] + size) * 0.7
        cy = near.params[1] + np.sin(angle) * (near.params[2] + size) * 0.7
    else:
        cx, cy = rng.uniform(0.1, 0.9) * cfg.width, rng.uniform(0.15, 0.9) * cfg.height
    category = int(rng.choice(sorted(THING_KINDS)))
    params = (round(float(cx), 2), round(float(cy), 2), round(size, 2))
    return Shape(THING_KINDS[category], params, category, seg_id)


def _accepts(ids: np.ndarray, areas: dict[int, int]) -> bool:
    """True when every thing (segment id -> full area) keeps MIN_VISIBLE pixels and a quarter of
    its own area visible in the segment map ``ids``."""
    for seg_id, full in areas.items():
        visible = int((ids == seg_id).sum())
        if visible < MIN_VISIBLE or visible * 4 < full:
            return False
    return True


def sample_scene(cfg: SyntheticConfig, split: str, index: int) -> list[Shape]:
    """The shapes of image ``index`` of ``split``, a pure function of ``cfg.seed``.

    Things are placed one by one; a placement that would hide too much of an earlier thing (or
    of itself, at the border) is redrawn, so every thing of the scene stays visible.
    """
    rng = np.random.default_rng((cfg.seed, SPLIT_CODES[split], index))
    ids = _segment_ids(rng, 3 + cfg.max_things)
    shapes = _stuff_shapes(cfg, rng, ids)
    seg_map = paint(shapes, cfg.height, cfg.width)
    things: list[Shape] = []
    areas: dict[int, int] = {}
    for _ in range(int(rng.integers(cfg.min_things, cfg.max_things + 1))):
        seg_id = ids.pop()
        for _attempt in range(12):
            near = things[-1] if things and rng.random() < 0.6 else None
            candidate = _random_thing(cfg, rng, seg_id, near)
            mask = shape_mask(candidate, cfg.height, cfg.width)
            trial = np.where(mask, seg_id, seg_map)
            trial_areas = {**areas, seg_id: int(mask.sum())}
            if _accepts(trial, trial_areas):
                things.append(candidate)
                seg_map, areas = trial, trial_areas
                break
    if things and rng.random() < cfg.crowd_prob:
        things[-1] = dataclasses.replace(things[-1], iscrowd=1)
    return shapes + things


def render_image(shapes: list[Shape], cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """The RGB image (H x W x 3 uint8) of a scene: textured stuff, colour-coded things."""
    h, w = cfg.height, cfg.width
    colors = {c.id: np.array(c.color, dtype=np.float64) for c in SYNTHETIC.categories}
    rows = np.linspace(-1, 1, h)[:, None, None]
    cols = np.arange(w)[None, :, None]
    texture = {
        SKY: colors[SKY] + 40 * rows * np.ones((1, w, 1)),
        GRASS: colors[GRASS] + 25 * np.sin(cols * 0.9)[..., :1] * np.ones((h, 1, 1)),
        WATER: colors[WATER] + 30 * np.sin(rows * 40) * np.ones((1, w, 1)),
    }
    image = np.full((h, w, 3), 60.0)
    image += rng.normal(0, 25, size=(h, w, 1))
    for shape in shapes:
        mask = shape_mask(shape, h, w)
        if shape.category_id in texture:
            image[mask] = texture[shape.category_id][mask]
        elif shape.category_id in colors:
            image[mask] = colors[shape.category_id] + rng.normal(0, 12, size=3)
        else:  # void: grey noise
            image[mask] = 60.0 + rng.normal(0, 25, size=(int(mask.sum()), 1))
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, width, height] of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def segments_info(shapes: list[Shape], ids: np.ndarray) -> list[dict]:
    """The ``segments_info`` of a scene (visible, non-void segments only)."""
    info = []
    for shape in shapes:
        mask = ids == shape.segment_id
        if shape.segment_id and mask.any():
            info.append({"id": shape.segment_id, "category_id": shape.category_id,
                         "iscrowd": shape.iscrowd, "bbox": _bbox(mask), "area": int(mask.sum())})
    return info


def image_id_for(cfg: SyntheticConfig, split: str, index: int) -> int:
    """COCO-style image id: unique across splits (train first, then val), starting at 1."""
    return 1 + index + (cfg.num_train if split == "val" else 0)


def _write_coco_image(cfg: SyntheticConfig, split: str, index: int,
                      root: Path) -> tuple[dict, dict]:
    """Write image and panoptic PNG of one sample; return its ``images``/``annotations`` entries."""
    shapes = sample_scene(cfg, split, index)
    rng = np.random.default_rng((cfg.seed, SPLIT_CODES[split], index, 1))
    ids = paint(shapes, cfg.height, cfg.width)
    image_id = image_id_for(cfg, split, index)
    stem = f"{image_id:012d}"
    Image.fromarray(render_image(shapes, cfg, rng)).save(
        root / f"{split}2017" / f"{stem}.jpg", quality=cfg.jpeg_quality)
    Image.fromarray(id_to_rgb(ids)).save(root / f"panoptic_{split}2017" / f"{stem}.png")
    image = {"id": image_id, "file_name": f"{stem}.jpg", "height": cfg.height, "width": cfg.width}
    annotation = {"image_id": image_id, "file_name": f"{stem}.png",
                  "segments_info": segments_info(shapes, ids)}
    return image, annotation


def _write_coco_split(cfg: SyntheticConfig, split: str, root: Path, progress: bool) -> None:
    count = cfg.num_train if split == "train" else cfg.num_val
    for folder in (f"{split}2017", f"panoptic_{split}2017", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, leave=False):
        image, annotation = _write_coco_image(cfg, split, index, root)
        images.append(image)
        annotations.append(annotation)
    data = {"info": {"description": "effm2f synthetic panoptic dataset", "seed": cfg.seed},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": SYNTHETIC.coco_categories()}
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))


def generate_coco(root: str | Path, cfg: SyntheticConfig = SyntheticConfig(), *,
                  prepare: bool = True, workers: int | None = 1, overwrite: bool = False,
                  progress: bool = True) -> bool:
    """Write the synthetic dataset in the COCO-panoptic layout at ``root``.

    With ``prepare`` the derived files (semantic PNGs, instance JSON) are made too, before the
    folder gets its final name. Returns False when ``root`` already exists (nothing is done).
    """
    from effm2f.data.prepare_coco import prepare_coco

    def write(tmp: Path) -> None:
        for split in ("train", "val"):
            _write_coco_split(cfg, split, tmp, progress)
        if prepare:
            prepare_coco(tmp, ("train", "val"), metadata=SYNTHETIC, workers=workers,
                         progress=progress)

    return build_atomically(root, write, overwrite=overwrite)
