"""Data entry points: ``effm2f data download|prepare|synthetic ...`` (or
``python -m effm2f.cli.data ...``).

Thin argparse adapters over :mod:`effm2f.data`; every command is idempotent (a second run does
nothing unless ``--overwrite``). Failures the user can fix (missing credentials, a bad checksum,
a malformed annotation) print one clear line and exit with status 1.

Examples::

    python -m effm2f.cli.data synthetic coco --root data/synthetic
    python -m effm2f.cli.data download coco --root data/coco --archives data/archives/coco
    python -m effm2f.cli.data prepare coco --root data/coco --workers 8
    CITYSCAPES_USERNAME=... CITYSCAPES_PASSWORD=... \\
        python -m effm2f.cli.data download cityscapes --root data/cityscapes \\
        --archives data/archives/cityscapes
    python -m effm2f.cli.data prepare cityscapes --root data/cityscapes
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from effm2f.cli.errors import guarded


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the per-image work (default or 0: all CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _download(args: argparse.Namespace) -> None:
    from effm2f.data import download

    if args.dataset == "coco":
        download.download_coco(args.root, args.archives, parts=args.parts or
                               tuple(download.COCO_ARCHIVES), base_url=args.base_url,
                               progress=not args.no_progress)
    else:
        download.download_cityscapes(args.root, args.archives,
                                     packages=args.parts or download.CITYSCAPES_PACKAGES,
                                     progress=not args.no_progress)


def _prepare(args: argparse.Namespace) -> None:
    from effm2f.data.catalog import get_dataset
    from effm2f.data.prepare_cityscapes import prepare_cityscapes
    from effm2f.data.prepare_coco import prepare_coco

    common = {"workers": args.workers, "overwrite": args.overwrite,
              "progress": not args.no_progress}
    if args.dataset in ("cityscapes", "synthetic_cityscapes"):
        prepare_cityscapes(args.root, args.splits, **common)
    else:
        prepare_coco(args.root, args.splits, metadata=get_dataset(args.dataset).metadata, **common)


def _synthetic(args: argparse.Namespace) -> None:
    from effm2f.data import synthetic, synthetic_cityscapes

    fields = ("num_train", "num_val", "height", "width", "seed")
    given = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    common = {"prepare": not args.no_prepare, "workers": args.workers,
              "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.layout == "coco":
        done = synthetic.generate_coco(args.root, synthetic.SyntheticConfig(**given), **common)
    else:
        cfg = synthetic_cityscapes.SyntheticCityscapesConfig(**given)
        done = synthetic_cityscapes.generate_cityscapes(args.root, cfg, **common)
    logging.info("%s %s", args.root, "written" if done else "already exists (nothing done)")


def build_parser() -> argparse.ArgumentParser:
    """The ``effm2f.cli.data`` argument parser."""
    parser = argparse.ArgumentParser(prog="effm2f data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    down = commands.add_parser("download", help="download and unpack a real dataset")
    down.add_argument("dataset", choices=("coco", "cityscapes"))
    down.add_argument("--root", required=True, help="dataset folder (archives unpack here)")
    down.add_argument("--archives", required=True, help="folder that keeps the archives")
    down.add_argument("--parts", nargs="+", default=None,
                      help="COCO archive keys (annotations panoptic val_images train_images) or "
                           "Cityscapes package names (default: all)")
    down.add_argument("--base-url", default=None, help="COCO mirror serving the same paths")
    down.add_argument("--no-progress", action="store_true")
    down.set_defaults(run=_download)

    prep = commands.add_parser("prepare", help="derive semantic/instance/panoptic files")
    prep.add_argument("dataset", choices=("coco", "synthetic", "cityscapes",
                                          "synthetic_cityscapes"))
    prep.add_argument("--splits", nargs="+", default=["train", "val"])
    _add_common(prep)
    prep.set_defaults(run=_prepare)

    syn = commands.add_parser("synthetic", help="generate the synthetic dataset")
    syn.add_argument("layout", choices=("coco", "cityscapes"))
    for name in ("num-train", "num-val", "height", "width", "seed"):
        syn.add_argument(f"--{name}", type=int, default=None)
    syn.add_argument("--no-prepare", action="store_true", help="skip the derived files")
    _add_common(syn)
    syn.set_defaults(run=_synthetic)
    return parser


@guarded("effm2f data")
def main(argv: Sequence[str] | None = None) -> None:
    """Run one data command (a failure the user can fix: one line, `effm2f.cli.errors`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
