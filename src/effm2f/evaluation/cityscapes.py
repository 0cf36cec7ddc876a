"""Cityscapes metrics computed by cityscapesScripts' own evaluators.

- :class:`CityscapesSemSegEvaluator`: the predicted train ids are converted back to Cityscapes
  label ids and written as ``<stem>_pred.png``; ``evalPixelLevelSemanticLabeling`` scores them
  against ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (mIoU, iIoU, and the category
  averages).
- :class:`CityscapesInstanceEvaluator`: every thing instance is written as a binary mask PNG plus
  a line ``<mask> <label id> <score>`` in ``<stem>_pred.txt``; ``evalInstanceLevelSemanticLabeling``
  scores them against ``*_gtFine_instanceIds.png`` (AP, AP50).
- Panoptic quality on Cityscapes is :class:`effm2f.evaluation.panoptic.COCOPanopticEvaluator`
  against ``gtFine/cityscapes_panoptic_<split>.json``, whose matching is cityscapesScripts'
  ``evalPanopticSemanticLabeling``.

The scripts are configured here explicitly (their module-level defaults read
``CITYSCAPES_DATASET`` / ``CITYSCAPES_RESULTS`` at import; nothing here depends on those, and the
ground-truth instance cache goes to a fresh temporary folder, not into site-packages), run
quietly, and their ``sys.exit`` on bad input becomes a :class:`RuntimeError` with their message.

Two compatibility points with NumPy 2.4 (pinned: the Slurm executor plugin requires it), both
without changing what is computed:
- cityscapesScripts 2.3.0 calls ``numpy.in1d``, which NumPy 2.4 removed; while one of its
  evaluators runs, ``numpy.in1d`` is provided as its documented replacement
  ``np.isin(np.ravel(a), b)`` (only if numpy lacks it, and removed afterwards).
- the instance-level ``evaluateImgLists`` dumps its matches to ``./matches.json``, which fails on
  NumPy integers; its steps (ground-truth instances, matching, AP, averages) are called one by
  one instead, without that dump.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_instance
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_pixel
from cityscapesscripts.helpers.labels import id2label

from effm2f.data.metadata import DatasetMetadata
from effm2f.evaluation.evaluator import DatasetEvaluator, Metrics, Table, check_size, to_numpy
from effm2f.evaluation.files import StagedFolder, quiet_stdout, save_png
from effm2f.io import write_json_atomic

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"

_LOCK = threading.Lock()
"""The ``numpy.in1d`` shim and the stdout capture are process-wide: one evaluator at a time."""


def cityscapes_name(item: Mapping[str, Any]) -> tuple[str, str]:
    """``(city, stem)`` of an item whose image is ``.../<city>/<stem>_leftImg8bit.png``."""
    path = Path(item["file_name"])
    stem = path.name.removesuffix(IMAGE_SUFFIX) if path.name.endswith(IMAGE_SUFFIX) else path.stem
    return path.parent.name, stem


def ground_truth_file(gt_dir: Path, item: Mapping[str, Any], suffix: str) -> Path:
    """The gtFine file of an item (``gt_dir/<city>/<stem><suffix>``); it must exist."""
    city, stem = cityscapes_name(item)
    path = gt_dir / city / f"{stem}{suffix}"
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"missing Cityscapes ground truth for image "
                                f"{item['file_name']}", str(path))
    return path


def _in1d(ar1: Any, ar2: Any, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
    """NumPy's removed ``in1d``: membership of the flattened ``ar1`` in ``ar2``."""
    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


@contextlib.contextmanager
def _numpy_in1d() -> Iterator[None]:
    """Provide ``numpy.in1d`` for cityscapesScripts while inside the block, if numpy lacks it."""
    if hasattr(np, "in1d"):
        yield
        return
    np.in1d = _in1d
    try:
        yield
    finally:
        del np.in1d


def run_cityscapes(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a cityscapesScripts evaluation function quietly (one at a time).

    Raises:
        RuntimeError: when the script gives up (it calls ``sys.exit``), with what it printed.
    """
    with _LOCK, _numpy_in1d(), quiet_stdout() as printed:
        try:
            return fn(*args)
        except SystemExit as error:
            raise RuntimeError(f"cityscapesScripts {fn.__module__}.{fn.__name__} failed: "
                               f"{printed.getvalue()[-2000:].strip()}") from error


def train_id_lut(metadata: DatasetMetadata) -> np.ndarray:
    """``(K,)`` uint8 table: train id -> Cityscapes label id."""
    return np.array([metadata.train_id_to_id[i] for i in range(metadata.num_classes)],
                    dtype=np.uint8)


class _StagedPredictions(DatasetEvaluator):
    """Shared bookkeeping: a staged prediction folder and the (prediction, ground truth) lists."""

    folder_name: str

    def __init__(self, *, metadata: DatasetMetadata, gt_dir: str | Path,
                 output_dir: str | Path) -> None:
        self.metadata = metadata
        self.gt_dir = Path(gt_dir)
        self.output_dir = Path(output_dir)
        self._staging: StagedFolder | None = None
        self._pairs: list[tuple[str, Path]] = []
        self._tables: dict[str, Table] = {}

    @property
    def pred_dir(self) -> Path:
        """The folder of the prediction files written for cityscapesScripts."""
        return self.output_dir / self.folder_name

    def reset(self) -> None:
        if self._staging is not None:
            self._staging.discard()
        self._staging = None
        self._pairs = []
        self._tables = {}

    def _stage(self) -> Path:
        if self._staging is None:
            if self._pairs:
                raise RuntimeError("call reset() before processing a new evaluation")
            self._staging = StagedFolder(self.pred_dir)
        return self._staging.path

    def _commit(self) -> tuple[list[str], list[str]]:
        """Move the predictions to :attr:`pred_dir`; absolute prediction and ground-truth lists."""
        if not self._pairs:
            raise ValueError(f"{type(self).__name__}.evaluate: no image was processed")
        if self._staging is not None:  # not yet committed by an earlier evaluate()
            self._staging.commit()
            self._staging = None
        final = Path(os.path.abspath(self.pred_dir))
        return [str(final / name) for name, _ in self._pairs], [str(gt) for _, gt in self._pairs]

    def tables(self) -> dict[str, Table]:
        return self._tables


class CityscapesSemSegEvaluator(_StagedPredictions):
    """mIoU, iIoU and the category averages (percent) from ``evalPixelLevelSemanticLabeling``.

    Args:
        metadata: the Cityscapes label set (train id -> label id).
        gt_dir: ``gtFine/<split>`` (city folders with ``*_gtFine_labelIds.png`` and
            ``*_gtFine_instanceIds.png``).
        output_dir: predictions go to ``output_dir/cityscapes_semantic/``, the script's full
            result to ``output_dir/cityscapes_semantic_results.json``.
    """

    task = "sem_seg"
    folder_name = "cityscapes_semantic"

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        folder, lut = self._stage(), train_id_lut(self.metadata)
        for item, output in zip(inputs, outputs, strict=True):
            pred = to_numpy(output["sem_seg"].argmax(0)).astype(np.int64)
            check_size(pred, item, "sem_seg")
            name = f"{cityscapes_name(item)[1]}_pred.png"
            save_png(lut[pred], folder / name)
            self._pairs.append((name, ground_truth_file(self.gt_dir, item, LABEL_IDS_SUFFIX)))

    def evaluate(self) -> Metrics:
        preds, gts = self._commit()
        result = run_cityscapes(cs_pixel.evaluateImgLists, preds, gts, _pixel_args())
        write_json_atomic(self.output_dir / f"{self.folder_name}_results.json", result)
        self._tables = {"cityscapes_iou_per_class": [
            {"name": name, "IoU": 100.0 * result["classScores"][name],
             "iIoU": 100.0 * result["classInstScores"][name]}
            for name in (c.name for c in self.metadata.categories)]}
        keys = {"mIoU": "averageScoreClasses", "iIoU": "averageScoreInstClasses",
                "IoU_sup": "averageScoreCategories", "iIoU_sup": "averageScoreInstCategories"}
        return {self.task: {k: 100.0 * float(result[v]) for k, v in keys.items()}}


def _pixel_args() -> SimpleNamespace:
    """The settings of ``evalPixelLevelSemanticLabeling``, stated explicitly (no env vars)."""
    return SimpleNamespace(
        evalInstLevelScore=True, evalPixelAccuracy=False, evalLabels=[], printRow=5,
        normalized=True, colorized=False, bold="", nocol="", JSONOutput=False, quiet=True,
        exportFile=None, predictionPath=None, predictionWalk=None,
        avgClassSize=dict(cs_pixel.args.avgClassSize))


class CityscapesInstanceEvaluator(_StagedPredictions):
    """AP and AP50 (percent) from ``evalInstanceLevelSemanticLabeling``, and AP per class.

    Args:
        metadata: the Cityscapes label set (train id -> label id; thing train ids).
        gt_dir: ``gtFine/<split>`` (city folders with ``*_gtFine_instanceIds.png``).
        output_dir: predictions go to ``output_dir/cityscapes_instance/``, the script's full
            result to ``output_dir/cityscapes_instance_results.json``.
    """

    task = "segm"
    folder_name = "cityscapes_instance"

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        folder = self._stage()
        for item, output in zip(inputs, outputs, strict=True):
            stem = cityscapes_name(item)[1]
            lines = self._write_masks(folder, stem, output["instances"], item)
            (folder / f"{stem}_pred.txt").write_text("".join(lines))
            self._pairs.append((f"{stem}_pred.txt",
                                ground_truth_file(self.gt_dir, item, INSTANCE_IDS_SUFFIX)))

    def _write_masks(self, folder: Path, stem: str, instances: Mapping[str, Any],
                     item: Mapping[str, Any]) -> list[str]:
        """Write one image's thing masks; return the lines of its prediction text file."""
        masks = to_numpy(instances["pred_masks"]).astype(bool)
        check_size(masks, item, "pred_masks")
        classes = to_numpy(instances["pred_classes"]).astype(np.int64)
        scores = to_numpy(instances["scores"]).astype(np.float64)
        lines = []
        for i, (mask, train_id, score) in enumerate(zip(masks, classes, scores, strict=True)):
            if int(train_id) not in self.metadata.thing_train_ids or not mask.any():
                continue
            label_id = self.metadata.train_id_to_id[int(train_id)]
            name = f"{stem}_{i}_{id2label[label_id].name.replace(' ', '_')}.png"
            save_png(mask.astype(np.uint8) * 255, folder / name)
            lines.append(f"{name} {label_id} {score:.6f}\n")
        return lines

    def evaluate(self) -> Metrics:
        preds, gts = self._commit()
        with tempfile.TemporaryDirectory() as workdir:
            args = _instance_args(Path(os.path.abspath(self.pred_dir)), Path(workdir))
            result = run_cityscapes(_instance_level, preds, gts, args)
        write_json_atomic(self.output_dir / f"{self.folder_name}_results.json", result)
        averages = result["averages"]
        self._tables = {"cityscapes_ap_per_class": [
            {"name": name, "AP": _percent(v["ap"]), "AP50": _percent(v["ap50%"])}
            for name, v in averages["classes"].items()]}
        return {self.task: {"AP": _percent(averages["allAp"]),
                            "AP50": _percent(averages["allAp50%"])}}


def _instance_level(preds: list[str], gts: list[str], args: SimpleNamespace) -> dict:
    """``evalInstanceLevelSemanticLabeling.evaluateImgLists`` step by step, without its debug dump
    of every match to ``./matches.json`` (which fails on NumPy 2 integers and is not needed)."""
    cs_instance.setInstanceLabels(args)
    gt_instances = cs_instance.getGtInstances(gts, args)
    matches = cs_instance.matchGtWithPreds(preds, gts, gt_instances, args)
    ap_scores = cs_instance.evaluateMatches(matches, args)
    averages = cs_instance.computeAverages(ap_scores, args)
    return cs_instance.prepareJSONDataForResults(averages, ap_scores, args)


def _percent(value: Any) -> float:
    """A fraction (NaN when undefined) in percent."""
    return 100.0 * float(value)


def _instance_args(pred_dir: Path, workdir: Path) -> SimpleNamespace:
    """The settings of ``evalInstanceLevelSemanticLabeling``: the official overlaps, region sizes
    and distances; the ground-truth instance cache in ``workdir`` (fresh every evaluation)."""
    official = cs_instance.args
    return SimpleNamespace(
        overlaps=np.array(official.overlaps), minRegionSizes=np.array(official.minRegionSizes),
        distanceThs=np.array(official.distanceThs),
        distanceConfs=np.array(official.distanceConfs),
        gtInstancesFile=str(workdir / "gtInstances.json"), distanceAvailable=False,
        JSONOutput=False, quiet=True, csv=False, colorized=False, instLabels=[],
        exportFile=None, predictionPath=str(pred_dir), predictionWalk=None)
