"""Training entry point: ``effm2f train --config params/default.yaml --variant m2f_tiny``.

Reads the ``train``, ``mlflow`` and ``variants_file`` keys of the merged config files (later
``--config`` files override earlier ones, as Snakemake's ``--configfile`` does) and trains one
variant; a second call resumes from the variant's last checkpoint and continues its MLflow run.
Failures the user can fix (an unknown config key, a missing file) print one line and exit with 2,
a NaN loss with 1 (`effm2f.cli.errors`; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from effm2f.cli.errors import guarded
from effm2f.config import load_merged_yaml
from effm2f.engine.config import TrackingConfig, TrainConfig, section
from effm2f.variants import load_variants, resolve_variant


def dataset_root(config: dict[str, Any], dataset: str, root: str | None) -> str | None:
    """The section's root, else ``<data.root>/<dataset>`` when the config has ``data.root``."""
    if root is not None:
        return root
    data_root = (config.get("data") or {}).get("root")
    return f"{data_root}/{dataset}" if data_root else None


def train_from_config(config_paths: Sequence[str], variant: str, *, dataset: str | None = None,
                      output: str | None = None, progress: bool = True) -> Any:
    """Train ``variant`` with the merged config files (see :func:`effm2f.engine.train.train`)."""
    from effm2f.engine.train import train

    config = load_merged_yaml(list(config_paths))
    train_cfg = section(config, "train", TrainConfig)
    if dataset is not None:
        train_cfg = dataclasses.replace(train_cfg, dataset=dataset)
    train_cfg = dataclasses.replace(
        train_cfg, root=dataset_root(config, train_cfg.dataset, train_cfg.root))
    tracking_cfg = section(config, "mlflow", TrackingConfig)
    model_cfg = resolve_variant(variant, load_variants(config.get("variants_file",
                                                                  "params/variants.yaml")))
    return train(dataset=train_cfg.dataset, variant=variant, model_config=model_cfg,
                 config=train_cfg, tracking_config=tracking_cfg, output=output,
                 progress=progress)


@guarded("effm2f train")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="effm2f train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="repeatable; merged")
    parser.add_argument("--variant", required=True, help="a variant of the variants file")
    parser.add_argument("--dataset", default=None, help="override train.dataset")
    parser.add_argument("--output", default=None,
                        help="output folder (default <train.output_root>/<dataset>/<variant>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_from_config(args.config, args.variant, dataset=args.dataset,
                               output=args.output, progress=not args.no_progress)
    logging.getLogger("effm2f.train").info(
        "trained %s: %d steps, final loss %s, checkpoint %s", args.variant, result.global_step,
        result.final_loss, result.checkpoint)


if __name__ == "__main__":
    main()
