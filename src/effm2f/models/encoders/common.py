"""What every encoder of the family shares: the output contract and the 1/4 mask branch.

The contract: an encoder takes the backbone's res2..res5 maps (strides 4, 8, 16, 32) and returns
a :class:`PixelDecoderOutput`: the per-pixel mask embedding at 1/4 and the three maps the
transformer decoder reads, coarse to fine (1/32, 1/16, 1/8). An encoder with layers accepts
``num_layers`` (ECO-M2F's exits) and reports ``num_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from fvcore.nn.weight_init import c2_xavier_fill
from torch import Tensor, nn

COMMON_STRIDE = 4  # the mask features live at 1/4


@dataclass
class PixelDecoderOutput:
    """Outputs of the pixel decoder.

    Attributes:
        mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings.
        multi_scale_features: three (B, C, h, w) maps at 1/32, 1/16, 1/8 for the decoder.
    """

    mask_features: Tensor
    multi_scale_features: tuple[Tensor, Tensor, Tensor]


def conv_gn(in_channels: int, out_channels: int, *, groups: int, bias: bool) -> nn.Sequential:
    """1x1 conv + GroupNorm, the lateral / input projection of the pixel decoder."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias),
        nn.GroupNorm(groups, out_channels),
    )


def pixel_embedding(dim: int, *, groups: int, light: bool) -> nn.Sequential:
    """The 1/4 map's output block: 3x3 conv + GN + ReLU, or with LPE a 3x3 max-pool + GN + ReLU."""
    first = (
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        if light
        else nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False)
    )
    return nn.Sequential(first, nn.GroupNorm(groups, dim), nn.ReLU())


class PixelDecoderBase(nn.Module):
    """Base of every encoder: Mask2Former's 1/4 map branch.

    Lateral 1x1 conv + GN on res2, plus the bilinearly upsampled 1/8 encoder map, then the pixel
    embedding (3x3 conv, or LPE's max-pool) and the 1x1 mask projection. The modules are named as
    in transformers (``adapter_1``, ``layer_1``, ``mask_projection``), so checkpoints map alike
    for every encoder.
    """

    def build_mask_branch(self, *, res2_channels: int, hidden_dim: int, mask_dim: int,
                          norm_groups: int, light: bool) -> None:
        self.adapter_1 = conv_gn(res2_channels, hidden_dim, groups=norm_groups, bias=False)
        self.layer_1 = pixel_embedding(hidden_dim, groups=norm_groups, light=light)
        self.mask_projection = nn.Conv2d(hidden_dim, mask_dim, kernel_size=1)

    def reset_mask_branch(self) -> None:
        """fvcore's c2_xavier_fill (Kaiming-uniform, a = 1; zero bias), as the original's."""
        convs = [self.adapter_1[0], self.mask_projection]
        if isinstance(self.layer_1[0], nn.Conv2d):
            convs.append(self.layer_1[0])
        for conv in convs:
            c2_xavier_fill(conv)

    def mask_features(self, res2: Tensor, finest: Tensor) -> Tensor:
        """res2: (B, C2, H/4, W/4); finest: the (B, C, H/8, W/8) encoder map -> mask features."""
        lateral = self.adapter_1(res2)
        fine = lateral + F.interpolate(finest, size=lateral.shape[-2:], mode="bilinear",
                                       align_corners=False)
        return self.mask_projection(self.layer_1(fine))
