"""Efficiency entry points: GFLOPs per variant, the GFLOPs table, latency, and their ratios.

    effm2f efficiency flops --config params/default.yaml --dataset coco --variant m2f_r50 --out F
    effm2f efficiency flops-table --out results/flops/coco.csv ROW.json ...
    effm2f efficiency latency --config params/default.yaml --dataset coco --out L.csv
    effm2f efficiency compare --flops F.csv --latency L.csv --out R.csv
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from effm2f.cli.errors import guarded
from effm2f.config import ConfigError, from_dict, load_merged_yaml
from effm2f.data.metadata import get_metadata
from effm2f.efficiency.compare import ratio_table
from effm2f.efficiency.config import DatasetInput, FlopsConfig, LatencyConfig
from effm2f.efficiency.flops import mean_flops, measurement_inputs
from effm2f.efficiency.latency import benchmark_latency
from effm2f.io import atomic_path, write_json_atomic
from effm2f.models.mask2former import Mask2Former
from effm2f.variants import describe, load_variants, resolve_variant

log = logging.getLogger(__name__)


def _section(config_paths: Sequence[str], key: str, cls: type) -> Any:
    config = load_merged_yaml(config_paths)
    return from_dict(cls, config.get(key), where=key), config


def _variants(config: dict[str, Any]) -> dict[str, Any]:
    return load_variants(config.get("variants_file", "params/variants.yaml"))


def _dataset_input(flops_cfg: FlopsConfig, dataset: str) -> DatasetInput:
    """The configured test inputs of ``dataset``; an unconfigured dataset is named."""
    if dataset not in flops_cfg.datasets:
        raise ConfigError(
            f"flops.datasets has no entry {dataset!r} (configured: {sorted(flops_cfg.datasets)})"
        )
    return flops_cfg.datasets[dataset]


def flops_row(config_paths: Sequence[str], dataset: str, variant: str) -> dict[str, Any]:
    """GFLOPs of one variant on one dataset, as a CSV row."""
    flops_cfg, config = _section(config_paths, "flops", FlopsConfig)
    dataset_input = _dataset_input(flops_cfg, dataset)
    model_cfg = resolve_variant(variant, _variants(config))
    metadata = get_metadata(dataset)
    model = Mask2Former(config=model_cfg, num_classes=metadata.num_classes)
    inputs, source = measurement_inputs(dataset_input, flops_cfg.num_images)
    total, encoder = mean_flops(model, inputs, thing_ids=metadata.thing_train_ids)
    return {
        **describe(variant, model_cfg),
        "dataset": dataset,
        "input": source,
        "gflops_total": round(total, 2),
        "gflops_encoder": round(encoder, 2),
        "encoder_share": round(encoder / total, 4),
    }


def latency_table(config_paths: Sequence[str], dataset: str) -> pd.DataFrame:
    """Latency of every configured variant at ``dataset``'s canonical resolution."""
    latency_cfg, config = _section(config_paths, "latency", LatencyConfig)
    flops_cfg = from_dict(FlopsConfig, config.get("flops"), where="flops")
    dataset_input = _dataset_input(flops_cfg, dataset)
    variants = _variants(config)
    metadata = get_metadata(dataset)
    configs = {name: resolve_variant(name, variants) for name in latency_cfg.variants}
    models = {
        name: Mask2Former(config=cfg, num_classes=metadata.num_classes)
        for name, cfg in configs.items()
    }
    size = dataset_input.canonical_size
    results = benchmark_latency(
        models,
        input_size=tuple(size),
        thing_ids=metadata.thing_train_ids,
        warmup=latency_cfg.warmup,
        repeats=latency_cfg.repeats,
        threads=latency_cfg.threads,
    )
    rows = [
        {
            **describe(name, configs[name]),
            "input": f"canonical {size[0]}x{size[1]}",
            "encoder_ms": round(result.encoder_ms, 1),
            "total_ms": round(result.total_ms, 1),
            "threads": result.threads,
        }
        for name, result in results.items()
    ]
    return pd.DataFrame(rows)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@guarded("effm2f efficiency")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="effm2f efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    flops = commands.add_parser("flops", help="GFLOPs of one variant on one dataset (JSON row)")
    flops.add_argument("--config", action="append", required=True, help="repeatable; merged")
    flops.add_argument("--dataset", required=True)
    flops.add_argument("--variant", required=True)
    flops.add_argument("--out", required=True)
    table = commands.add_parser("flops-table", help="merge JSON rows into a CSV")
    table.add_argument("--out", required=True)
    table.add_argument("rows", nargs="+")
    latency = commands.add_parser("latency", help="CPU latency of the configured variants")
    latency.add_argument("--config", action="append", required=True, help="repeatable")
    latency.add_argument("--dataset", required=True)
    latency.add_argument("--out", required=True)
    compare = commands.add_parser("compare", help="GFLOPs and latency ratios to the baselines")
    compare.add_argument("--flops", required=True)
    compare.add_argument("--latency", required=True)
    compare.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "flops":
        write_json_atomic(args.out, flops_row(args.config, args.dataset, args.variant))
    elif args.command == "flops-table":
        rows = [json.loads(Path(p).read_text()) for p in args.rows]
        write_csv(pd.DataFrame(rows), args.out)
    elif args.command == "latency":
        write_csv(latency_table(args.config, args.dataset), args.out)
    else:
        ratios = ratio_table(pd.read_csv(args.flops), pd.read_csv(args.latency))
        write_csv(ratios.round(3), args.out)


if __name__ == "__main__":
    main()
