"""Mask2Former assembled from a backbone, our pixel decoder and transformers' decoder and loss.

transformers' Mask2Former is the reference implementation we build on: its masked-attention
decoder, Hungarian matcher and set-prediction loss are used as they are; the pixel decoder is ours
(`effm2f.models.encoders`) so that one package owns the encoder family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from effm2f.models.backbone import Backbone
from effm2f.models.config import ModelConfig
from effm2f.models.encoders import PixelDecoderOutput, build_encoder


@dataclass
class Mask2FormerOutput:
    """Predictions of every decoder layer (the last entry is the final prediction).

    Attributes:
        class_logits: per layer (B, Q, K + 1); the last class is "no object".
        mask_logits: per layer (B, Q, H/4, W/4).
    """

    class_logits: list[Tensor]
    mask_logits: list[Tensor]


def transformers_config(config: ModelConfig, num_classes: int) -> Mask2FormerConfig:
    """The transformers config that drives its decoder and loss from our model config."""
    return Mask2FormerConfig(
        num_labels=num_classes,
        feature_size=config.hidden_dim,
        mask_feature_size=config.mask_dim,
        hidden_dim=config.hidden_dim,
        num_queries=config.decoder.num_queries,
        decoder_layers=config.decoder.num_layers,
        num_attention_heads=config.decoder.num_heads,
        dim_feedforward=config.decoder.ffn_dim,
        dropout=config.decoder.dropout,
        pre_norm=config.decoder.pre_norm,
        class_weight=config.loss.class_weight,
        mask_weight=config.loss.mask_weight,
        dice_weight=config.loss.dice_weight,
        no_object_weight=config.loss.no_object_weight,
        train_num_points=config.loss.train_num_points,
        oversample_ratio=config.loss.oversample_ratio,
        importance_sample_ratio=config.loss.importance_sample_ratio,
    )


class Mask2Former(nn.Module):
    """Mask2Former-style universal segmentation model.

    Args:
        config: the model config (backbone, encoder schedule, decoder, loss).
        num_classes: number of categories K (predictions have K + 1 classes).
    """

    def __init__(self, *, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        hf_config = transformers_config(config, num_classes)
        self.backbone = Backbone(config.backbone, freeze_norm=config.freeze_backbone_norm)
        self.pixel_decoder = build_encoder(
            in_channels=self.backbone.channels,
            hidden_dim=config.hidden_dim,
            mask_dim=config.mask_dim,
            norm_groups=config.norm_groups,
            config=config.encoder,
        )
        self.transformer_decoder = Mask2FormerTransformerModule(
            in_features=config.hidden_dim, config=hf_config
        )
        self.class_predictor = nn.Linear(config.hidden_dim, num_classes + 1)
        self.loss_weights = {
            "loss_cross_entropy": config.loss.class_weight,
            "loss_mask": config.loss.mask_weight,
            "loss_dice": config.loss.dice_weight,
        }
        self.criterion = Mask2FormerLoss(config=hf_config, weight_dict=self.loss_weights)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)
        init_transformer_decoder(self.transformer_decoder)

    @property
    def num_encoder_layers(self) -> int:
        return self.pixel_decoder.num_layers

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 255] -> normalised float."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def encode(self, images: Tensor, num_encoder_layers: int | None = None) -> PixelDecoderOutput:
        """Backbone and pixel decoder: the per-pixel embedding and the decoder's feature maps."""
        return self.pixel_decoder(self.backbone(self.normalize(images)), num_encoder_layers)

    def decode(self, encoded: PixelDecoderOutput) -> Mask2FormerOutput:
        """The masked-attention decoder over the encoder outputs."""
        decoded = self.transformer_decoder(
            multi_scale_features=list(encoded.multi_scale_features),
            mask_features=encoded.mask_features,
        )
        class_logits = [
            self.class_predictor(hidden.transpose(0, 1))
            for hidden in decoded.intermediate_hidden_states
        ]
        return Mask2FormerOutput(class_logits, list(decoded.masks_queries_logits))

    def forward(self, images: Tensor, num_encoder_layers: int | None = None) -> Mask2FormerOutput:
        """images: (B, 3, H, W) in [0, 255], H and W multiples of 32.

        ``num_encoder_layers`` runs only the first k encoder layers (an ECO-M2F exit).
        """
        return self.decode(self.encode(images, num_encoder_layers))

    def loss(
        self,
        output: Mask2FormerOutput,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Weighted set-prediction losses of the final and every auxiliary prediction.

        Args:
            mask_labels: per image (N_i, H, W) binary masks at the padded input resolution.
            class_labels: per image (N_i,) category ids in [0, K).
        """
        auxiliary = [
            {"masks_queries_logits": masks, "class_queries_logits": classes}
            for masks, classes in zip(
                output.mask_logits[:-1], output.class_logits[:-1], strict=True
            )
        ]
        losses = self.criterion(
            masks_queries_logits=output.mask_logits[-1],
            class_queries_logits=output.class_logits[-1],
            mask_labels=[m.float() for m in mask_labels],
            class_labels=list(class_labels),
            auxiliary_predictions=auxiliary,
        )
        return {name: value * self._loss_weight(name) for name, value in losses.items()}

    def _loss_weight(self, name: str) -> float:
        return next(w for key, w in self.loss_weights.items() if name.startswith(key))


def init_transformer_decoder(module: Mask2FormerTransformerModule) -> None:
    """The original Mask2Former's decoder initialisation, through transformers' where they agree.

    ``Mask2FormerPreTrainedModel._init_weights`` (the hook its models' ``post_init`` calls) for the
    decoder layers (Xavier for every matrix, zero cross-attention in-projection bias) and for the
    module (Xavier 1x1 input projections, where there are any), in that order. Then each layer's
    self-attention as the original's: there it is one ``nn.MultiheadAttention`` whose packed
    (3C, C) in-projection gets one Xavier draw (bound sqrt(6 / 4C), not the sqrt(6 / 2C) of
    three separate C x C draws) and whose biases are zero; transformers splits it into q/k/v
    layers with default-initialised biases.
    """
    initializer = Mask2FormerPreTrainedModel(module.decoder.config)
    for layer in module.decoder.layers:
        initializer._init_weights(layer)
    initializer._init_weights(module)
    for layer in module.decoder.layers:
        init_packed_self_attention(layer.self_attn)


def init_packed_self_attention(attention: nn.Module) -> None:
    """q/k/v projections as slices of one Xavier-uniform (3C, C) matrix, zero biases (the
    original's nn.MultiheadAttention in_proj); the output projection keeps its Xavier weight."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    packed = torch.empty(sum(p.out_features for p in projections), projections[0].in_features)
    nn.init.xavier_uniform_(packed)
    with torch.no_grad():
        for projection, rows in zip(projections, packed.split(
                [p.out_features for p in projections]), strict=True):
            projection.weight.copy_(rows)
        for projection in (*projections, attention.out_proj):
            projection.bias.zero_()
