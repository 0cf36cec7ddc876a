"""Checkpoint import without detectron2 and without downloads.

Formats (the ``fmt`` argument everywhere; ``FORMATS`` lists them):

- ``detectron2``: Mask2Former model-zoo pickles
  (``{"model": {name: numpy array}, "__author__": ...}``) and detectron2 ``.pth`` files
  (``{"model": {name: tensor}, ...}``), e.g. the official PRO-SCALE weights. Whole model:
  R50 or D2SwinTransformer backbone, pixel decoder (incl. PRO-SCALE's ``token_excite`` TRC and
  its LPE ``layer_1``), masked-attention decoder and class head.
  A backbone-only detectron2 file (``stem.*``, ``res2.*`` ... without a ``backbone.`` prefix, e.g.
  ``R-50.pkl``) is read as a backbone.
- ``transformers``: Hugging Face ``Mask2FormerForUniversalSegmentation`` state dicts from a local
  ``.safetensors`` / ``.bin`` / ``.pth`` file (hub names, including the Swin names used before
  transformers 5: ``attention.self.query``, ``intermediate.dense``, ...).
- ``torchvision-resnet``: torchvision ResNet ImageNet weights into ``backbone.body``.
- ``swin``: the official Swin ImageNet checkpoint (``{"model": {patch_embed..., layers..., norm,
  head}}``, also its detectron2 ``.pkl`` conversion) into ``backbone.body``.
- ``effm2f``: our own state dict names (what ``effm2f model import`` writes).

Each format is one table of `Rule` s, written as name templates that read the same in both
directions, so the same table imports and exports (`export_state_dict`). In a template ``{i}`` is a
number, ``{i+2}`` a number written two higher on that side (``res{s+2}`` <-> ``stages.{s}``),
``{param}`` one attribute name (``weight``, ``running_mean``, ...) and ``{rest}`` any dotted tail. A
rule with several targets splits the source tensor into equal chunks along dim 0 (a fused
``qkv`` / ``in_proj`` into q, k, v in that order) and concatenates them on export.

Every import checks shapes before touching the model (a mismatch is an error naming both keys and
shapes) and returns an `ImportReport` with the loaded, missing, unexpected and deliberately skipped
keys.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from effm2f.errors import InputError
from effm2f.untrusted import UnsafeFileError, load_array_pickle, load_torch_file

__all__ = [
    "FORMATS",
    "CheckpointError",
    "ImportReport",
    "Rule",
    "Table",
    "TABLES",
    "export_state_dict",
    "import_state_dict",
    "load_checkpoint",
    "read_checkpoint",
]


class CheckpointError(InputError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# --------------------------------------------------------------------------------------------------
# Name templates


_PLACEHOLDER = re.compile(r"\{(\w+)([+-]\d+)?\}")
_WORD_PLACEHOLDERS = {"param": r"[A-Za-z_]+"}  # one attribute name, no dot
_ANY_PLACEHOLDERS = {"rest": r".+"}  # any dotted tail


class Template:
    """A key name with placeholders that can be matched and rendered (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offsets: dict[str, int] = {}
        pattern, last = [], 0
        for match in _PLACEHOLDER.finditer(text):
            name, offset = match.group(1), int(match.group(2) or 0)
            if name in self.offsets:
                raise ValueError(f"template {text!r} uses {{{name}}} twice")
            self.offsets[name] = offset
            kind = _WORD_PLACEHOLDERS.get(name) or _ANY_PLACEHOLDERS.get(name) or r"\d+"
            pattern.append(re.escape(text[last : match.start()]))
            pattern.append(f"(?P<{name}>{kind})")
            last = match.end()
        pattern.append(re.escape(text[last:]))
        self.regex = re.compile("".join(pattern))

    def match(self, key: str) -> dict[str, str | int] | None:
        found = self.regex.fullmatch(key)
        if found is None:
            return None
        values: dict[str, str | int] = {}
        for name, offset in self.offsets.items():
            raw = found.group(name)
            if name in _WORD_PLACEHOLDERS or name in _ANY_PLACEHOLDERS:
                values[name] = raw
            else:
                value = int(raw) - offset
                if value < 0 or str(int(raw)) != raw:
                    return None
                values[name] = value
        return values

    def render(self, values: Mapping[str, str | int]) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, offset = match.group(1), int(match.group(2) or 0)
            value = values[name]
            return str(value + offset) if isinstance(value, int) else str(value)

        return _PLACEHOLDER.sub(substitute, self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


@dataclass(frozen=True)
class Rule:
    """``source`` (checkpoint name) <-> ``target`` (our name); several targets split dim 0."""

    source: str
    target: str | tuple[str, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else tuple(self.target)


@dataclass(frozen=True)
class Skip:
    """Checkpoint entries dropped on purpose (derived buffers, classifier heads), and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Mapped:
    """Where one checkpoint key goes: ``targets`` (one, or the chunks of a split), or skipped."""

    targets: tuple[str, ...] = ()
    skipped: str | None = None


def _prefixed(
    source_prefix: str, target_prefix: str, rules: Iterable[tuple[str, Any]]
) -> list[Rule]:
    out = []
    for source, target in rules:
        targets = (target,) if isinstance(target, str) else target
        rendered = tuple(target_prefix + t for t in targets)
        out.append(Rule(source_prefix + source, rendered[0] if len(rendered) == 1 else rendered))
    return out


class Table:
    """One checkpoint format: skips, rules (first match wins), and the model keys it fills."""

    def __init__(
        self,
        name: str,
        rules: Iterable[Rule],
        skips: Iterable[Skip] = (),
        *,
        scope: str = "",
        description: str = "",
    ) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.skips = tuple(skips)
        self.scope = scope  # model keys outside this prefix are not expected from this format
        self.description = description
        self._compiled = [
            (Template(r.source), tuple(Template(t) for t in r.targets)) for r in self.rules
        ]
        self._skips = [(Template(s.source), s.reason) for s in self.skips]

    def map_key(self, key: str) -> Mapped | None:
        """Our name(s) for checkpoint key ``key``; ``Mapped(skipped=reason)``; None: no rule.

        Skips are checked first (a derived buffer is never loaded), then the rules in order.
        """
        for source, reason in self._skips:
            if source.match(key) is not None:
                return Mapped(skipped=reason)
        for source, targets in self._compiled:
            values = source.match(key)
            if values is not None:
                return Mapped(targets=tuple(t.render(values) for t in targets))
        return None

    def export_keys(self, model_keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Checkpoint key -> the model keys it is made of (concatenated along dim 0), in order."""
        remaining = list(model_keys)
        available = set(remaining)
        plan: dict[str, tuple[str, ...]] = {}
        for source, targets in self._compiled:
            for key in remaining:
                if key not in available:
                    continue
                values = targets[0].match(key)
                if values is None:
                    continue
                parts = tuple(t.render(values) for t in targets)
                if not all(p in available for p in parts):
                    continue
                plan[source.render(values)] = parts
                available.difference_update(parts)
        return plan


# --------------------------------------------------------------------------------------------------
# The tables. Sources on the left (checkpoint names), ours on the right.

# transformers' ResNet: embedder.embedder.{convolution,normalization}; encoder.stages.{s}.layers.{b}
# with layer.{j} (conv j+1 of the block: for a bottleneck layer.1 is the 3x3 conv that carries the
# stride, as in torchvision and in Mask2Former's R50) and shortcut (the projection of block 0).
_RESNET_BLOCK = "encoder.stages.{s}.layers.{b}"

DETECTRON2_RESNET = [
    ("stem.conv1.weight", "embedder.embedder.convolution.weight"),
    ("stem.conv1.norm.{param}", "embedder.embedder.normalization.{param}"),
    ("res{s+2}.{b}.conv{j+1}.weight", _RESNET_BLOCK + ".layer.{j}.convolution.weight"),
    ("res{s+2}.{b}.conv{j+1}.norm.{param}", _RESNET_BLOCK + ".layer.{j}.normalization.{param}"),
    ("res{s+2}.{b}.shortcut.weight", _RESNET_BLOCK + ".shortcut.convolution.weight"),
    ("res{s+2}.{b}.shortcut.norm.{param}", _RESNET_BLOCK + ".shortcut.normalization.{param}"),
]

TORCHVISION_RESNET = [
    ("conv1.weight", "embedder.embedder.convolution.weight"),
    ("bn1.{param}", "embedder.embedder.normalization.{param}"),
    ("layer{s+1}.{b}.conv{j+1}.weight", _RESNET_BLOCK + ".layer.{j}.convolution.weight"),
    ("layer{s+1}.{b}.bn{j+1}.{param}", _RESNET_BLOCK + ".layer.{j}.normalization.{param}"),
    ("layer{s+1}.{b}.downsample.0.weight", _RESNET_BLOCK + ".shortcut.convolution.weight"),
    ("layer{s+1}.{b}.downsample.1.{param}", _RESNET_BLOCK + ".shortcut.normalization.{param}"),
]

# The original Swin code (official ImageNet release and Mask2Former's D2SwinTransformer) ->
# transformers' Swin. The fused qkv projection is [q; k; v] along its output dim.
_SWIN_BLOCK_SRC = "layers.{s}.blocks.{b}"
_SWIN_BLOCK = "swin.encoder.layers.{s}.blocks.{b}"

SWIN = [
    ("patch_embed.proj.{param}", "swin.embeddings.patch_embeddings.projection.{param}"),
    ("patch_embed.norm.{param}", "swin.embeddings.norm.{param}"),
    (_SWIN_BLOCK_SRC + ".norm1.{param}", _SWIN_BLOCK + ".layernorm_before.{param}"),
    (
        _SWIN_BLOCK_SRC + ".attn.qkv.{param}",
        (
            _SWIN_BLOCK + ".attention.q_proj.{param}",
            _SWIN_BLOCK + ".attention.k_proj.{param}",
            _SWIN_BLOCK + ".attention.v_proj.{param}",
        ),
    ),
    (_SWIN_BLOCK_SRC + ".attn.proj.{param}", _SWIN_BLOCK + ".attention.o_proj.{param}"),
    (
        _SWIN_BLOCK_SRC + ".attn.relative_position_bias_table",
        _SWIN_BLOCK + ".attention.relative_position_bias.relative_position_bias_table",
    ),
    (_SWIN_BLOCK_SRC + ".norm2.{param}", _SWIN_BLOCK + ".layernorm_after.{param}"),
    (_SWIN_BLOCK_SRC + ".mlp.fc{j}.{param}", _SWIN_BLOCK + ".mlp.fc{j}.{param}"),
    (
        "layers.{s}.downsample.reduction.{param}",
        "swin.encoder.layers.{s}.downsample.reduction.{param}",
    ),
    ("layers.{s}.downsample.norm.{param}", "swin.encoder.layers.{s}.downsample.norm.{param}"),
]
# D2SwinTransformer adds a LayerNorm per output stage (norm0..norm3) and drops the final norm.
SWIN_DETECTRON2_NORMS = [("norm{i}.{param}", "hidden_states_norms.stage{i+1}.{param}")]
# The ImageNet model's final norm (kept by transformers' Swin, unused by its backbone output).
SWIN_IMAGENET_NORM = [("norm.{param}", "swin.layernorm.{param}")]

# Mask2Former's MSDeformAttnPixelDecoder (and PRO-SCALE's) -> our pixel decoder.
_ENC_SRC = "transformer.encoder.layers.{i}"
_ENC = "encoder.layers.{i}"
PIXEL_DECODER = [
    ("input_proj.{l}.0.{param}", "input_projections.{l}.0.{param}"),  # conv, coarse (res5) first
    ("input_proj.{l}.1.{param}", "input_projections.{l}.1.{param}"),  # GroupNorm
    ("transformer.level_embed", "level_embed"),
    (
        _ENC_SRC + ".self_attn.sampling_offsets.{param}",
        _ENC + ".self_attn.sampling_offsets.{param}",
    ),
    (
        _ENC_SRC + ".self_attn.attention_weights.{param}",
        _ENC + ".self_attn.attention_weights.{param}",
    ),
    (_ENC_SRC + ".self_attn.value_proj.{param}", _ENC + ".self_attn.value_proj.{param}"),
    (_ENC_SRC + ".self_attn.output_proj.{param}", _ENC + ".self_attn.output_proj.{param}"),
    (_ENC_SRC + ".norm1.{param}", _ENC + ".self_attn_layer_norm.{param}"),
    (_ENC_SRC + ".linear1.{param}", _ENC + ".fc1.{param}"),
    (_ENC_SRC + ".linear2.{param}", _ENC + ".fc2.{param}"),
    (_ENC_SRC + ".norm2.{param}", _ENC + ".final_layer_norm.{param}"),
    ("transformer.encoder.token_excite.ops.{param}", "trc.proj.{param}"),  # PRO-SCALE TRC
    ("adapter_1.weight", "adapter_1.0.weight"),  # detectron2 Conv2d with .norm -> Sequential
    ("adapter_1.norm.{param}", "adapter_1.1.{param}"),
    ("layer_1.weight", "layer_1.0.weight"),  # absent with PRO-SCALE's LPE (a max-pool)
    ("layer_1.norm.{param}", "layer_1.1.{param}"),
    ("mask_features.{param}", "mask_projection.{param}"),
]

# Mask2Former's MultiScaleMaskedTransformerDecoder -> transformers' Mask2FormerTransformerModule.
# detectron2's self-attention is an nn.MultiheadAttention (fused in_proj = [q; k; v]);
# transformers' is Mask2FormerAttention with separate q/k/v projections.
_SA, _CA, _FFN = (
    "transformer_self_attention_layers.{i}",
    "transformer_cross_attention_layers.{i}",
    "transformer_ffn_layers.{i}",
)
_DEC = "decoder.layers.{i}"
TRANSFORMER_DECODER = [
    ("query_feat.weight", "queries_features.weight"),
    ("query_embed.weight", "queries_embedder.weight"),
    ("level_embed.weight", "level_embed.weight"),
    ("input_proj.{l}.{param}", "input_projections.{l}.{param}"),  # only when in_channels != hidden
    (
        _SA + ".self_attn.in_proj_{param}",
        (
            _DEC + ".self_attn.q_proj.{param}",
            _DEC + ".self_attn.k_proj.{param}",
            _DEC + ".self_attn.v_proj.{param}",
        ),
    ),
    (_SA + ".self_attn.out_proj.{param}", _DEC + ".self_attn.out_proj.{param}"),
    (_SA + ".norm.{param}", _DEC + ".self_attn_layer_norm.{param}"),
    (_CA + ".multihead_attn.in_proj_{param}", _DEC + ".cross_attn.in_proj_{param}"),
    (_CA + ".multihead_attn.out_proj.{param}", _DEC + ".cross_attn.out_proj.{param}"),
    (_CA + ".norm.{param}", _DEC + ".cross_attn_layer_norm.{param}"),
    (_FFN + ".linear1.{param}", _DEC + ".fc1.{param}"),
    (_FFN + ".linear2.{param}", _DEC + ".fc2.{param}"),
    (_FFN + ".norm.{param}", _DEC + ".final_layer_norm.{param}"),
    ("decoder_norm.{param}", "decoder.layernorm.{param}"),
    ("mask_embed.layers.{j}.{param}", "decoder.mask_predictor.mask_embedder.{j}.0.{param}"),
]

_DERIVED = [
    Skip("{rest}.relative_position_index", "derived buffer (recomputed from the window size)"),
    Skip("{rest}.attn_mask", "derived buffer (shifted-window mask, recomputed)"),
]
_D2_DERIVED = [
    Skip("criterion.empty_weight", "derived buffer (from the loss config)"),
    Skip("pixel_mean", "normalisation constant (from the model config)"),
    Skip("pixel_std", "normalisation constant (from the model config)"),
]

DETECTRON2_TABLE = Table(
    "detectron2",
    [
        *_prefixed("backbone.", "backbone.body.", DETECTRON2_RESNET),
        *_prefixed("backbone.", "backbone.body.", SWIN),
        *_prefixed("backbone.", "backbone.body.", SWIN_DETECTRON2_NORMS),
        *_prefixed("sem_seg_head.pixel_decoder.", "pixel_decoder.", PIXEL_DECODER),
        *_prefixed("sem_seg_head.predictor.", "transformer_decoder.", TRANSFORMER_DECODER),
        Rule("sem_seg_head.predictor.class_embed.{param}", "class_predictor.{param}"),
    ],
    [*_DERIVED, *_D2_DERIVED],
    description="detectron2 Mask2Former / PRO-SCALE (model zoo .pkl or .pth)",
)

# transformers' hub names: only the module prefixes differ from ours. Files saved before
# transformers 5 use older Swin names; `_modern_transformers_key` renames them first.
TRANSFORMERS_TABLE = Table(
    "transformers",
    [
        Rule("model.pixel_level_module.encoder.{rest}", "backbone.body.{rest}"),
        Rule("model.pixel_level_module.decoder.{rest}", "pixel_decoder.{rest}"),
        Rule("model.transformer_module.{rest}", "transformer_decoder.{rest}"),
        Rule("class_predictor.{param}", "class_predictor.{param}"),
    ],
    [*_DERIVED, Skip("criterion.empty_weight", "derived buffer (from the loss config)")],
    description="transformers Mask2FormerForUniversalSegmentation state dict",
)

# Swin names of transformers < 5 (hub files) -> transformers 5 names, applied in this order.
LEGACY_SWIN_RENAMES = [
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    (
        "attention.self.relative_position_bias_table",
        "attention.relative_position_bias.relative_position_bias_table",
    ),
    ("attention.self.relative_position_index", "attention.relative_position_index"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
]
_HF_BACKBONE = "model.pixel_level_module.encoder."
# The old SwinBackbone held embeddings/encoder directly (ResNet's encoder.stages are untouched).
LEGACY_SWIN_PREFIXES = [
    ("embeddings.", "swin.embeddings."),
    ("encoder.layers.", "swin.encoder.layers."),
]

TORCHVISION_TABLE = Table(
    "torchvision-resnet",
    _prefixed("", "backbone.body.", TORCHVISION_RESNET),
    [Skip("fc.{param}", "ImageNet classifier head")],
    scope="backbone.body.",
    description="torchvision ResNet ImageNet weights (backbone only)",
)

SWIN_TABLE = Table(
    "swin",
    [
        *_prefixed("", "backbone.body.", SWIN),
        *_prefixed("", "backbone.body.", SWIN_IMAGENET_NORM),
    ],
    [*_DERIVED, Skip("head.{param}", "ImageNet classifier head")],
    scope="backbone.body.",
    description="official Swin ImageNet weights (backbone only)",
)

EFFM2F_TABLE = Table(
    "effm2f",
    [Rule("{rest}", "{rest}")],
    description="this package's own state dict (what `effm2f model import` writes)",
)

TABLES: dict[str, Table] = {
    table.name: table
    for table in (DETECTRON2_TABLE, TRANSFORMERS_TABLE, TORCHVISION_TABLE, SWIN_TABLE, EFFM2F_TABLE)
}
FORMATS = tuple(TABLES)

# Model entries that are never exported and never reported missing.
_NOT_EXPORTED = [
    Template("criterion.{rest}"),  # the loss's class weights, derived from the config
    Template("{rest}.num_batches_tracked"),  # BatchNorm's step counter (unused: momentum is set)
]
# ... and entries that may be absent: transformers' Swin keeps the ImageNet model's final norm,
# which its backbone output never uses (transformers ignores it on load too); detectron2 has none.
_NOT_EXPECTED = [*_NOT_EXPORTED, Template("backbone.body.swin.layernorm.{param}")]


def _table(fmt: str) -> Table:
    if fmt not in TABLES:
        raise CheckpointError(
            f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}"
        )
    return TABLES[fmt]


def _modern_transformers_key(key: str) -> str:
    if not key.startswith(_HF_BACKBONE):
        return key
    rest = key[len(_HF_BACKBONE) :]
    for old, new in LEGACY_SWIN_PREFIXES:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
    for old, new in LEGACY_SWIN_RENAMES:
        rest = rest.replace(old, new)
    return _HF_BACKBONE + rest


def _normalise_keys(state: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """Format-specific key clean-up before the table is applied."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    if fmt == "transformers":
        return {_modern_transformers_key(k): v for k, v in state.items()}
    if fmt == "detectron2" and not any(
        k.startswith(("backbone.", "sem_seg_head.")) for k in state
    ):  # a backbone-only detectron2 file such as R-50.pkl
        return {"backbone." + k: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------------------
# Reading files


def _read_raw(path: Path) -> Any:
    """The file's object, through the project's untrusted-file loaders (no code runs)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torch_file(path):  # whatever its suffix
        return load_torch_file(path)
    return load_array_pickle(path)


def _is_torch_file(path: Path) -> bool:
    """A torch zip archive, or torch's legacy serialisation (which starts with a magic number
    pickled by torch.save; a plain pickle of arrays starts with its own protocol header)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as handle:
        head = handle.read(16)
    return head[:2] == b"\x80\x02" and b"\x8a\x0al\xfc\x9cF\xf9" in head  # torch's MAGIC


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (expected {{name: tensor}} or "
            f"{{'model': {{name: tensor}}, ...}}; got {type(obj).__name__})"
        )
    return dict(obj)


def _as_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The flat state dict in ``path`` (.pkl, .pth/.pt/.bin, .safetensors), as CPU tensors.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``; non-array entries are dropped.

    Raises:
        CheckpointError: the file is missing, unreadable or corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        raw = _read_raw(path)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
    state = _unwrap(raw, path)
    tensors = {str(k): t for k, v in state.items() if (t := _as_tensor(v)) is not None}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors or arrays")
    return tensors


# --------------------------------------------------------------------------------------------------
# Importing


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        loaded: model keys filled from the checkpoint.
        missing: model keys (within ``scope``) the checkpoint did not provide; left as initialised.
        unexpected: checkpoint key -> why it was not used (no rule, or a target this model lacks).
        skipped: checkpoint key -> why it was dropped on purpose (derived buffers, heads).
        warnings: anything else the user should know.
    """

    source: str
    format: str
    scope: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "scope": self.scope or "(whole model)",
            "loaded": len(self.loaded),
            "missing": list(self.missing),
            "unexpected": dict(self.unexpected),
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
        }

    def summary(self, limit: int = 50) -> str:
        scope = f" (scope {self.scope})" if self.scope else ""
        lines = [
            f"imported {self.source} as {self.format}{scope}: {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.skipped)} skipped"
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        for title, items in (
            ("missing (left as initialised)", [f"{k}" for k in self.missing]),
            ("unexpected (not used)", [f"{k}: {why}" for k, why in self.unexpected.items()]),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


def _expected(key: str, scope: str, exceptions: list[Template] = _NOT_EXPECTED) -> bool:
    return key.startswith(scope) and not any(t.match(key) is not None for t in exceptions)


def _trc_layout(model: nn.Module) -> str | None:
    """The model's TRC memory layout, or None when it has no TRC."""
    config = getattr(getattr(model, "config", None), "encoder", None)
    return getattr(config, "trc_layout", None) if getattr(config, "trc", None) else None


def import_state_dict(
    model: nn.Module, state: Mapping[str, Any], fmt: str, *, source: str = "<state dict>"
) -> ImportReport:
    """Load a checkpoint state dict of format ``fmt`` into ``model`` (our `Mask2Former`).

    Shapes are checked for every key before anything is copied. Keys the checkpoint lacks keep
    their current values and are listed in ``report.missing``.

    Raises:
        CheckpointError: a shape mismatch (naming both keys and shapes), two checkpoint keys
            filling one model key, or an unknown format.
    """
    table = _table(fmt)
    report = ImportReport(source=source, format=fmt, scope=table.scope)
    ours = model.state_dict()
    state = _normalise_keys(state, fmt)

    if fmt == "detectron2" and any(".token_excite." in k for k in state):
        layout = _trc_layout(model)
        if layout is not None and layout != "official":
            message = (
                "the checkpoint carries PRO-SCALE token_excite (TRC) weights, which the released "
                "code applies with its own memory layout; this variant uses "
                f"trc_layout={layout!r}: set `encoder: {{trc_layout: official}}` to reproduce it"
            )
            warnings.warn(message, stacklevel=2)
            report.warnings.append(message)

    filled: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        tensor = _as_tensor(value)
        if tensor is None:
            report.skipped[key] = "not a tensor"
            continue
        mapped = table.map_key(key)
        if mapped is None:
            report.unexpected[key] = "no mapping rule"
            continue
        if mapped.skipped is not None:
            report.skipped[key] = mapped.skipped
            continue
        absent = [t for t in mapped.targets if t not in ours]
        if absent:
            report.unexpected[key] = f"maps to {', '.join(absent)}, which this model does not have"
            continue
        parts = _split(key, tensor, mapped.targets, ours)
        for target, part in parts.items():
            if target in origin:
                raise CheckpointError(
                    f"{source}: both {origin[target]!r} and {key!r} map to {target!r}"
                )
            origin[target] = key
            filled[target] = part.to(dtype=ours[target].dtype)

    report.loaded = sorted(filled)
    report.missing = [k for k in ours if k not in filled and _expected(k, table.scope)]
    if not filled:
        report.warnings.append(f"no checkpoint key matched this model as format {fmt!r}")
    result = model.load_state_dict(filled, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # every target was checked above
    return report


def _split(
    key: str, tensor: Tensor, targets: tuple[str, ...], ours: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The tensor (or its equal chunks along dim 0) per target, after checking every shape."""
    if len(targets) == 1:
        chunks = [tensor]
    elif tensor.dim() == 0 or tensor.shape[0] % len(targets):
        expected = [tuple(ours[t].shape) for t in targets]
        raise CheckpointError(
            f"shape mismatch: checkpoint {key!r} {tuple(tensor.shape)} cannot be split into "
            f"{len(targets)} parts for {', '.join(targets)} {expected}"
        )
    else:
        chunks = list(tensor.chunk(len(targets), dim=0))
    for target, chunk in zip(targets, chunks, strict=True):
        if tuple(chunk.shape) != tuple(ours[target].shape):
            what = f"{key!r} {tuple(tensor.shape)}"
            if len(targets) > 1:
                what += f" (part {targets.index(target) + 1}/{len(targets)}: {tuple(chunk.shape)})"
            hint = ""
            if (
                ".self_attn.sampling_offsets." in target
                or ".self_attn.attention_weights." in target
            ):
                hint = (
                    " (deformable attention over a different number of levels or points: does "
                    "the variant's encoder schedule match the checkpoint's?)"
                )
            raise CheckpointError(
                f"shape mismatch: checkpoint {what} vs model {target!r} "
                f"{tuple(ours[target].shape)}{hint}"
            )
    return dict(zip(targets, chunks, strict=True))


def load_checkpoint(model: nn.Module, path: str | Path, fmt: str) -> ImportReport:
    """Read ``path`` and import it into ``model`` as format ``fmt`` (see `import_state_dict`)."""
    _table(fmt)
    return import_state_dict(model, read_checkpoint(path), fmt, source=str(path))


# --------------------------------------------------------------------------------------------------
# Exporting (the inverse tables)


def export_state_dict(
    model_or_state: nn.Module | Mapping[str, Tensor], fmt: str
) -> dict[str, Tensor]:
    """Our state dict under format ``fmt``'s names (split rules are concatenated back).

    Model keys outside the format's scope, and those without a rule, are left out. Used to write
    detectron2-style files and by the tests' round trips.
    """
    table = _table(fmt)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    keys = [k for k in state if _expected(k, table.scope, _NOT_EXPORTED)]
    plan = table.export_keys(keys)
    return {
        source: (state[parts[0]] if len(parts) == 1 else torch.cat([state[p] for p in parts], 0))
        .detach()
        .clone()
        for source, parts in plan.items()
    }
