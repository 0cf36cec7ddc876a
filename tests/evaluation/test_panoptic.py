"""COCOPanopticEvaluator: perfect predictions, hand-computed PQ, void/crowd, per-image PQ, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

from effm2f.data.panoptic import read_panoptic_png
from effm2f.evaluation import COCOPanopticEvaluator, write_evaluation
from support.evaluation import (
    DISC,
    GRASS,
    META,
    SKY,
    SQUARE,
    TRIANGLE,
    WATER,
    coco_item,
    paint,
    panoptic_prediction,
    perfect_output,
    rect,
    rich_scenes,
    scene,
    write_coco,
)

T = META.id_to_train_id  # dataset id -> train id


def evaluator(lay, out: Path) -> COCOPanopticEvaluator:
    return COCOPanopticEvaluator(metadata=META, gt_json=lay.panoptic_json,
                                 gt_folder=lay.panoptic_root, output_dir=out, workers=1,
                                 progress=False)


def run(ev: COCOPanopticEvaluator, lay, scenes, outputs) -> dict[str, float]:
    ev.reset()
    ev.process([coco_item(lay, s) for s in scenes], outputs)
    return ev.evaluate()["panoptic_seg"]


def test_ground_truth_as_prediction_is_100(tmp_path):
    scenes = rich_scenes()
    lay = write_coco(tmp_path / "gt", scenes)
    pq = run(evaluator(lay, tmp_path / "eval"), lay, scenes, [perfect_output(s) for s in scenes])
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert pq[key] == pytest.approx(100.0), key


def iou06_scene_and_prediction(image_id=2, name="b"):
    """10x10: disc A (20 px) predicted by a 12 px subset (IoU 0.6), disc B (10 px) missed, sky
    (70 px) exact. Hand-computed: disc PQ = 0.6 / (1 + 0.5) = 0.4, SQ 0.6, RQ 2/3; sky 1."""
    s = scene(image_id, name, (10, 10), [
        (1, SKY, rect(0, 10, 0, 10), 0), (2, DISC, rect(0, 4, 0, 5), 0),
        (3, DISC, rect(6, 8, 5, 10), 0)])
    ids = paint((10, 10), [(1, rect(0, 10, 0, 10)), (0, rect(0, 4, 0, 5)), (2, rect(0, 4, 0, 3)),
                           (0, rect(6, 8, 5, 10))])
    return s, {"panoptic_seg": panoptic_prediction(ids, {1: T[SKY], 2: T[DISC]})}


def test_iou_06_and_a_missed_thing_hand_computed(tmp_path):
    s, output = iou06_scene_and_prediction()
    lay = write_coco(tmp_path / "gt", [s])
    pq = run(evaluator(lay, tmp_path / "eval"), lay, [s], [output])
    assert pq["PQ_th"] == pytest.approx(40.0)
    assert pq["SQ_th"] == pytest.approx(60.0)
    assert pq["RQ_th"] == pytest.approx(200.0 / 3)
    assert pq["PQ_st"] == pytest.approx(100.0)
    assert pq["PQ"] == pytest.approx(70.0)  # categories absent from image and prediction: skipped
    assert pq["SQ"] == pytest.approx(80.0)
    assert pq["RQ"] == pytest.approx((200.0 / 3 + 100.0) / 2)


def void_crowd_case():
    """10x10. GT: grass cols 0:6 (60 px); void rows 0:5 x cols 6:10 (20 px); a crowd triangle
    rows 5:10 x cols 6:10 (20 px).
    Prediction: a square of 20 px, 12 on void + 8 on grass (void share 0.6 > 0.5: ignored); a disc
    of 10 px, 4 on void + 6 on grass (void share 0.4: a false positive); a triangle exactly on the
    crowd region (ignored); grass = the 46 remaining grass pixels (IoU 46/60, a true positive).
    Hand-computed: grass PQ 46/60, disc PQ 0 (one FP); square and triangle do not count.
    """
    s = scene(1, "vc", (10, 10), [
        (1, GRASS, rect(0, 10, 0, 6), 0), (2, TRIANGLE, rect(5, 10, 6, 10), 1)])
    ids = paint((10, 10), [
        (1, rect(0, 10, 0, 6)),
        (2, rect(0, 3, 6, 10)), (2, rect(0, 2, 2, 6)),
        (3, rect(3, 5, 8, 10)), (3, rect(3, 5, 3, 6)),
        (4, rect(5, 10, 6, 10))])
    output = {"panoptic_seg": panoptic_prediction(
        ids, {1: T[GRASS], 2: T[SQUARE], 3: T[DISC], 4: T[TRIANGLE]})}
    return s, output


def test_prediction_mostly_on_void_or_crowd_is_not_a_false_positive(tmp_path):
    s, output = void_crowd_case()
    lay = write_coco(tmp_path / "gt", [s])
    ev = evaluator(lay, tmp_path / "eval")
    pq = run(ev, lay, [s], [output])
    grass = 100.0 * 46 / 60
    assert pq["PQ_st"] == pytest.approx(grass)
    assert pq["PQ_th"] == pytest.approx(0.0)  # only the disc counts (1 FP)
    assert pq["PQ"] == pytest.approx(grass / 2)
    assert pq["RQ"] == pytest.approx(50.0)
    rows = {r["category_id"]: r for r in ev.tables()["pq_per_class"]}
    assert (rows[DISC]["TP"], rows[DISC]["FP"], rows[DISC]["FN"]) == (0, 1, 0)
    assert (rows[SQUARE]["FP"], rows[TRIANGLE]["FP"], rows[TRIANGLE]["FN"]) == (0, 0, 0)
    assert np.isnan(rows[SQUARE]["PQ"]) and np.isnan(rows[TRIANGLE]["PQ"])
    assert rows[GRASS]["PQ"] == pytest.approx(grass)


def two_image_case():
    """Image 1: sky + one disc, predicted exactly (PQ 100). Image 2: the IoU-0.6 case (PQ 70).
    Dataset: disc IoU 1 + 0.6 over TP 2, FN 1 -> 1.6 / 2.5 = 0.64; sky 1 -> PQ 82."""
    a = scene(1, "a", (10, 10), [(1, SKY, rect(0, 10, 0, 10), 0), (2, DISC, rect(2, 6, 2, 6), 0)])
    b, output_b = iou06_scene_and_prediction(image_id=2, name="b")
    return [a, b], [perfect_output(a), output_b]


def test_per_image_pq_differs_as_computed_by_hand(tmp_path):
    scenes, outputs = two_image_case()
    lay = write_coco(tmp_path / "gt", scenes)
    ev = evaluator(lay, tmp_path / "eval")
    pq = run(ev, lay, scenes, outputs)
    assert pq["PQ"] == pytest.approx(82.0)
    assert pq["PQ_th"] == pytest.approx(64.0)
    per_image = {r["image_id"]: r for r in ev.tables()["pq_per_image"]}
    assert per_image[1]["PQ"] == pytest.approx(100.0)
    assert per_image[2]["PQ"] == pytest.approx(70.0)
    assert per_image[2]["PQ_th"] == pytest.approx(40.0)
    assert (per_image[2]["TP"], per_image[2]["FP"], per_image[2]["FN"]) == (2, 0, 1)
    assert per_image[2]["num_categories"] == 2


def test_parallel_matching_gives_the_same_numbers(tmp_path):
    scenes, outputs = two_image_case()
    lay = write_coco(tmp_path / "gt", scenes)
    ev = COCOPanopticEvaluator(metadata=META, gt_json=lay.panoptic_json,
                               gt_folder=lay.panoptic_root, output_dir=tmp_path / "eval",
                               workers=2, progress=False)
    assert run(ev, lay, scenes, outputs)["PQ"] == pytest.approx(82.0)


def test_written_predictions_round_trip_and_a_standard_reader_agrees(tmp_path):
    scenes, outputs = two_image_case()
    void_scene, void_output = void_crowd_case()
    void_scene.image_id, void_scene.name = 3, "vc"
    scenes, outputs = scenes + [void_scene], outputs + [void_output]
    lay = write_coco(tmp_path / "gt", scenes)
    ev = evaluator(lay, tmp_path / "eval")
    pq = run(ev, lay, scenes, outputs)

    pred = json.loads(ev.pred_json.read_text())
    assert [a["image_id"] for a in pred["annotations"]] == [1, 2, 3]
    for ann, output in zip(pred["annotations"], outputs, strict=True):
        ids, infos = output["panoptic_seg"]
        assert np.array_equal(read_panoptic_png(ev.pred_folder / ann["file_name"]), ids.numpy())
        expected = [(i["id"], META.train_id_to_id[i["category_id"]]) for i in infos]
        assert [(g["id"], g["category_id"]) for g in ann["segments_info"]] == expected
    assert not list(ev.output_dir.glob(".*"))  # no staging leftovers

    with_cs = evaluatePanoptic(str(lay.panoptic_json), str(lay.panoptic_root), str(ev.pred_json),
                               str(ev.pred_folder), str(tmp_path / "cs.json"))
    assert 100 * with_cs["All"]["pq"] == pytest.approx(pq["PQ"])
    assert 100 * with_cs["Things"]["pq"] == pytest.approx(pq["PQ_th"])
    assert 100 * with_cs["Stuff"]["sq"] == pytest.approx(pq["SQ_st"])


def four_image_case():
    """The two-image case, the void/crowd case and a stuff-only image predicted exactly.

    Dataset by hand: disc IoU 1 + 0.6 over TP 2, FP 1, FN 1 -> PQ 1.6 / 3, SQ 0.8, RQ 2/3; sky 3
    exact TPs -> 1; grass IoU 46/60 + 1 over 2 TPs -> PQ = SQ = (46/60 + 1) / 2; square,
    triangle and water count nowhere (NaN in their rows, left out of the means).
    """
    scenes, outputs = two_image_case()
    void_scene, void_output = void_crowd_case()
    void_scene.image_id, void_scene.name = 3, "vc"
    stuff = scene(4, "st", (10, 10), [(1, SKY, rect(0, 5, 0, 10), 0),
                                      (2, GRASS, rect(5, 10, 0, 10), 0)])
    return scenes + [void_scene, stuff], outputs + [void_output, perfect_output(stuff)]


NAN = float("nan")
PINNED_SUMMARY = {  # the code's output before the swap to cityscapesScripts' PQStat (issue 15)
    "PQ": 80.55555555555556, "SQ": 89.44444444444446, "RQ": 88.88888888888887,
    "PQ_th": 53.333333333333336, "SQ_th": 80.0, "RQ_th": 66.66666666666666,
    "PQ_st": 94.16666666666667, "SQ_st": 94.16666666666667, "RQ_st": 100.0,
}
PINNED_PER_CLASS = [  # category_id, name, isthing, PQ, SQ, RQ, TP, FP, FN
    (DISC, "disc", 1, 53.333333333333336, 80.0, 66.66666666666666, 2, 1, 1),
    (SQUARE, "square", 1, NAN, NAN, NAN, 0, 0, 0),
    (TRIANGLE, "triangle", 1, NAN, NAN, NAN, 0, 0, 0),
    (SKY, "sky", 0, 100.0, 100.0, 100.0, 3, 0, 0),
    (GRASS, "grass", 0, 88.33333333333333, 88.33333333333333, 100.0, 2, 0, 0),
    (WATER, "water", 0, NAN, NAN, NAN, 0, 0, 0),
]
PINNED_PER_IMAGE = [  # image_id, file_name, PQ, SQ, RQ, PQ_th, PQ_st, num_categories, TP, FP, FN
    (1, "a.png", 100.0, 100.0, 100.0, 100.0, 100.0, 2, 2, 0, 0),
    (2, "b.png", 70.0, 80.0, 83.33333333333333, 40.0, 100.0, 2, 2, 0, 1),
    (3, "vc.png", 38.333333333333336, 38.333333333333336, 50.0, 0.0, 76.66666666666667, 2, 1, 1,
     0),
    (4, "st.png", 100.0, 100.0, 100.0, NAN, 100.0, 2, 2, 0, 0),  # no thing: PQ_th NaN
]


def same(values, pinned) -> bool:
    """Floats equal to 1e-12 (the order of the x100 and the mean may move the last bit), NaN
    where NaN; everything else (ids, names, counts) exactly, with its type."""
    values, pinned = list(values), list(pinned)
    return len(values) == len(pinned) and all(
        v == pytest.approx(p, rel=1e-12, abs=0, nan_ok=True) if isinstance(p, float)
        else (v == p and type(v) is type(p))
        for v, p in zip(values, pinned, strict=True))


def test_tables_are_pinned_on_the_crafted_cases(tmp_path):
    scenes, outputs = four_image_case()
    lay = write_coco(tmp_path / "gt", scenes)
    ev = evaluator(lay, tmp_path / "eval")
    pq = run(ev, lay, scenes, outputs)
    assert list(pq) == list(PINNED_SUMMARY)
    assert same(pq.values(), PINNED_SUMMARY.values())
    tables = ev.tables()
    assert len(tables["pq_per_class"]) == len(PINNED_PER_CLASS)
    for row, pinned in zip(tables["pq_per_class"], PINNED_PER_CLASS, strict=True):
        assert list(row) == ["category_id", "name", "isthing", "PQ", "SQ", "RQ", "TP", "FP", "FN"]
        assert same(row.values(), pinned), row
    for row, pinned in zip(tables["pq_per_image"], PINNED_PER_IMAGE, strict=True):
        assert list(row) == ["image_id", "file_name", "PQ", "SQ", "RQ", "PQ_th", "PQ_st",
                             "num_categories", "TP", "FP", "FN"]
        assert same(row.values(), pinned), row

    # The hand values of the docstring, and cityscapesScripts' own evaluation of the same files
    disc, grass = 1.6 / 3, (46 / 60 + 1) / 2
    assert pq["PQ"] == pytest.approx(100 * (disc + 1 + grass) / 3)
    assert pq["PQ_th"] == pytest.approx(100 * disc)
    assert pq["SQ_st"] == pytest.approx(100 * grass / 2 + 50)
    official = evaluatePanoptic(str(lay.panoptic_json), str(lay.panoptic_root),
                                str(ev.pred_json), str(ev.pred_folder), str(tmp_path / "cs.json"))
    for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("pq", "sq", "rq"):
            assert pq[metric.upper() + suffix] == pytest.approx(100 * official[group][metric])
    for row in tables["pq_per_class"]:
        if row["TP"] + row["FP"] + row["FN"]:
            assert row["PQ"] == pytest.approx(100 * official["per_class"][row["category_id"]]["pq"])


def test_metrics_and_tables_are_written(tmp_path):
    scenes, outputs = two_image_case()
    lay = write_coco(tmp_path / "gt", scenes)
    ev = evaluator(lay, tmp_path / "eval")
    metrics = {"panoptic_seg": run(ev, lay, scenes, outputs)}
    written = write_evaluation(tmp_path / "eval", metrics, ev.tables(), extra={"variant": "x"})
    saved = json.loads(written["metrics"].read_text())
    assert saved["variant"] == "x"
    assert saved["panoptic_seg"]["PQ"] == pytest.approx(82.0)
    per_image = written["pq_per_image"].read_text().splitlines()
    assert per_image[0].startswith("image_id,file_name,PQ,")
    assert len(per_image) == 3
    per_class = written["pq_per_class"].read_text().splitlines()
    assert len(per_class) == 1 + META.num_classes


def test_bad_predictions_are_named(tmp_path):
    s, output = iou06_scene_and_prediction()
    lay = write_coco(tmp_path / "gt", [s])
    ev = evaluator(lay, tmp_path / "eval")
    ids, infos = output["panoptic_seg"]
    with pytest.raises(ValueError, match="not in segments_info"):
        ev.process([coco_item(lay, s)], [{"panoptic_seg": (ids, infos[:1])}])
    ev.reset()
    unknown = dict(coco_item(lay, s), image_id=99)
    ev.process([unknown], [output])
    with pytest.raises(ValueError, match="ground truth lacks"):
        ev.evaluate()
