"""The COCO panoptic id encoding: id = R + 256 G + 256^2 B (panopticapi's rgb2id / id2rgb)."""

from __future__ import annotations

import numpy as np

from effm2f.data.panoptic import id_to_rgb, rgb_to_id


def every_red_green(blue: int) -> np.ndarray:
    """(256, 256, 3) uint8: every red and green value, one blue value."""
    red, green = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    return np.stack([red, green, np.full_like(red, blue)], axis=-1).astype(np.uint8)


def test_rgb_to_id_weights_the_channels_1_256_65536():
    for blue in (0, 1, 127, 128, 255):
        rgb = every_red_green(blue)
        ids = rgb_to_id(rgb)
        assert ids.dtype == np.int64 and ids.shape == (256, 256)
        red, green = rgb[..., 0].astype(np.int64), rgb[..., 1].astype(np.int64)
        assert np.array_equal(ids, red + 256 * green + 65536 * blue)
        assert np.array_equal(id_to_rgb(ids), rgb)
    assert rgb_to_id(np.array([[[255, 255, 255]]], dtype=np.uint8)).item() == 2**24 - 1


def test_id_to_rgb_is_the_inverse_on_every_id_below_2_to_the_24():
    ids = np.concatenate([np.arange(0, 2**24, 4099), [1, 255, 256, 65535, 65536, 2**24 - 1]])
    rgb = id_to_rgb(ids.reshape(1, -1))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, ids.size, 3)
    assert rgb[0, -5:].tolist() == [[255, 0, 0], [0, 1, 0], [255, 255, 0], [0, 0, 1],
                                    [255, 255, 255]]
    assert np.array_equal(rgb_to_id(rgb)[0], ids)
    for dtype in (np.uint8, np.uint16, np.int32):  # any integer id map, as the model returns it
        small = np.arange(256).astype(dtype).reshape(16, 16)
        assert np.array_equal(id_to_rgb(small), id_to_rgb(small.astype(np.int64)))
