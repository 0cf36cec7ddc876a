"""GFLOPs under detectron2's conventions: hand counts, fused attention, the paper's ratios."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effm2f.efficiency.config import DatasetInput, ResizeConfig
from effm2f.efficiency.flops import (
    InputSize,
    count_flops,
    detectron2_flop_analysis,
    mean_flops,
    measurement_inputs,
)
from effm2f.models.config import EncoderConfig, ModelConfig
from effm2f.models.mask2former import Mask2Former
from support.models import tiny_model

C, FFN, HEADS, POINTS = 64, 96, 4, 4
# Elementwise, reduction and indexing ops that count zero under the convention; anything else
# appearing uncounted (a new matmul-like op, say) must fail the test.
CHEAP_OPS = {
    "aten::pow",
    "aten::sin",
    "aten::cos",
    "aten::sum",
    "aten::repeat",
    "aten::lt",
    "aten::ne",
    "aten::masked_fill_",
    "aten::topk",
    "aten::gelu",
    "aten::pad",
    "aten::relu",
    "aten::relu_",
    "aten::le",
    "aten::mean",
    "aten::ones_like",
    "aten::zeros_like",
    "aten::remainder",
    "aten::linspace",  # the reference points (the original's get_reference_points, as ours)
}


def layer_flops(tokens: int, levels: int) -> int:
    """One encoder layer by hand: linear layers (one MAC = one FLOP) + two affine LayerNorms."""
    per_token = (
        C * C  # value projection
        + C * C  # output projection
        + C * HEADS * levels * POINTS * 2  # sampling offsets
        + C * HEADS * levels * POINTS  # attention weights
        + C * FFN
        + FFN * C  # feed-forward
        + 2 * 5 * C  # fvcore counts 5 per element for an affine LayerNorm
    )
    return tokens * per_token  # grid_sample (the deformable sampling) counts zero


@pytest.mark.parametrize(
    ("schedule", "stage_tokens"),
    [((0, 0, 3), (6, 30, 126)), ((1, 1, 1), (6, 30, 126)), ((2, 0, 1), (6, 30, 126))],
)
def test_encoder_flops_match_a_hand_count(schedule, stage_tokens):
    """Input 64x96: 2x3 tokens at 1/32, 4x6 at 1/16, 8x12 at 1/8 (6, 30, 126 cumulated)."""
    model = Mask2Former(config=tiny_model(schedule=schedule), num_classes=5)
    flops = count_flops(model, input_size=(64, 96))
    expected = sum(
        count * layer_flops(tokens, stage + 1)
        for stage, (count, tokens) in enumerate(zip(schedule, stage_tokens, strict=True))
    )
    assert flops.by_module["model.pixel_decoder.encoder"] * 1e9 == pytest.approx(expected, abs=1)


def test_trc_and_lpe_flops_by_hand():
    model = Mask2Former(
        config=tiny_model(schedule=(1, 1, 1), trc="linear", lpe=True), num_classes=5
    )
    flops = count_flops(model, input_size=(64, 96))
    # TRC: bilinear resize (4 per output element) + Linear C->1, for the 2x3 and 4x6 grids.
    trc = sum(tokens * C * 4 + tokens * C for tokens in (6, 24))
    assert flops.by_module["model.pixel_decoder.trc"] * 1e9 == pytest.approx(trc, abs=1)
    # LPE: the max-pool counts zero; only the affine GroupNorm (5 per element) on the 16x24 map.
    assert flops.by_module["model.pixel_decoder.layer_1"] * 1e9 == pytest.approx(16 * 24 * C * 5)


def test_nothing_costly_goes_uncounted():
    for backbone in ("resnet_test", "swin_test"):
        config = tiny_model()
        model = Mask2Former(
            config=ModelConfig(**{**config.__dict__, "backbone": backbone}), num_classes=5
        )
        flops = count_flops(model, input_size=(64, 64))
        assert set(flops.uncounted_ops) <= CHEAP_OPS, flops.uncounted_ops
        assert flops.total > flops.encoder > 0


class _Attention(nn.Module):
    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value)


def test_fused_attention_counts_as_its_two_matmuls():
    query, key, value = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 16)
    analysis = detectron2_flop_analysis(_Attention(), query, key, value)
    assert analysis.total() == 2 * 3 * 10 * 7 * (8 + 16)


def test_inputs_from_validation_images_follow_the_test_resize(tmp_path):
    from PIL import Image

    for name, size in [("a.jpg", (640, 480)), ("b.jpg", (480, 640)), ("c.png", (500, 375))]:
        Image.new("RGB", size).save(tmp_path / name)
    dataset = DatasetInput(
        canonical_size=(800, 1088), val_images=str(tmp_path), test_resize=ResizeConfig()
    )
    inputs, source = measurement_inputs(dataset, num_images=2)
    assert source == "mean of first 2 val images"
    assert [(i.padded, i.image, i.output) for i in inputs] == [
        ((800, 1088), (800, 1067), (480, 640)),
        ((1088, 800), (1067, 800), (640, 480)),
    ]
    missing = DatasetInput(canonical_size=(800, 1088), val_images=str(tmp_path / "absent"))
    assert measurement_inputs(missing, 100) == (
        [InputSize((800, 1088), (800, 1088), (800, 1088))],
        "canonical 800x1088",
    )


def test_mean_flops_weights_each_size_by_its_count():
    model = Mask2Former(config=tiny_model(), num_classes=5)
    small = count_flops(model, input_size=(64, 64)).total
    large = count_flops(model, input_size=(64, 128)).total
    sizes = [InputSize((64, 64), (64, 64), (64, 64))] * 3 + [InputSize(*[(64, 128)] * 3)]
    total, _ = mean_flops(model, sizes, thing_ids=())
    assert total == pytest.approx((3 * small + large) / 4)


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "paper_ratio"), [("r50", 0.725), ("swint", 0.732)])
def test_proscale_reproduces_the_papers_gflops_ratios(backbone, paper_ratio):
    """At COCO's canonical 800x1088: total ratio within 0.015 of the paper, encoder cut >= 48%."""
    baseline = Mask2Former(config=ModelConfig(backbone=backbone), num_classes=133)
    proscale_encoder = EncoderConfig(schedule=(3, 3, 3), trc="linear", lpe=True)
    proscale = Mask2Former(
        config=ModelConfig(backbone=backbone, encoder=proscale_encoder), num_classes=133
    )
    things = range(80)
    base = count_flops(baseline, input_size=(800, 1088), thing_ids=things)
    ours = count_flops(proscale, input_size=(800, 1088), thing_ids=things)
    assert ours.total / base.total == pytest.approx(paper_ratio, abs=0.015)
    assert 0.48 <= base.encoder / base.total <= 0.57
    assert 1 - ours.encoder / base.encoder >= 0.48
