"""The evaluators together, fed by the real Mask2Former post-processing; building by name."""

from __future__ import annotations

import csv
import json

import pytest

from effm2f.config import ConfigError
from effm2f.data.catalog import SplitFiles
from effm2f.evaluation import (
    DEFAULT_EVALUATORS,
    EvaluationContext,
    Evaluators,
    SemSegEvaluator,
    build_evaluators,
    write_evaluation,
)
from effm2f.evaluation.panoptic import COCOPanopticEvaluator
from effm2f.models.inference import postprocess
from support.evaluation import META, coco_item, query_logits, rich_scenes, write_coco


def context(lay, out) -> EvaluationContext:
    files = SplitFiles(lay.image_root, lay.panoptic_json, lay.panoptic_root, lay.semseg_root,
                       lay.instances_json)
    return EvaluationContext(metadata=META, files=files, output_dir=out, workers=1,
                             progress=False)


def model_outputs(scene) -> dict:
    """postprocess() of logits whose queries are the ground-truth segments."""
    class_logits, mask_logits = query_logits(scene)
    size = scene.shape
    return postprocess(class_logits[None], mask_logits[None], size, [size], [size],
                       META.thing_train_ids)[0]


def test_postprocessed_ground_truth_scores_100_and_is_written(tmp_path):
    scenes = rich_scenes()
    lay = write_coco(tmp_path / "gt", scenes)
    out = tmp_path / "results" / "synthetic" / "baseline" / "eval"
    evaluators = build_evaluators(DEFAULT_EVALUATORS["synthetic"], context(lay, out))
    evaluators.reset()
    for s in scenes:  # batches of one, as a loader would give them
        evaluators.process([coco_item(lay, s)], [model_outputs(s)])
    metrics = evaluators.evaluate()
    assert set(metrics) == {"panoptic_seg", "segm", "sem_seg"}
    assert metrics["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert metrics["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["sem_seg"]["mIoU"] == pytest.approx(100.0)

    written = write_evaluation(out, metrics, evaluators.tables())
    assert sorted(p.name for p in written.values()) == [
        "ap_per_class.csv", "iou_per_class.csv", "metrics.json", "pq_per_class.csv",
        "pq_per_image.csv"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["segm"]["APm"] is None  # NaN (no medium object) is written as null
    with (out / "pq_per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["PQ"]) for r in rows] == [100.0, 100.0]
    assert (out / "panoptic_predictions.json").is_file()
    assert (out / "instances_predictions.json").is_file()


def test_unknown_names_and_colliding_tasks_are_errors(tmp_path):
    lay = write_coco(tmp_path / "gt", rich_scenes())
    with pytest.raises(ConfigError, match="cocopanoptic"):
        build_evaluators(["cocopanoptic"], context(lay, tmp_path / "e"))
    twice = Evaluators([SemSegEvaluator(metadata=META), SemSegEvaluator(metadata=META)])
    s = rich_scenes()[0]
    twice.process([coco_item(lay, s)], [model_outputs(s)])
    with pytest.raises(ValueError, match="'sem_seg'"):
        twice.evaluate()


def test_reset_discards_staged_predictions_and_evaluate_replaces_old_ones(tmp_path):
    scenes = rich_scenes()
    lay = write_coco(tmp_path / "gt", scenes)
    ev = COCOPanopticEvaluator(metadata=META, gt_json=lay.panoptic_json,
                               gt_folder=lay.panoptic_root, output_dir=tmp_path / "e",
                               workers=1, progress=False)
    ev.process([coco_item(lay, scenes[0])], [model_outputs(scenes[0])])
    ev.reset()
    assert list((tmp_path / "e").iterdir()) == []
    for s in scenes:
        ev.process([coco_item(lay, s)], [model_outputs(s)])
    first = ev.evaluate()
    assert ev.evaluate() == first  # evaluating again reads the same files
    with pytest.raises(RuntimeError, match="reset"):
        ev.process([coco_item(lay, scenes[1])], [model_outputs(scenes[1])])
    ev.reset()
    ev.process([coco_item(lay, scenes[1])], [model_outputs(scenes[1])])
    ev.evaluate()
    assert sorted(p.name for p in ev.pred_folder.iterdir()) == ["b.png"]
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "panoptic_predictions", "panoptic_predictions.json"]
