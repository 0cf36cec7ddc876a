"""Initial weights and reference points: pinned under a seed, checked against the original rules.

The digests in ``tests/fixtures/initialisation.json`` were taken once from the code before the
library swaps of issue 15, so any change of an initial weight under a fixed seed fails here. The
rules are the original code's (facebookresearch/Mask2Former): ``MSDeformAttn._reset_parameters``
(zero offset weights, a ring of offset biases, zero attention weights, Xavier value and output
projections), ``MSDeformAttnTransformerEncoderOnly._reset_parameters`` (Xavier for every matrix,
``normal_`` level embedding), the pixel decoder's Xavier input projections, and its decoder layers'
Xavier matrices. Regenerate the digests only for a deliberate change:
``PYTHONPATH=tests python tests/models/test_initialisation.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerTransformerModule

from effm2f.models.encoders import TokenSchedulePixelDecoder
from effm2f.models.encoders.token_schedule import reference_points
from effm2f.models.mask2former import init_transformer_decoder
from support.models import CHANNELS, HIDDEN, tiny_encoder

DIGESTS = Path(__file__).resolve().parents[1] / "fixtures" / "initialisation.json"
HEADS = 4


def encoder() -> TokenSchedulePixelDecoder:
    """A pixel decoder whose layers attend over 1, 2 and 3 levels, with TRC, under seed 0."""
    torch.manual_seed(0)
    return TokenSchedulePixelDecoder(in_channels=CHANNELS, hidden_dim=HIDDEN, mask_dim=HIDDEN,
                                     norm_groups=32,
                                     config=tiny_encoder(schedule=(1, 1, 1), trc="linear"))


def decoder(in_features: int = HIDDEN) -> Mask2FormerTransformerModule:
    """transformers' masked-attention decoder initialised as our model does, under seed 0.

    ``in_features != HIDDEN`` gives it 1x1 input projections (identities otherwise).
    """
    torch.manual_seed(0)
    config = Mask2FormerConfig(hidden_dim=HIDDEN, num_queries=8, decoder_layers=3,
                               num_attention_heads=HEADS, dim_feedforward=96)
    module = Mask2FormerTransformerModule(in_features=in_features, config=config)
    init_transformer_decoder(module)
    return module


def digests(module: nn.Module) -> dict[str, str]:
    """Every state tensor's bytes, hashed."""
    return {name: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, t in module.state_dict().items()}


def all_digests() -> dict[str, dict[str, str]]:
    return {"encoder": digests(encoder()), "decoder": digests(decoder()),
            "decoder_projected": digests(decoder(in_features=2 * HIDDEN))}


def test_initial_weights_under_a_seed_are_pinned():
    pinned = json.loads(DIGESTS.read_text())
    assert all_digests() == pinned


def xavier_bound(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(6.0 / (fan_in + fan_out))


def assert_xavier(weight: torch.Tensor) -> None:
    """Uniform on +-bound: inside it and filling it (transformers' normal(0.02) would not)."""
    bound = xavier_bound(weight)
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound


def test_deformable_attention_follows_msdeformattn_reset_parameters():
    for layer in encoder().encoder.layers:
        attention = layer.self_attn
        levels, points = attention.n_levels, attention.n_points
        assert not attention.sampling_offsets.weight.any()
        # 4 heads at angles 0, 90, 180, 270 degrees, scaled to a max-norm of 1, times point k + 1
        ring = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        expected = ring[:, None, None, :] * torch.arange(1.0, points + 1)[None, None, :, None]
        bias = attention.sampling_offsets.bias.detach().view(HEADS, levels, points, 2)
        torch.testing.assert_close(bias, expected.expand(HEADS, levels, points, 2), atol=1e-6,
                                   rtol=0)
        assert not attention.attention_weights.weight.any()
        assert not attention.attention_weights.bias.any()
        for projection in (attention.value_proj, attention.output_proj):
            assert_xavier(projection.weight)
            assert not projection.bias.any()


def test_encoder_follows_the_original_reset_parameters():
    module = encoder()
    for layer in module.encoder.layers:
        assert_xavier(layer.fc1.weight)
        assert_xavier(layer.fc2.weight)
    assert 0.7 < module.level_embed.std() < 1.3  # normal_: N(0, 1)
    for projection in module.input_projections:
        assert_xavier(projection[0].weight)
        assert not projection[0].bias.any()


@pytest.mark.parametrize("in_features", [HIDDEN, 2 * HIDDEN])
def test_decoder_layers_get_xavier_matrices_and_a_zero_cross_attention_bias(in_features):
    module = decoder(in_features)
    for layer in module.decoder.layers:
        attention = layer.self_attn
        packed = (attention.q_proj, attention.k_proj, attention.v_proj)
        for param in layer.parameters():
            if param.dim() > 1 and not any(param is p.weight for p in packed):
                assert_xavier(param)
        # the original's self-attention: one packed (3C, C) Xavier in-projection, zero biases
        assert_xavier(torch.cat([p.weight for p in packed]))
        for projection in (*packed, attention.out_proj):
            assert not projection.bias.any()
        assert not layer.cross_attn.in_proj_bias.any()
        assert not layer.cross_attn.out_proj.bias.any()
    for projection in module.input_projections:
        if isinstance(projection, nn.Conv2d):
            assert_xavier(projection.weight)
            assert not projection.bias.any()
    assert any(isinstance(p, nn.Conv2d) for p in module.input_projections) == (
        in_features != HIDDEN)


def test_reference_points_are_the_token_centres_of_every_level():
    shapes = [(2, 3), (1, 1), (5, 4), (128, 256)]
    points = reference_points(shapes, batch=2, device=torch.device("cpu"))
    hand = []
    for height, width in shapes:  # (x, y) = ((j + 0.5) / W, (i + 0.5) / H), row-major
        hand += [((j + 0.5) / width, (i + 0.5) / height) for i in range(height)
                 for j in range(width)]
    expected = torch.tensor(hand, dtype=torch.float32)
    assert points.shape == (2, len(hand), len(shapes), 2)
    assert points.dtype == torch.float32
    for image in range(2):
        for level in range(len(shapes)):  # valid ratio 1: the same point for every level
            assert torch.equal(points[image, :, level], expected)


if __name__ == "__main__":
    DIGESTS.write_text(json.dumps(all_digests(), indent=1, sort_keys=True) + "\n")
