"""The token-schedule pixel decoder: baseline equality, stages, TRC, LPE, residual, exits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

from effm2f.models.encoders import TokenSchedulePixelDecoder
from support.models import CHANNELS, HIDDEN, backbone_features, tiny_encoder


def decoder(**overrides) -> TokenSchedulePixelDecoder:
    return TokenSchedulePixelDecoder(
        in_channels=CHANNELS,
        hidden_dim=HIDDEN,
        mask_dim=HIDDEN,
        norm_groups=32,
        config=tiny_encoder(**overrides),
    ).eval()


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial weights everywhere (zero-initialised offsets would hide sampling bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def transformers_decoder() -> Mask2FormerPixelDecoder:
    config = Mask2FormerConfig(
        feature_size=HIDDEN,
        mask_feature_size=HIDDEN,
        hidden_dim=HIDDEN,
        encoder_feedforward_dim=96,
        num_attention_heads=4,
        encoder_layers=6,
    )
    return Mask2FormerPixelDecoder(config, feature_channels=CHANNELS).eval()


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (160, 128)])
def test_baseline_schedule_equals_transformers(size):
    reference = transformers_decoder()
    randomize(reference)
    ours = decoder(schedule=(0, 0, 6))
    ours.load_state_dict(reference.state_dict(), strict=True)
    features = backbone_features(2, *size)
    with torch.no_grad():
        expected = reference(features)
        actual = ours(features)
    torch.testing.assert_close(actual.mask_features, expected.mask_features, atol=1e-5, rtol=0)
    for got, want in zip(actual.multi_scale_features, expected.multi_scale_features, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_stages_attend_over_their_levels():
    model = decoder(schedule=(3, 3, 3))
    levels = [layer.num_levels for layer in model.encoder.layers]
    assert levels == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    heads, points = 4, 4
    for layer, n in zip(model.encoder.layers, levels, strict=True):
        assert layer.self_attn.sampling_offsets.out_features == heads * n * points * 2
        assert layer.self_attn.attention_weights.out_features == heads * n * points


def test_output_shapes_do_not_depend_on_schedule():
    features = backbone_features(2, 64, 96)
    with torch.no_grad():
        outputs = [decoder(schedule=s)(features) for s in [(0, 0, 6), (3, 3, 3), (1, 1, 4)]]
    shapes = [
        [tuple(o.mask_features.shape)] + [tuple(m.shape) for m in o.multi_scale_features]
        for o in outputs
    ]
    assert shapes[0] == [
        (2, HIDDEN, 16, 24),
        (2, HIDDEN, 2, 3),
        (2, HIDDEN, 4, 6),
        (2, HIDDEN, 8, 12),
    ]
    assert shapes[1] == shapes[0] and shapes[2] == shapes[0]


def test_first_stage_sees_only_the_coarsest_tokens():
    model = decoder(schedule=(1, 1, 1))
    randomize(model)
    features = backbone_features(1, 64, 96)
    changed = [f.clone() for f in features]
    changed[1] += 1.0  # res3 (1/8)
    changed[2] += 1.0  # res4 (1/16)
    with torch.no_grad():
        one = model(features, num_layers=1).multi_scale_features
        other = model(changed, num_layers=1).multi_scale_features
        projected_res4 = model.input_projections[1](changed[2])
    torch.testing.assert_close(one[0], other[0])  # 1/32 after stage 1 ignores finer levels
    torch.testing.assert_close(other[1], projected_res4)  # 1/16 tokens not yet encoded
    assert not torch.allclose(one[1], other[1])


def test_exit_after_k_layers_equals_a_shorter_schedule():
    full = decoder(schedule=(0, 0, 6))
    randomize(full)
    short = decoder(schedule=(0, 0, 2))
    short.load_state_dict(full.state_dict(), strict=False)
    features = backbone_features(2, 64, 96)
    with torch.no_grad():
        exited = full(features, num_layers=2)
        expected = short(features)
        complete = full(features, num_layers=6)
        default = full(features)
    torch.testing.assert_close(exited.mask_features, expected.mask_features)
    torch.testing.assert_close(complete.mask_features, default.mask_features)
    with pytest.raises(ValueError, match="num_layers must be in 1..6"):
        full(features, num_layers=7)


def _tokens_to_map(tokens: torch.Tensor, shape) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *shape)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_trc_gates_coarse_tokens_by_resized_fine_tokens(kind):
    model = decoder(schedule=(1, 1, 1), trc=kind, trc_temperature=0.5)
    randomize(model)
    trc = model.trc
    tokens = torch.randn(2, 6, HIDDEN)  # a 2x3 grid
    guide = torch.randn(2, 48, HIDDEN)  # an 6x8 grid
    resized = F.interpolate(_tokens_to_map(guide, (6, 8)), size=(2, 3), mode="bilinear")
    weight = trc.proj.weight.reshape(1, HIDDEN, 1, 1)
    logits = (resized * weight).sum(1) + trc.proj.bias  # (B, 2, 3)
    gate = torch.sigmoid(0.5 * logits).reshape(2, 6, 1)
    with torch.no_grad():
        torch.testing.assert_close(trc(tokens, (2, 3), guide, (6, 8)), tokens * gate)


def test_trc_official_layout_reinterprets_memory_without_transpose():
    model = decoder(schedule=(1, 1, 1), trc="conv", trc_layout="official")
    randomize(model)
    tokens = torch.randn(1, 6, HIDDEN)
    guide = torch.randn(1, 48, HIDDEN)
    scrambled_guide = guide.reshape(1, HIDDEN, 6, 8)  # view(-1, C, H, W) on (B, L, C) memory
    resized = F.interpolate(scrambled_guide, size=(2, 3), mode="bilinear")
    gate = torch.sigmoid(0.1 * model.trc.proj(resized))
    expected = (tokens.reshape(1, HIDDEN, 2, 3) * gate).reshape(1, 6, HIDDEN)
    standard = decoder(schedule=(1, 1, 1), trc="conv")
    standard.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.trc(tokens, (2, 3), guide, (6, 8)), expected)
        assert not torch.allclose(standard.trc(tokens, (2, 3), guide, (6, 8)), expected)


def test_trc_leaves_the_finest_tokens_alone():
    gated = decoder(schedule=(0, 0, 1), trc="linear")
    plain = decoder(schedule=(0, 0, 1))
    randomize(gated)
    plain.load_state_dict(gated.state_dict(), strict=False)
    features = backbone_features(1, 64, 96)
    with torch.no_grad():
        gated_proj = gated.input_projections[2](features[1])
        out_gated, out_plain = gated(features), plain(features)
    assert gated_proj.shape[1] == HIDDEN
    assert not torch.allclose(out_gated.multi_scale_features[2], out_plain.multi_scale_features[2])
    with torch.no_grad():
        gated.trc.proj.weight.zero_()
        gated.trc.proj.bias.fill_(1e4)  # gate == 1: TRC becomes the identity
        torch.testing.assert_close(gated(features).mask_features, plain(features).mask_features)


def test_lpe_replaces_the_3x3_conv_with_a_max_pool():
    light, heavy = decoder(lpe=True), decoder(lpe=False)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(heavy) - params(light) == 9 * HIDDEN * HIDDEN
    block = light.layer_1
    x = torch.randn(1, HIDDEN, 8, 8)
    expected = F.relu(block[1](F.max_pool2d(x, kernel_size=3, stride=1, padding=1)))
    torch.testing.assert_close(block(x), expected)


def test_residual_adds_stage_inputs_back_in_stages_one_and_two():
    with_residual = decoder(schedule=(1, 1, 1), residual=True)
    randomize(with_residual)
    plain = decoder(schedule=(1, 1, 1))
    plain.load_state_dict(with_residual.state_dict())
    features = backbone_features(1, 64, 96)
    with torch.no_grad():
        coarse_in = with_residual.input_projections[0](features[3])
        res = with_residual(features, num_layers=1).multi_scale_features[0]
        ref = plain(features, num_layers=1).multi_scale_features[0]
        torch.testing.assert_close(res, ref + coarse_in)
        # Stage 3 (the last) has no residual: with a (0, 0, 1) schedule the option changes nothing.
        last_only = decoder(schedule=(0, 0, 1), residual=True)
        last_plain = decoder(schedule=(0, 0, 1))
        last_plain.load_state_dict(last_only.state_dict())
        torch.testing.assert_close(
            last_only(features).mask_features, last_plain(features).mask_features
        )
