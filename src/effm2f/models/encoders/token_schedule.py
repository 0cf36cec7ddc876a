"""The token-schedule pixel decoder: Mask2Former's encoder, PRO-SCALE and ECO-M2F's early exits.

One module owns the token schedule. A schedule (p1, p2, p3) runs p1 deformable-attention layers over
the 1/32 tokens, then p2 layers over [1/32, 1/16] and p3 layers over [1/32, 1/16, 1/8]; each
stage's layers attend over as many levels as the stage has. (0, 0, 6) is the Mask2Former baseline
and, with the same weights, gives the same outputs as transformers' Mask2FormerPixelDecoder (the
parameter names match it). PRO-SCALE adds token re-calibration (TRC), the light pixel embedding
(LPE) and an optional residual; ECO-M2F runs only the first k layers (``num_layers``).

Token order is coarse to fine everywhere: level 0 = 1/32, level 1 = 1/16, level 2 = 1/8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderOnly,
    Mask2FormerSinePositionEmbedding,
)

from effm2f.models.config import EncoderConfig
from effm2f.models.encoders.common import PixelDecoderBase, PixelDecoderOutput, conv_gn
from effm2f.models.encoders.deform_attn import MultiScaleDeformableAttention, Shape

NUM_LEVELS = 3  # the encoder reads res3, res4, res5 (strides 8, 16, 32)


class EncoderLayer(nn.Module):
    """A post-norm deformable-attention encoder layer over ``num_levels`` token levels."""

    def __init__(
        self, *, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dim=dim, num_heads=num_heads, n_levels=num_levels, n_points=num_points
        )
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = dropout

    @property
    def num_levels(self) -> int:
        return self.self_attn.n_levels

    def forward(
        self, tokens: Tensor, pos: Tensor, reference_points: Tensor, shapes: list[Shape]
    ) -> Tensor:
        """tokens, pos: (B, L, C); reference_points: (B, L, num_levels, 2) in [0, 1]."""
        attended = self.self_attn(tokens, tokens, reference_points, shapes, query_pos=pos)
        tokens = self.self_attn_layer_norm(tokens + self._drop(attended))
        hidden = self._drop(F.relu(self.fc1(tokens)))
        return self.final_layer_norm(tokens + self._drop(self.fc2(hidden)))

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, p=self.dropout, training=self.training)


class TokenRecalibration(nn.Module):
    """TRC: gate coarse tokens by a projection of the 1/8 tokens resized to their grid.

    gate = sigmoid(temperature * proj(resize(tokens_1/8))); output = tokens * gate. One module is
    shared by the 1/32 and the 1/16 tokens. ``layout="official"`` reinterprets (B, L, C) memory as
    (B, C, H, W) without a transpose, as the official code does, for its released weights.
    """

    def __init__(self, *, dim: int, kind: str, temperature: float, layout: str) -> None:
        super().__init__()
        self.kind = kind
        self.layout = layout
        self.temperature = temperature
        self.proj = nn.Linear(dim, 1) if kind == "linear" else nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, tokens: Tensor, shape: Shape, guide: Tensor, guide_shape: Shape) -> Tensor:
        """tokens: (B, h*w, C) at ``shape``; guide: (B, H*W, C) 1/8 tokens at ``guide_shape``."""
        batch, length, channels = tokens.shape
        resized = F.interpolate(
            self._to_map(guide, guide_shape), size=shape, mode="bilinear", align_corners=False
        )
        if self.kind == "linear":
            gate = self._gate(self.proj(self._to_tokens(resized)))  # (B, L, 1)
            return tokens * gate
        gate_map = self._gate(self.proj(resized))  # (B, 1, h, w)
        if self.layout == "official":
            return (tokens.reshape(batch, channels, *shape) * gate_map).reshape(
                batch, length, channels
            )
        return tokens * gate_map.flatten(2).transpose(1, 2)

    def _gate(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(self.temperature * logits)

    def _to_map(self, tokens: Tensor, shape: Shape) -> Tensor:
        batch, _, channels = tokens.shape
        if self.layout == "official":
            return tokens.reshape(batch, channels, *shape)
        return tokens.transpose(1, 2).reshape(batch, channels, *shape)

    def _to_tokens(self, feature_map: Tensor) -> Tensor:
        batch, channels = feature_map.shape[:2]
        if self.layout == "official":
            return feature_map.reshape(batch, -1, channels)
        return feature_map.flatten(2).transpose(1, 2)


def reference_points(shapes: Sequence[Shape], batch: int, device: torch.device) -> Tensor:
    """Normalised token centres for every level, repeated per attended level: (B, L, n, 2) float32.

    transformers' ``get_reference_points`` (the original's) with every valid ratio 1: Mask2Former
    never pads its feature maps.
    """
    valid_ratios = torch.ones(batch, len(shapes), 2, device=device)
    return Mask2FormerPixelDecoderEncoderOnly.get_reference_points(list(shapes), valid_ratios,
                                                                   device)


class TokenSchedulePixelDecoder(PixelDecoderBase):
    """Mask2Former's multi-scale deformable-attention pixel decoder with a token schedule.

    Args:
        in_channels: channels of the backbone features res2..res5 (strides 4, 8, 16, 32).
        hidden_dim: token width C.
        mask_dim: width of the per-pixel mask embedding.
        norm_groups: GroupNorm groups.
        config: schedule, attention sizes and the PRO-SCALE options.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        hidden_dim: int,
        mask_dim: int,
        norm_groups: int,
        config: EncoderConfig,
    ) -> None:
        super().__init__()
        if len(in_channels) != NUM_LEVELS + 1:
            raise ValueError(f"expected 4 backbone features (res2..res5), got {len(in_channels)}")
        self.config = config
        self.schedule = tuple(int(p) for p in config.schedule)
        self.position_embedding = Mask2FormerSinePositionEmbedding(
            num_position_features=hidden_dim // 2, normalize=True
        )
        self.level_embed = nn.Parameter(torch.empty(NUM_LEVELS, hidden_dim))
        coarse_to_fine = list(in_channels[1:])[::-1]
        self.input_projections = nn.ModuleList(
            conv_gn(c, hidden_dim, groups=norm_groups, bias=True) for c in coarse_to_fine
        )
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            EncoderLayer(
                dim=hidden_dim,
                num_heads=config.num_heads,
                num_levels=stage + 1,
                num_points=config.num_points,
                ffn_dim=config.ffn_dim,
                dropout=config.dropout,
            )
            for stage, count in enumerate(self.schedule)
            for _ in range(count)
        )
        self.trc = (
            TokenRecalibration(
                dim=hidden_dim,
                kind=config.trc,
                temperature=config.trc_temperature,
                layout=config.trc_layout,
            )
            if config.trc
            else None
        )
        self.build_mask_branch(res2_channels=in_channels[0], hidden_dim=hidden_dim,
                               mask_dim=mask_dim, norm_groups=norm_groups, light=config.lpe)
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    def reset_parameters(self) -> None:
        """Mask2Former's initialisation (Deformable DETR's grid init for the sampling offsets)."""
        for param in self.encoder.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for layer in self.encoder.layers:
            init_deformable_attention(layer.self_attn)
        nn.init.normal_(self.level_embed)
        for projection in self.input_projections:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.reset_mask_branch()

    def forward(
        self, features: Sequence[Tensor], num_layers: int | None = None
    ) -> PixelDecoderOutput:
        """Encode backbone features.

        Args:
            features: res2..res5 maps, (B, C_i, H/s, W/s) for s = 4, 8, 16, 32.
            num_layers: run only the first k encoder layers of the schedule (ECO-M2F exits);
                stages left without layers still add their tokens. None runs all layers.
        """
        if num_layers is not None and not 1 <= num_layers <= self.num_layers:
            raise ValueError(f"num_layers must be in 1..{self.num_layers}, got {num_layers}")
        levels = list(features[1:])[::-1]  # res5, res4, res3
        inputs = [self.input_projections[i](x) for i, x in enumerate(levels)]
        shapes = [(x.shape[2], x.shape[3]) for x in inputs]
        tokens = [x.flatten(2).transpose(1, 2) for x in inputs]
        pos = [
            self.position_embedding(x.shape, x.device, x.dtype).flatten(2).transpose(1, 2)
            + self.level_embed[i].view(1, 1, -1)
            for i, x in enumerate(inputs)
        ]
        tokens = self._recalibrate(tokens, shapes)
        encoded = self._encode(tokens, pos, shapes, num_layers)
        per_level = encoded.split([h * w for h, w in shapes], dim=1)
        maps = [
            level.transpose(1, 2).reshape(level.shape[0], -1, *shape)
            for level, shape in zip(per_level, shapes, strict=True)
        ]
        return PixelDecoderOutput(mask_features=self.mask_features(features[0], maps[-1]),
                                  multi_scale_features=tuple(maps))

    def _recalibrate(self, tokens: list[Tensor], shapes: list[Shape]) -> list[Tensor]:
        """Gate the 1/32 and 1/16 tokens by the 1/8 tokens (TRC); identity without TRC."""
        if self.trc is None:
            return tokens
        guide, guide_shape = tokens[-1], shapes[-1]
        gated = [self.trc(tokens[i], shapes[i], guide, guide_shape) for i in range(NUM_LEVELS - 1)]
        return gated + [guide]

    def _encode(
        self, tokens: list[Tensor], pos: list[Tensor], shapes: list[Shape], num_layers: int | None
    ) -> Tensor:
        """Run the schedule: stage s attends over levels 0..s; returns (B, L_total, C)."""
        budget = self.num_layers if num_layers is None else num_layers
        batch = tokens[0].shape[0]
        hidden = tokens[0][:, :0]
        first = 0
        for stage, count in enumerate(self.schedule):
            stage_layers = self.encoder.layers[first : first + count]
            first += count
            hidden = torch.cat([hidden, tokens[stage]], dim=1)
            stage_shapes = shapes[: stage + 1]
            stage_pos = torch.cat(pos[: stage + 1], dim=1)
            points = reference_points(stage_shapes, batch, hidden.device).to(hidden.dtype)
            stage_inputs = torch.cat(tokens[: stage + 1], dim=1)
            for layer in stage_layers[: max(budget, 0)]:
                hidden = layer(hidden, stage_pos, points, stage_shapes)
                if self.config.residual and stage < NUM_LEVELS - 1:
                    hidden = hidden + stage_inputs
            budget -= count
        return hidden


# Ours, not transformers' Mask2Former ``_init_weights``: it dispatches on its own attention class,
# which this is not, and gives the encoder's other matrices normal(0.02) where the original's
# MSDeformAttnTransformerEncoderOnly._reset_parameters gives Xavier (its branch for its own
# class is this function, draw for draw).
def init_deformable_attention(attention: MultiScaleDeformableAttention) -> None:
    """Deformable DETR's init: offsets point outwards on a per-head ring, uniform weights."""
    heads, levels, points = attention.n_heads, attention.n_levels, attention.n_points
    nn.init.zeros_(attention.sampling_offsets.weight)
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2)
    grid = grid.repeat(1, levels, points, 1)
    grid = grid * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
    with torch.no_grad():
        attention.sampling_offsets.bias.copy_(grid.view(-1))
    nn.init.zeros_(attention.attention_weights.weight)
    nn.init.zeros_(attention.attention_weights.bias)
    nn.init.xavier_uniform_(attention.value_proj.weight)
    nn.init.zeros_(attention.value_proj.bias)
    nn.init.xavier_uniform_(attention.output_proj.weight)
    nn.init.zeros_(attention.output_proj.bias)
