"""Panoptic quality (PQ, SQ, RQ) from predictions written in the COCO panoptic format.

:class:`COCOPanopticEvaluator` writes every prediction as a standard COCO panoptic result (one PNG
per image with segment id ``R + 256 G + 256^2 B``, and a JSON listing each image's segments with
their *dataset* category ids), then scores those files against the ground-truth JSON and PNG
folder. The per-image segment matching is cityscapesScripts' COCO-format panoptic evaluator
(``evalPanopticSemanticLabeling.pq_compute_single_core``, the panopticapi algorithm: a match is a
same-category pair with IoU > 0.5, crowd ground truth is never matched, the void and same-class
crowd pixels are left out of the union, and an unmatched prediction lying more than half on void
or same-class crowd is not a false positive). It runs per image, so that per-image PQ comes with
the dataset PQ; its ``PQStat`` sums the counts and its ``pq_average`` averages over categories
(:func:`pq_percent`).

Per-image PQ is the PQ of the image evaluated alone: for each category with at least one true
positive, false positive or false negative *in that image* (i.e. present in its non-crowd ground
truth or in its predictions that are not ignored as void/crowd), ``PQ_c = sum IoU / (TP + FP/2 +
FN/2)``, and the image's PQ is the mean of ``PQ_c`` over those categories (NaN if there are none).
This is exactly the dataset PQ formula restricted to one image.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_panoptic
from tqdm import tqdm

from effm2f.data.metadata import DatasetMetadata
from effm2f.data.panoptic import id_to_rgb
from effm2f.evaluation.evaluator import DatasetEvaluator, Metrics, Table, check_size, to_numpy
from effm2f.evaluation.files import StagedFolder, quiet_stdout, save_png
from effm2f.io import write_json_atomic

log = logging.getLogger(__name__)

PRED_JSON = "panoptic_predictions.json"
PRED_FOLDER = "panoptic_predictions"


def pq_percent(stat: cs_panoptic.PQStat, categories: Mapping[int, Mapping[str, Any]],
               isthing: bool | None = None) -> tuple[float, float, float]:
    """Mean ``(PQ, SQ, RQ)`` in percent over the counted categories (some TP, FP or FN).

    cityscapesScripts' ``PQStat.pq_average`` (panopticapi's): ``PQ_c = sum IoU / (TP + FP/2 +
    FN/2)``, ``SQ_c = sum IoU / TP`` (0 without TP), ``RQ_c = TP / (TP + FP/2 + FN/2)``.

    Args:
        stat: matching counts per category id (dataset or single image).
        categories: category id -> ground-truth JSON category (``isthing``); only these count.
        isthing: only thing (True) or stuff (False) categories; None: all.

    Returns:
        NaN where no category counts (``pq_average`` would divide by zero).
    """
    try:
        means, _ = stat.pq_average(categories, isthing=isthing)
    except ZeroDivisionError:
        return math.nan, math.nan, math.nan
    return float(100 * means["pq"]), float(100 * means["sq"]), float(100 * means["rq"])


def summarize(stat: cs_panoptic.PQStat,
              categories: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    """PQ, SQ, RQ (percent) over all, thing and stuff categories, as panopticapi averages them.

    Returns:
        ``PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st``; NaN where no category counts.
    """
    out: dict[str, float] = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        pq, sq, rq = pq_percent(stat, categories, isthing)
        out.update({f"PQ{suffix}": pq, f"SQ{suffix}": sq, f"RQ{suffix}": rq})
    return out


def image_counts(pair: tuple[dict, dict], *, gt_folder: str, pred_folder: str,
                 categories: Mapping[int, dict]) -> cs_panoptic.PQStat:
    """Match the segments of one image with cityscapesScripts' panoptic evaluator.

    Args:
        pair: ``(ground-truth annotation, predicted annotation)`` in the COCO panoptic format.
        gt_folder, pred_folder: folders of their PNGs.
        categories: category id -> category of the ground-truth JSON.

    Returns:
        The image's counts per category id.
    """
    gt_ann, pred_ann = pair
    pred_ann = copy.deepcopy(pred_ann)  # the library writes each segment's area into it
    with quiet_stdout():
        return cs_panoptic.pq_compute_single_core(0, [(gt_ann, pred_ann)], gt_folder,
                                                  pred_folder, categories)


def count_images(pairs: Sequence[tuple[dict, dict]], *, gt_folder: str | Path,
                 pred_folder: str | Path, categories: Mapping[int, dict], workers: int = 1,
                 progress: bool = True) -> list[cs_panoptic.PQStat]:
    """:func:`image_counts` of every pair, in order, over ``workers`` processes."""
    task = functools.partial(image_counts, gt_folder=str(gt_folder), pred_folder=str(pred_folder),
                             categories=dict(categories))
    bar = functools.partial(tqdm, total=len(pairs), desc="PQ", disable=not progress, leave=False)
    workers = max(1, min(workers, len(pairs)))
    if workers == 1:
        return list(bar(map(task, pairs)))
    chunksize = max(1, min(32, len(pairs) // (workers * 4)))
    with multiprocessing.Pool(workers) as pool:
        return list(bar(pool.imap(task, pairs, chunksize=chunksize)))


def default_workers() -> int:
    """The CPUs this process may run on (respects Slurm's and taskset's CPU masks)."""
    return len(os.sched_getaffinity(0))


def per_class_rows(stat: cs_panoptic.PQStat,
                   categories: Mapping[int, Mapping[str, Any]]) -> Table:
    """One row per category: id, name, isthing, PQ/SQ/RQ (percent; NaN if absent), TP/FP/FN."""
    rows = []
    for category_id, info in categories.items():
        pq, sq, rq = pq_percent(stat, {category_id: info})
        c = stat[category_id]
        rows.append({"category_id": category_id, "name": info.get("name", str(category_id)),
                     "isthing": int(bool(info["isthing"])), "PQ": pq, "SQ": sq, "RQ": rq,
                     "TP": c.tp, "FP": c.fp, "FN": c.fn})
    return rows


def per_image_rows(annotations: Sequence[dict], per_image: Sequence[cs_panoptic.PQStat],
                   categories: Mapping[int, Mapping[str, Any]]) -> Table:
    """One row per image: its PQ evaluated alone (see the module docstring) and its counts."""
    rows = []
    for ann, stat in zip(annotations, per_image, strict=True):
        summary = summarize(stat, categories)
        counted = [c for c in stat.pq_per_cat.values() if c.tp + c.fp + c.fn]
        rows.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                     **{k: summary[k] for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")},
                     "num_categories": len(counted), "TP": sum(c.tp for c in counted),
                     "FP": sum(c.fp for c in counted), "FN": sum(c.fn for c in counted)})
    return rows


def pair_annotations(gt: Mapping[str, Any], predictions: Sequence[dict]) -> list[tuple[dict, dict]]:
    """``(ground truth, prediction)`` per predicted image, in prediction order.

    Raises:
        ValueError: for a prediction of an image that the ground truth does not list, or two
            predictions of one image.
    """
    by_id = {ann["image_id"]: ann for ann in gt["annotations"]}
    seen: set = set()
    pairs = []
    for pred in predictions:
        image_id = pred["image_id"]
        if image_id not in by_id:
            raise ValueError(f"prediction for image {image_id!r} which the ground truth lacks")
        if image_id in seen:
            raise ValueError(f"two predictions for image {image_id!r}")
        seen.add(image_id)
        pairs.append((by_id[image_id], pred))
    if len(pairs) < len(by_id):
        log.warning("panoptic evaluation on %d of the %d ground-truth images", len(pairs),
                    len(by_id))
    return pairs


class COCOPanopticEvaluator(DatasetEvaluator):
    """PQ / SQ / RQ (all, things, stuff), per-class PQ and per-image PQ.

    Predictions are written to ``output_dir/panoptic_predictions/<image stem>.png`` and
    ``output_dir/panoptic_predictions.json`` (the PNG folder is staged and renamed when complete;
    the JSON is written atomically), then evaluated against the ground truth.

    Args:
        metadata: the label set (maps the predicted train ids back to dataset category ids).
        gt_json: the ground-truth COCO panoptic JSON (its ``categories`` define what is scored).
        gt_folder: the folder of the ground-truth panoptic PNGs.
        output_dir: where the predictions are written.
        workers: processes for the matching (default: the CPUs this process may use).
        progress: show a progress bar.
    """

    task = "panoptic_seg"

    def __init__(self, *, metadata: DatasetMetadata, gt_json: str | Path, gt_folder: str | Path,
                 output_dir: str | Path, workers: int | None = None, progress: bool = True) -> None:
        self.metadata = metadata
        self.gt_json = Path(gt_json)
        self.gt_folder = Path(gt_folder)
        self.output_dir = Path(output_dir)
        self.workers = workers if workers is not None else default_workers()
        self.progress = progress
        self._staging: StagedFolder | None = None
        self._predictions: list[dict] = []
        self._tables: dict[str, Table] = {}

    @property
    def pred_json(self) -> Path:
        """The predictions JSON (COCO panoptic results format)."""
        return self.output_dir / PRED_JSON

    @property
    def pred_folder(self) -> Path:
        """The folder of the prediction PNGs."""
        return self.output_dir / PRED_FOLDER

    def reset(self) -> None:
        if self._staging is not None:
            self._staging.discard()
        self._staging = None
        self._predictions = []
        self._tables = {}

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        if self._staging is None:
            if self._predictions:
                raise RuntimeError("call reset() before processing a new evaluation")
            self._staging = StagedFolder(self.pred_folder)
        for item, output in zip(inputs, outputs, strict=True):
            self._predictions.append(self._write(item, *output["panoptic_seg"]))

    def _write(self, item: Mapping[str, Any], panoptic_seg: Any,
               segments_info: Sequence[Mapping[str, Any]]) -> dict:
        """Write one image's prediction PNG; return its COCO panoptic annotation."""
        ids = to_numpy(panoptic_seg).astype(np.int64)
        check_size(ids, item, "panoptic_seg")
        file_name = f"{Path(item['file_name']).stem}.png"
        path = self._staging.path / file_name
        if path.exists():
            raise ValueError(f"two images write the prediction {file_name}")
        save_png(id_to_rgb(ids), path)
        return {"image_id": item["image_id"], "file_name": file_name,
                "segments_info": self._segments(ids, segments_info, item["image_id"])}

    def _segments(self, ids: np.ndarray, segments_info: Sequence[Mapping[str, Any]],
                  image_id: Any) -> list[dict]:
        """The segments present in ``ids``, with dataset category ids."""
        present = {int(i) for i in np.unique(ids)} - {0}
        listed = {int(s["id"]) for s in segments_info}
        if present - listed:
            raise ValueError(f"image {image_id!r}: segment ids {sorted(present - listed)} are in "
                             f"panoptic_seg but not in segments_info")
        out = []
        for s in segments_info:
            if int(s["id"]) in present:
                train_id = int(s["category_id"])
                out.append({"id": int(s["id"]),
                            "category_id": self.metadata.train_id_to_id[train_id],
                            "isthing": train_id in self.metadata.thing_train_ids})
        return out

    def evaluate(self) -> Metrics:
        if not self._predictions:
            raise ValueError("COCOPanopticEvaluator.evaluate: no image was processed")
        if self._staging is not None:  # not yet committed by an earlier evaluate()
            self._staging.commit()
            self._staging = None
        write_json_atomic(self.pred_json, {"annotations": self._predictions,
                                           "categories": self.metadata.coco_categories()})
        gt = json.loads(self.gt_json.read_text())
        categories = {int(c["id"]): c for c in gt["categories"]}
        pairs = pair_annotations(gt, self._predictions)
        per_image = count_images(pairs, gt_folder=self.gt_folder, pred_folder=self.pred_folder,
                                 categories=categories, workers=self.workers,
                                 progress=self.progress)
        total = cs_panoptic.PQStat()
        for stat in per_image:
            total += stat
        self._tables = {
            "pq_per_class": per_class_rows(total, categories),
            "pq_per_image": per_image_rows(self._predictions, per_image, categories),
        }
        return {self.task: summarize(total, categories)}

    def tables(self) -> dict[str, Table]:
        return self._tables
