"""Where each dataset's files are, and their reading into per-image records.

Two on-disk layouts, both as detectron2's Mask2Former expects them: the COCO-panoptic layout
(real COCO, and the synthetic dataset) and the Cityscapes layout (real Cityscapes, and its synthetic
twin). A dataset is a layout, a label set and a default root; one explicit mapping lists them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from effm2f.config import ConfigError
from effm2f.data.metadata import CITYSCAPES, COCO_PANOPTIC, SYNTHETIC, DatasetMetadata
from effm2f.data.panoptic import AnnotationError, check_files_exist, load_panoptic_json
from effm2f.data.prepare_cityscapes import IMAGE_SUFFIX, TRAIN_IDS_SUFFIX, cityscapes_paths
from effm2f.data.prepare_coco import coco_paths


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """The annotation files of one split (what loaders and evaluators read).

    Attributes:
        image_root: folder of the images.
        panoptic_json, panoptic_root: COCO-format panoptic annotations and their PNG folder.
        semseg_root: semantic train-id PNGs (COCO: panoptic_semseg_*; Cityscapes: gtFine/split,
            files ``*_gtFine_labelTrainIds.png`` in city folders).
        instances_json: COCO instance annotations for AP (None for Cityscapes).
    """

    image_root: Path
    panoptic_json: Path
    panoptic_root: Path
    semseg_root: Path
    instances_json: Path | None


@dataclasses.dataclass(frozen=True)
class PanopticRecord:
    """One annotated image.

    ``segments_info`` entries are the JSON's (``id``, ``category_id``, ``iscrowd``, ...) with
    ``train_id`` (contiguous) and ``isthing`` added; ``annotation_file`` is that JSON (named in
    errors).
    """

    image_id: int | str
    file_name: str
    pan_seg_file_name: str
    sem_seg_file_name: str
    height: int
    width: int
    segments_info: tuple[dict, ...]
    annotation_file: str = ""


def coco_split_files(root: str | Path, split: str) -> SplitFiles:
    """Files of split ``split`` ("train"/"val") of a COCO-layout dataset at ``root``."""
    p = coco_paths(Path(root), split)
    return SplitFiles(p["images"], p["panoptic_json"], p["panoptic_root"], p["semseg_root"],
                      p["instances_json"])


def cityscapes_split_files(root: str | Path, split: str) -> SplitFiles:
    """Files of split ``split`` of a Cityscapes-layout dataset at ``root``."""
    p = cityscapes_paths(root, split)
    return SplitFiles(p["images"], p["panoptic_json"], p["panoptic_root"], p["gt"], None)


def _segments(ann: dict, meta: DatasetMetadata) -> tuple[dict, ...]:
    return tuple(
        {**seg, "iscrowd": int(seg.get("iscrowd", 0)),
         "train_id": meta.id_to_train_id[seg["category_id"]],
         "isthing": meta.id_to_train_id[seg["category_id"]] in meta.thing_train_ids}
        for seg in ann["segments_info"]
    )


def coco_records(root: str | Path, split: str, meta: DatasetMetadata) -> list[PanopticRecord]:
    """Records of a COCO-layout split; the JSON is validated and every image must exist."""
    files = coco_split_files(root, split)
    data = load_panoptic_json(files.panoptic_json, category_ids=meta.id_to_train_id)
    images = {im["id"]: im for im in data["images"]}
    records = []
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        records.append(PanopticRecord(
            image_id=ann["image_id"], file_name=str(files.image_root / image["file_name"]),
            pan_seg_file_name=str(files.panoptic_root / ann["file_name"]),
            sem_seg_file_name=str(files.semseg_root / ann["file_name"]),
            height=image["height"], width=image["width"], segments_info=_segments(ann, meta),
            annotation_file=str(files.panoptic_json)))
    check_files_exist((Path(r.file_name) for r in records), what="image",
                      listed_in=files.panoptic_json)
    return records


def cityscapes_records(root: str | Path, split: str, meta: DatasetMetadata) -> list[PanopticRecord]:
    """Records of a Cityscapes-layout split (after :mod:`prepare_cityscapes`).

    The image of ``image_id`` X is ``leftImg8bit/{split}/{city}/X_leftImg8bit.png``, found by
    name (as detectron2 does), since the JSON does not say which city folder holds it.
    """
    files = cityscapes_split_files(root, split)
    data = load_panoptic_json(files.panoptic_json, category_ids=meta.id_to_train_id)
    by_id = {p.name.removesuffix(IMAGE_SUFFIX): p
             for p in files.image_root.glob(f"*/*{IMAGE_SUFFIX}")}
    images = {im["id"]: im for im in data["images"]}
    records = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        if image_id not in by_id:
            raise AnnotationError(
                f"missing image {image_id}{IMAGE_SUFFIX} under {files.image_root} "
                f"(listed in {files.panoptic_json})")
        path = by_id[image_id]
        sem = files.semseg_root / path.parent.name / f"{image_id}{TRAIN_IDS_SUFFIX}"
        records.append(PanopticRecord(
            image_id=image_id, file_name=str(path),
            pan_seg_file_name=str(files.panoptic_root / ann["file_name"]),
            sem_seg_file_name=str(sem), height=images[image_id]["height"],
            width=images[image_id]["width"], segments_info=_segments(ann, meta),
            annotation_file=str(files.panoptic_json)))
    return records


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its label set, its layout (split files and records) and its default root."""

    name: str
    metadata: DatasetMetadata
    split_files: Callable[[str | Path, str], SplitFiles]
    records: Callable[[str | Path, str, DatasetMetadata], list[PanopticRecord]]
    default_root: str


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("synthetic", SYNTHETIC, coco_split_files, coco_records,
                             "data/synthetic"),
    "coco": DatasetSpec("coco", COCO_PANOPTIC, coco_split_files, coco_records, "data/coco"),
    "cityscapes": DatasetSpec("cityscapes", CITYSCAPES, cityscapes_split_files,
                              cityscapes_records, "data/cityscapes"),
    "synthetic_cityscapes": DatasetSpec("synthetic_cityscapes", CITYSCAPES,
                                        cityscapes_split_files, cityscapes_records,
                                        "data/synthetic_cityscapes"),
}
"""Every dataset by name."""


def get_dataset(name: str) -> DatasetSpec:
    """The dataset ``name``; a clear error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})") from None


def split_fingerprint(name: str, split: str, root: str | Path | None = None) -> str:
    """A content hash of a split's annotations (its panoptic JSON): it changes when the data is
    regenerated or prepared again differently (another seed, size or number of images)."""
    spec = get_dataset(name)
    path = spec.split_files(root or spec.default_root, split).panoptic_json
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    except OSError as error:
        raise AnnotationError(f"cannot read the annotations of {name} {split}: {path} "
                              f"({error.strerror}); prepare the dataset first") from error


def load_records(name: str, split: str, root: str | Path | None = None) -> list[PanopticRecord]:
    """Records of ``split`` of dataset ``name`` (at ``root``, default its default root)."""
    spec = get_dataset(name)
    return spec.records(root or spec.default_root, split, spec.metadata)
