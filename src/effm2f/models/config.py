"""Model configuration: frozen dataclasses whose defaults are the Mask2Former COCO reference config.

A variant (PRO-SCALE, a schedule ablation, a tiny CPU model) states only its differences from these
defaults (see params/variants.yaml); `effm2f.config.from_dict` builds them and rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKBONE_NAMES = ("r50", "swint", "resnet_test", "swin_test")
"""Backbone presets by name (`effm2f.models.backbone.BACKBONES`)."""
ENCODER_KINDS = ("token_schedule",)
"""Encoder classes by name (`effm2f.models.encoders.ENCODERS`)."""
TRC_KINDS = ("linear", "conv")
TRC_LAYOUTS = ("tokens", "official")


@dataclass(frozen=True)
class EncoderConfig:
    """The transformer encoder ("pixel decoder") and its token schedule.

    Attributes:
        kind: the encoder class (ENCODER_KINDS); "token_schedule" covers M2F, PRO-SCALE and
            ECO-M2F's exits.
        schedule: (p1, p2, p3) encoder layers run over [1/32], [1/32, 1/16] and [1/32, 1/16, 1/8]
            tokens. (0, 0, 6) is the Mask2Former baseline; PRO-SCALE's release uses (3, 3, 3).
        trc: token re-calibration projection, "linear" (Linear C->1) or "conv" (1x1 conv), or None.
        trc_temperature: the gate is sigmoid(trc_temperature * proj(resized 1/8 tokens)).
        trc_layout: "tokens" reshapes (B, L, C) tokens to maps with a transpose; "official"
            reproduces the official code's view(-1, C, H, W) without a transpose, which its released
            weights were trained with.
        lpe: light pixel embedding: the 3x3 conv of the 1/4 map becomes a 3x3 max-pool.
        residual: add the (re-calibrated) input tokens back after each layer of stages 1 and 2.
    """

    kind: str = "token_schedule"
    schedule: tuple[int, int, int] = (0, 0, 6)
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    trc: str | None = None
    trc_temperature: float = 0.1
    trc_layout: str = "tokens"
    lpe: bool = False
    residual: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"encoder kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if len(self.schedule) != 3 or any(int(p) < 0 for p in self.schedule):
            raise ValueError(
                f"schedule must be three non-negative layer counts, got {self.schedule}"
            )
        if sum(self.schedule) == 0:
            raise ValueError("schedule must run at least one encoder layer")
        if self.trc is not None and self.trc not in TRC_KINDS:
            raise ValueError(f"trc must be one of {TRC_KINDS} or null, got {self.trc!r}")
        if self.trc_layout not in TRC_LAYOUTS:
            raise ValueError(f"trc_layout must be one of {TRC_LAYOUTS}, got {self.trc_layout!r}")

    @property
    def num_layers(self) -> int:
        return sum(self.schedule)

    @property
    def schedule_name(self) -> str:
        """The schedule as written in tables and file names, e.g. "3-3-3"."""
        return "-".join(str(p) for p in self.schedule)


@dataclass(frozen=True)
class DecoderConfig:
    """The masked-attention transformer decoder (transformers' implementation).

    ``num_layers`` follows the Mask2Former config's DEC_LAYERS: 10 means 9 masked-attention layers
    plus the prediction from the learned queries before the first layer.
    """

    num_queries: int = 100
    num_layers: int = 10
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    pre_norm: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Set-prediction loss weights and point sampling (Mask2Former reference values)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass(frozen=True)
class ModelConfig:
    """A whole Mask2Former-style model.

    Attributes:
        backbone: a preset name from `effm2f.models.backbone.BACKBONES` (r50, swint, or a tiny one).
        hidden_dim: encoder and decoder width (also the 1/4 map width).
        mask_dim: width of the per-pixel mask embedding.
        norm_groups: GroupNorm groups in the pixel decoder's convolutions.
        freeze_backbone_norm: the backbone's batch-norm layers keep their (pretrained)
            statistics, as detectron2's FrozenBatchNorm; off for backbones trained from scratch.
    """

    backbone: str = "r50"
    freeze_backbone_norm: bool = True
    hidden_dim: int = 256
    mask_dim: int = 256
    norm_groups: int = 32
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of "
                             f"{', '.join(BACKBONE_NAMES)}")
