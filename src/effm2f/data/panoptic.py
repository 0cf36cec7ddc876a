"""The COCO panoptic encoding and its annotation file: reading, validating, converting ids.

A panoptic PNG stores the segment id of every pixel as ``R + 256 * G + 256**2 * B`` (0 = void);
the JSON lists, per image, the segments (id, category, crowd flag). Every consumer (converters,
loaders) reads both through this module, so that a malformed file or a PNG that does not match its
JSON fails the same way everywhere: with an error that names the file and the segment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import rgb2id
from PIL import Image

from effm2f.errors import InputError


class AnnotationError(InputError, ValueError):
    """An annotation file or image is malformed, missing, or inconsistent; the message names it."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode a panoptic PNG array (H x W x 3 uint8) to segment ids (H x W int64).

    cityscapesScripts' ``rgb2id``: the decoder its PQ evaluator applies to the same files.
    """
    return rgb2id(rgb).astype(np.int64)  # int32 from rgb2id


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids (H x W, < 2**24) as a panoptic PNG array (H x W x 3 uint8)."""
    # Ours: cityscapesScripts ships no encoder, and transformers' id_to_rgb (panopticapi's, equal on
    # int64 ids) fails on uint8 id maps and would load torch into every data job (~4 s each).
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Segment ids (H x W int64) of a panoptic PNG; a missing or unreadable file is named."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"missing panoptic PNG {path}")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except OSError as error:
        raise AnnotationError(f"cannot read panoptic PNG {path}: {error}") from error
    return rgb_to_id(rgb)


def check_segments(ids: np.ndarray, segments: Iterable[Mapping[str, Any]], *, png: Path,
                   json_path: Path | str, image_id: Any) -> None:
    """Check that the non-void ids of a panoptic PNG are exactly the segments of its JSON entry.

    Raises:
        AnnotationError: naming the PNG, the JSON, the image and the first offending segment id.
    """
    in_png = {int(i) for i in np.unique(ids)} - {0}
    in_json = [int(s["id"]) for s in segments]
    for seg_id in sorted(in_png - set(in_json)):
        raise AnnotationError(
            f"{png}: segment id {seg_id} is in the PNG but not in segments_info of image "
            f"{image_id!r} in {json_path}"
        )
    for seg_id in in_json:
        if seg_id not in in_png:
            raise AnnotationError(
                f"{png}: segment id {seg_id} of image {image_id!r} in {json_path} "
                f"has no pixel in the PNG"
            )


def _require(entry: Any, keys: tuple[str, ...], *, where: str) -> None:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise AnnotationError(f"{where}: missing key {key!r}")


def _check_annotation(ann: Any, *, path: Path, images: set, categories: set, index: int) -> None:
    """Validate one entry of ``annotations`` (keys, known image and categories, unique ids)."""
    _require(ann, ("image_id", "file_name", "segments_info"), where=f"{path}: annotations[{index}]")
    where = f"{path}: image {ann['image_id']!r}"
    if ann["image_id"] not in images:
        raise AnnotationError(f"{where}: annotation for an image that is not in 'images'")
    seen: set[int] = set()
    for seg in ann["segments_info"]:
        _require(seg, ("id", "category_id"), where=f"{where}: segment {seg!r}")
        if not isinstance(seg["id"], int) or seg["id"] <= 0:
            raise AnnotationError(f"{where}: segment id {seg['id']!r} must be a positive integer")
        if seg["id"] in seen:
            raise AnnotationError(f"{where}: segment id {seg['id']} appears twice")
        seen.add(seg["id"])
        if seg["category_id"] not in categories:
            raise AnnotationError(
                f"{where}: segment {seg['id']} has unknown category_id {seg['category_id']!r}"
            )


def load_panoptic_json(path: str | Path, *, category_ids: Iterable[int] | None = None) -> dict:
    """Read and validate a COCO-panoptic JSON.

    Args:
        category_ids: the category ids a segment may use (default: those the file declares).

    Raises:
        AnnotationError: naming the file, and the image and segment where one is at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"missing annotation file {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path} is not valid JSON: {error}") from error
    _require(data, ("images", "annotations", "categories"), where=str(path))
    for i, image in enumerate(data["images"]):
        _require(image, ("id", "file_name", "height", "width"), where=f"{path}: images[{i}]")
    images = {image["id"] for image in data["images"]}
    for i, cat in enumerate(data["categories"]):
        _require(cat, ("id", "name"), where=f"{path}: categories[{i}]")
    known = {c["id"] for c in data["categories"]}
    categories = known if category_ids is None else set(category_ids)
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(ann, path=path, images=images, categories=categories, index=i)
    return data


def check_files_exist(paths: Iterable[Path], *, what: str, listed_in: Path | str) -> None:
    """Raise AnnotationError naming the first of ``paths`` that does not exist."""
    for path in paths:
        if not path.is_file():
            raise AnnotationError(f"missing {what} {path} (listed in {listed_in})")
