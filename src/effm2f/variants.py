"""Named model variants: each states only its differences from the Mask2Former defaults.

A variant may name another as its ``base``; the chain is deep-merged, base first, then built into a
`ModelConfig` (unknown keys are errors that name the variant and the key).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from effm2f.config import ConfigError, deep_merge, from_dict, load_yaml
from effm2f.models.config import ModelConfig

DEFAULT_VARIANTS_FILE = Path("params/variants.yaml")


def load_variants(path: str | Path = DEFAULT_VARIANTS_FILE) -> dict[str, dict[str, Any]]:
    """Read the variant definitions (a mapping of name -> differences)."""
    return load_yaml(path)


def resolve_variant(name: str, variants: Mapping[str, Mapping[str, Any]]) -> ModelConfig:
    """The full ModelConfig of variant ``name``, following its ``base`` chain."""
    merged: dict[str, Any] = {}
    seen: list[str] = []
    current: str | None = name
    while current is not None:
        if current not in variants:
            known = ", ".join(sorted(variants))
            raise ConfigError(f"unknown model variant {current!r} (defined variants: {known})")
        if current in seen:
            raise ConfigError(f"variant {name!r}: cycle in 'base' chain {' -> '.join(seen)}")
        seen.append(current)
        spec = dict(variants[current] or {})
        current = spec.pop("base", None)
        merged = deep_merge(spec, merged)
    return from_dict(ModelConfig, merged, where=f"variants.{name}")


def check_variants(names: list[str] | tuple[str, ...], path: str | Path) -> None:
    """Resolve every variant in ``names`` (the workflow does this before it builds its DAG, so a
    bad variant fails ``snakemake -n`` with the message its job would give).

    Raises:
        ConfigError: an unknown variant, key or value, naming the variant.
    """
    if not names:
        return
    variants = load_variants(path)
    for name in dict.fromkeys(names):
        resolve_variant(name, variants)


def describe(name: str, config: ModelConfig) -> dict[str, Any]:
    """The columns that identify a variant in result tables."""
    encoder = config.encoder
    return {
        "variant": name,
        "backbone": config.backbone,
        "schedule": encoder.schedule_name,
        "trc": encoder.trc or "none",
        "lpe": encoder.lpe,
    }
