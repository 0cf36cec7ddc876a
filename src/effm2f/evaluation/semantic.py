"""Semantic segmentation: mIoU, fwIoU, mACC, pACC and per-class IoU from a confusion matrix.

The prediction is the per-pixel argmax of ``sem_seg`` (train ids); the ground truth is the
semantic PNG of train ids (``ignore_label`` = void, not counted). The averages follow detectron2's
``SemSegEvaluator``: a class enters mACC and mIoU only if it occurs in the ground truth of the
evaluated images (on a full validation split every class does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from effm2f.data.metadata import DatasetMetadata
from effm2f.data.panoptic import AnnotationError
from effm2f.evaluation.evaluator import DatasetEvaluator, Metrics, Table, check_size, to_numpy


def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as an ``(H, W)`` int64 array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise AnnotationError(f"{path}: expected a single-channel label PNG, got mode "
                                      f"{img.mode}")
            return np.asarray(img).astype(np.int64)
    except OSError as error:
        raise AnnotationError(f"cannot read label PNG {path}: {error}") from error


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """Confusion matrix of one image.

    Args:
        gt: ``(H, W)`` ground-truth train ids, ``ignore_label`` for void.
        pred: ``(H, W)`` predicted train ids in ``[0, num_classes)``.

    Returns:
        ``(K, K)`` int64 counts, rows = ground truth, columns = prediction.
    """
    valid = gt != ignore_label
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(f"ground-truth labels {np.unique(gt[bad]).tolist()} outside the "
                         f"{num_classes} classes and not {ignore_label}")
    index = gt[valid] * num_classes + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Summary scores (percent) and per-class IoU (percent, NaN for classes absent from the GT).

    Args:
        matrix: ``(K, K)`` confusion matrix, rows = ground truth.
    """
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix)
    pos_gt = matrix.sum(1)
    pos_pred = matrix.sum(0)
    in_gt = pos_gt > 0
    union = pos_gt + pos_pred - tp
    iou = np.full(len(tp), math.nan)
    iou[in_gt] = tp[in_gt] / union[in_gt]
    acc = tp[in_gt] / pos_gt[in_gt]
    total = pos_gt.sum()
    if total == 0:
        raise ValueError("no labelled ground-truth pixel in the evaluated images")
    summary = {"mIoU": 100.0 * float(iou[in_gt].mean()),
               "fwIoU": 100.0 * float((iou[in_gt] * pos_gt[in_gt]).sum() / total),
               "mACC": 100.0 * float(acc.mean()),
               "pACC": 100.0 * float(tp.sum() / total)}
    return summary, 100.0 * iou


class SemSegEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, mACC, pACC (percent) and per-class IoU over the train ids.

    Reads the ground truth from each item's ``sem_seg_file_name`` (train ids, void =
    ``metadata.ignore_label``).

    Args:
        metadata: the label set (number of classes, names, ignore label).
    """

    task = "sem_seg"

    def __init__(self, *, metadata: DatasetMetadata) -> None:
        self.metadata = metadata
        self._matrix = np.zeros((metadata.num_classes,) * 2, dtype=np.int64)
        self._tables: dict[str, Table] = {}

    def reset(self) -> None:
        self._matrix[:] = 0
        self._tables = {}

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            pred = to_numpy(output["sem_seg"].argmax(0)).astype(np.int64)
            check_size(pred, item, "sem_seg")
            gt = read_label_png(item["sem_seg_file_name"])
            if gt.shape != pred.shape:
                raise AnnotationError(f"{item['sem_seg_file_name']}: size {gt.shape} differs "
                                      f"from the image's {pred.shape}")
            try:
                self._matrix += confusion(gt, pred, self.metadata.num_classes,
                                          self.metadata.ignore_label)
            except ValueError as error:  # labels outside the label set: name the file
                raise AnnotationError(f"{item['sem_seg_file_name']}: {error}") from error

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``(K, K)`` counts accumulated so far (rows = ground truth, columns = prediction)."""
        return self._matrix.copy()

    def evaluate(self) -> Metrics:
        summary, iou = scores(self._matrix)
        self._tables = {"iou_per_class": [
            {"train_id": i, "category_id": c.id, "name": c.name, "IoU": float(iou[i])}
            for i, c in enumerate(self.metadata.categories)]}
        return {self.task: summary}

    def tables(self) -> dict[str, Table]:
        return self._tables
