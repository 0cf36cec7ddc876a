"""Evaluators by name, built from a dataset split: one explicit mapping, no string dispatch.

``EVALUATORS`` maps a configuration name to a factory that builds the evaluator from the split's
files (:class:`effm2f.data.catalog.SplitFiles`); ``DEFAULT_EVALUATORS`` lists what each dataset is
evaluated with unless the configuration says otherwise (as Mask2Former does: COCO panoptic PQ,
COCO mask AP and mIoU; Cityscapes PQ plus cityscapesScripts' AP and mIoU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from effm2f.config import ConfigError
from effm2f.data.catalog import SplitFiles, get_dataset
from effm2f.data.metadata import DatasetMetadata
from effm2f.evaluation.cityscapes import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from effm2f.evaluation.evaluator import DatasetEvaluator, Evaluators
from effm2f.evaluation.instance import COCOInstanceEvaluator
from effm2f.evaluation.panoptic import COCOPanopticEvaluator
from effm2f.evaluation.semantic import SemSegEvaluator


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationContext:
    """What a factory may use: the label set, the split's files and the output folder."""

    metadata: DatasetMetadata
    files: SplitFiles
    output_dir: Path
    workers: int | None = None
    progress: bool = True


def _coco_panoptic(ctx: EvaluationContext) -> DatasetEvaluator:
    return COCOPanopticEvaluator(metadata=ctx.metadata, gt_json=ctx.files.panoptic_json,
                                 gt_folder=ctx.files.panoptic_root, output_dir=ctx.output_dir,
                                 workers=ctx.workers, progress=ctx.progress)


def _coco_instance(ctx: EvaluationContext) -> DatasetEvaluator:
    if ctx.files.instances_json is None:
        raise ConfigError("coco_instance needs instance annotations, which this dataset lacks "
                         "(use cityscapes_instance for the Cityscapes layout)")
    return COCOInstanceEvaluator(metadata=ctx.metadata, gt_json=ctx.files.instances_json,
                                 output_dir=ctx.output_dir)


def _semantic(ctx: EvaluationContext) -> DatasetEvaluator:
    return SemSegEvaluator(metadata=ctx.metadata)


def _cityscapes_semantic(ctx: EvaluationContext) -> DatasetEvaluator:
    return CityscapesSemSegEvaluator(metadata=ctx.metadata, gt_dir=ctx.files.semseg_root,
                                     output_dir=ctx.output_dir)


def _cityscapes_instance(ctx: EvaluationContext) -> DatasetEvaluator:
    return CityscapesInstanceEvaluator(metadata=ctx.metadata, gt_dir=ctx.files.semseg_root,
                                       output_dir=ctx.output_dir)


EVALUATORS: dict[str, Callable[[EvaluationContext], DatasetEvaluator]] = {
    "coco_panoptic": _coco_panoptic,
    "coco_instance": _coco_instance,
    "semantic": _semantic,
    "cityscapes_semantic": _cityscapes_semantic,
    "cityscapes_instance": _cityscapes_instance,
}
"""Evaluator name (as written in configs) -> factory."""

_COCO_SET = ("coco_panoptic", "coco_instance", "semantic")
_CITYSCAPES_SET = ("coco_panoptic", "cityscapes_instance", "cityscapes_semantic")
DEFAULT_EVALUATORS: dict[str, tuple[str, ...]] = {
    "coco": _COCO_SET,
    "synthetic": _COCO_SET,
    "cityscapes": _CITYSCAPES_SET,
    "synthetic_cityscapes": _CITYSCAPES_SET,
}
"""Dataset name -> the evaluators it is evaluated with by default."""


def build_evaluators(names: Sequence[str], context: EvaluationContext) -> Evaluators:
    """The evaluators ``names`` (keys of :data:`EVALUATORS`) for one split, run as one."""
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ConfigError(
            f"unknown evaluators {unknown} (known: {', '.join(sorted(EVALUATORS))})")
    return Evaluators([EVALUATORS[name](context) for name in names])


def dataset_evaluators(dataset: str, split: str, *, output_dir: str | Path,
                       root: str | Path | None = None, names: Sequence[str] | None = None,
                       workers: int | None = None, progress: bool = True) -> Evaluators:
    """The evaluators of split ``split`` of dataset ``dataset`` (a name in the data catalog).

    Args:
        dataset, split: e.g. ``"coco", "val"``.
        output_dir: where predictions (and later the metrics) are written.
        root: the dataset root (default: the catalog's).
        names: evaluator names (default: :data:`DEFAULT_EVALUATORS` of the dataset).
        workers: processes for the panoptic matching (default: the usable CPUs).
        progress: show progress bars.
    """
    spec = get_dataset(dataset)
    files = spec.split_files(root or spec.default_root, split)
    context = EvaluationContext(metadata=spec.metadata, files=files, output_dir=Path(output_dir),
                                workers=workers, progress=progress)
    return build_evaluators(names if names is not None else DEFAULT_EVALUATORS[dataset], context)
