"""Evaluation entry point:
``effm2f evaluate --config params/default.yaml --variant m2f_tiny [--checkpoint CKPT]``.

Reads the ``evaluate``, ``mlflow`` and ``variants_file`` keys of the merged config files,
evaluates the variant's checkpoint (default ``<output_root>/<dataset>/<variant>/checkpoints/
last.ckpt``) on the validation split and writes ``<output_root>/<dataset>/<variant>/eval/
metrics.json`` with the predictions, tables and overlays beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from effm2f.cli.errors import guarded
from effm2f.cli.train import dataset_root
from effm2f.config import ConfigError, load_merged_yaml
from effm2f.engine.config import EvalConfig, TrackingConfig, section
from effm2f.variants import load_variants, resolve_variant


def evaluate_from_config(config_paths: Sequence[str], variant: str, *,
                         checkpoint: str | None = None, dataset: str | None = None,
                         output: str | None = None, progress: bool = True) -> Any:
    """Evaluate ``variant`` with the merged config files (see
    :func:`effm2f.engine.evaluate.evaluate`)."""
    from effm2f.engine.evaluate import evaluate
    from effm2f.engine.train import LAST, output_dir

    config = load_merged_yaml(list(config_paths))
    eval_cfg = section(config, "evaluate", EvalConfig)
    if dataset is not None:
        eval_cfg = dataclasses.replace(eval_cfg, dataset=dataset)
    eval_cfg = dataclasses.replace(eval_cfg,
                                   root=dataset_root(config, eval_cfg.dataset, eval_cfg.root))
    tracking_cfg = section(config, "mlflow", TrackingConfig)
    model_cfg = resolve_variant(variant, load_variants(config.get("variants_file",
                                                                  "params/variants.yaml")))
    if checkpoint is None:
        checkpoint = str(output_dir(eval_cfg.output_root, eval_cfg.dataset, variant)
                         / "checkpoints" / LAST)
    if not Path(checkpoint).is_file():
        raise ConfigError(f"checkpoint not found: {checkpoint} (train the variant first)")
    return evaluate(dataset=eval_cfg.dataset, variant=variant, model_config=model_cfg,
                    checkpoint=checkpoint, config=eval_cfg, tracking_config=tracking_cfg,
                    output=output, progress=progress)


@guarded("effm2f evaluate")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="effm2f evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="repeatable; merged")
    parser.add_argument("--variant", required=True, help="a variant of the variants file")
    parser.add_argument("--checkpoint", default=None, help="default: the variant's last.ckpt")
    parser.add_argument("--dataset", default=None, help="override evaluate.dataset")
    parser.add_argument("--output", default=None,
                        help="evaluation folder (default <output_root>/<dataset>/<variant>/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = evaluate_from_config(args.config, args.variant, checkpoint=args.checkpoint,
                                  dataset=args.dataset, output=args.output,
                                  progress=not args.no_progress)
    print(result.output_dir / "metrics.json")


if __name__ == "__main__":
    main()
