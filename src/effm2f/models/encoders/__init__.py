"""The encoder ("pixel decoder") family of Mask2Former-style models.

Every encoder keeps one contract (`common.PixelDecoderOutput`: backbone res2..res5 in; the mask
features and the 1/32, 1/16, 1/8 maps out), so the decoder, loss, inference, GFLOPs and reports
never depend on which one runs. ``EncoderConfig.kind`` picks the class from :data:`ENCODERS`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from effm2f.models.config import ENCODER_KINDS, EncoderConfig
from effm2f.models.encoders.common import PixelDecoderOutput
from effm2f.models.encoders.token_schedule import TokenSchedulePixelDecoder

ENCODERS: dict[str, type[nn.Module]] = {
    "token_schedule": TokenSchedulePixelDecoder,
}
assert set(ENCODERS) == set(ENCODER_KINDS), "models.config.ENCODER_KINDS names every encoder"


def build_encoder(*, in_channels: Sequence[int], hidden_dim: int, mask_dim: int,
                  norm_groups: int, config: EncoderConfig) -> nn.Module:
    """The encoder of kind ``config.kind`` for backbone features of ``in_channels``."""
    return ENCODERS[config.kind](in_channels=in_channels, hidden_dim=hidden_dim,
                                 mask_dim=mask_dim, norm_groups=norm_groups, config=config)


__all__ = ["ENCODERS", "PixelDecoderOutput", "TokenSchedulePixelDecoder", "build_encoder"]
