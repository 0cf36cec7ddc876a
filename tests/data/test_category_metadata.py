"""Category metadata: the COCO panoptic list, Cityscapes from cityscapesScripts, synthetic."""

from __future__ import annotations

import pytest

from effm2f.config import ConfigError
from effm2f.data.metadata import CITYSCAPES, COCO_PANOPTIC, SYNTHETIC, get_metadata


def test_coco_panoptic_categories():
    cats = COCO_PANOPTIC.categories
    assert len(cats) == 133
    assert sum(c.isthing for c in cats) == 80
    assert [c.isthing for c in cats] == [True] * 80 + [False] * 53  # things first
    assert [c.id for c in cats] == sorted(c.id for c in cats)
    assert (cats[0].id, cats[0].name) == (1, "person")
    assert (cats[79].id, cats[79].name) == (90, "toothbrush")
    assert (cats[80].id, cats[80].name) == (92, "banner")
    assert (cats[-1].id, cats[-1].name) == (200, "rug-merged")
    assert len({c.name for c in cats}) == 133
    assert all(len(c.color) == 3 and all(0 <= v <= 255 for v in c.color) for c in cats)
    assert COCO_PANOPTIC.id_to_train_id[200] == 132
    assert COCO_PANOPTIC.train_id_to_id[80] == 92


def test_cityscapes_categories():
    assert CITYSCAPES.num_classes == 19
    assert len(CITYSCAPES.thing_train_ids) == 8
    assert CITYSCAPES.id_to_train_id == {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                                         21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                                         28: 15, 31: 16, 32: 17, 33: 18}
    assert CITYSCAPES.thing_classes == ("person", "rider", "car", "truck", "bus", "train",
                                        "motorcycle", "bicycle")


def test_synthetic_categories_and_lookup():
    assert SYNTHETIC.num_classes == 6 and SYNTHETIC.thing_train_ids == {0, 1, 2}
    assert len({c.color for c in SYNTHETIC.categories}) == 6
    assert get_metadata("coco") is COCO_PANOPTIC
    with pytest.raises(ConfigError, match="known: cityscapes, coco, synthetic"):
        get_metadata("ade20k")
