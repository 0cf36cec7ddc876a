"""Report entry point: tables and plots from the evaluation summaries and their MLflow runs.

    effm2f report --dataset synthetic --out results/synthetic --config C.yaml \\
        results/synthetic/m2f_tiny/eval/metrics.json ...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from effm2f.cli.errors import guarded
from effm2f.config import load_merged_yaml, load_yaml
from effm2f.engine.config import TrackingConfig, section
from effm2f.engine.tracking import tracking_uri
from effm2f.reporting.report import build_report


@guarded("effm2f report")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="effm2f report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="folder for metrics.csv, table.md, plot")
    parser.add_argument("--config", action="append", default=[], help="repeatable; merged")
    parser.add_argument("--paper", default="params/paper_results.yaml",
                        help="published figures to show beside ours")
    parser.add_argument("summaries", nargs="+", help="eval metrics.json files")
    args = parser.parse_args(argv)
    config = load_merged_yaml(args.config)
    tracking = section(config, "mlflow", TrackingConfig)
    uri = tracking_uri(tracking) if tracking.enabled else None
    paper = load_yaml(args.paper).get(args.dataset, {})
    build_report(args.summaries, out_dir=args.out, dataset=args.dataset, tracking_uri=uri,
                 paper=paper)


if __name__ == "__main__":
    main()
