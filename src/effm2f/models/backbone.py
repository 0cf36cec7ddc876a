"""Backbones through the transformers backbone API.

The contract the pixel decoder reads: ``forward(images)`` returns res2..res5 feature maps (strides
4, 8, 16, 32) and ``channels`` lists their widths. A new backbone is a new entry in BACKBONES.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoBackbone, PretrainedConfig, ResNetConfig, SwinConfig

from effm2f.models.config import BACKBONE_NAMES

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _resnet50() -> PretrainedConfig:
    """ResNet-50 (torchvision layout: stride on the 3x3 conv), as Mask2Former's R50."""
    return ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        out_features=STAGES,
    )


def _swin_tiny() -> PretrainedConfig:
    """Swin-T (patch 4, window 7, drop path 0.3), as Mask2Former's Swin-T config."""
    return SwinConfig(
        image_size=224,
        patch_size=4,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        drop_path_rate=0.3,
        out_features=STAGES,
    )


def _resnet_test() -> PretrainedConfig:
    """A test-size ResNet (basic blocks, one per stage) for CPU training in minutes."""
    return ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 64, 128, 256],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=STAGES,
    )


def _swin_test() -> PretrainedConfig:
    """A test-size Swin (window 4, one block per stage) for CPU tests."""
    return SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        drop_path_rate=0.0,
        out_features=STAGES,
    )


BACKBONES: dict[str, Callable[[], PretrainedConfig]] = {
    "r50": _resnet50,
    "swint": _swin_tiny,
    "resnet_test": _resnet_test,
    "swin_test": _swin_test,
}
assert tuple(BACKBONES) == BACKBONE_NAMES, "models.config.BACKBONE_NAMES names every backbone"


# Ours, not transformers' DetrFrozenBatchNorm2d (and its replace_batch_norm): that one fixes eps at
# 1e-5, turns half inputs into fp32 outputs, differs from F.batch_norm in the last bits (rsqrt form)
# and drops num_batches_tracked from the state dict; detectron2's is F.batch_norm, as here.
class FrozenBatchNorm2d(nn.Module):
    """Batch-norm with fixed statistics and affine parameters, as detectron2 trains its ResNets.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` in train and eval mode alike, with no
    gradient to its values. The buffers keep BatchNorm2d's names, so its checkpoints load unchanged.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                            ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), value))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a FrozenBatchNorm2d with its values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(child.state_dict())
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


class Backbone(nn.Module):
    """A transformers backbone returning res2..res5.

    Args:
        name: a preset of BACKBONES.
        freeze_norm: freeze its batch-norm layers (detectron2's FrozenBN for pretrained ResNets;
            small per-GPU batches make batch statistics noisy).

    Attributes:
        channels: widths of res2..res5.
        strides: (4, 8, 16, 32).
    """

    strides = (4, 8, 16, 32)

    def __init__(self, name: str, *, freeze_norm: bool = False) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
        self.name = name
        self.body = AutoBackbone.from_config(BACKBONES[name]())
        if freeze_norm:
            freeze_batch_norm(self.body)
        self.channels: list[int] = list(self.body.channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: (B, 3, H, W) normalised -> [res2, res3, res4, res5]."""
        return list(self.body(images).feature_maps)
