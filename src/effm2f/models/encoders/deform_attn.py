"""Multi-scale deformable attention (Deformable DETR), the sampling core every encoder uses.

:class:`MultiScaleDeformableAttention` is the module (its parameter names are those of
transformers' Mask2Former encoder attention, so checkpoints and the baseline-equality test carry
over); :func:`deform_attn_core` is the sampling-and-weighting step behind it. The reference core is
transformers' pure-PyTorch ``multi_scale_deformable_attention`` (``grid_sample`` per level,
zero padding, ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    multi_scale_deformable_attention as reference_core,
)

Shape = tuple[int, int]


def deform_attn_core(
    value: Tensor, shapes: Sequence[Shape], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample ``value`` at the locations and sum the samples with the attention weights.

    Args:
        value: (B, S, heads, d) projected values of all levels, S = sum of h * w.
        shapes: (h, w) of each level, in the order the levels are stacked in ``value``.
        sampling_locations: (B, Q, heads, levels, points, 2) as (x, y) in [0, 1].
        attention_weights: (B, Q, heads, levels, points), softmax-normalised over levels*points.

    Returns:
        (B, Q, heads * d).
    """
    return reference_core(value, list(shapes), sampling_locations, attention_weights)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over ``n_levels`` token maps, ``n_points`` per level and
    head (Deformable DETR; Mask2Former's encoder attention).

    Args:
        embed_dim: token width.
        num_heads: attention heads (embed_dim must divide by it).
        n_levels: levels the queries attend over.
        n_points: sampling points per level and head.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, n_levels: int, n_points: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.d_model = embed_dim
        self.n_heads = num_heads
        self.n_levels = n_levels
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * n_levels * n_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        queries: Tensor,
        values: Tensor,
        reference_points: Tensor,
        shapes: Sequence[Shape],
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``queries`` over the token maps ``values``.

        Args:
            queries: (B, Q, C).
            values: (B, S, C), the levels of ``shapes`` stacked in order.
            reference_points: (B, Q, n_levels, 2) normalised (x, y) per attended level.
            shapes: (h, w) per level.
            query_pos: (B, Q, C) added to the queries before the offset and weight projections.

        Returns:
            (B, Q, C).
        """
        if query_pos is not None:
            queries = queries + query_pos
        batch, num_queries, _ = queries.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(values).view(batch, values.shape[1], heads, -1)
        offsets = self.sampling_offsets(queries).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(queries).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=queries.dtype,
                                  device=queries.device)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        return self.output_proj(deform_attn_core(value, shapes, locations, weights))
