"""Model entry points: import a released checkpoint into a variant's model.

    effm2f model import --source FILE \\
        --format detectron2|transformers|torchvision-resnet|swin|effm2f \\
        --variant NAME --num-classes K --out OUT.pth [--report REPORT.json] [--strict]

Reads local files only (nothing is downloaded). Prints the missing and unexpected keys; a shape
mismatch or an unreadable file is an error. OUT.pth holds {"model": our state dict, "effm2f":
{variant, num_classes, import report}} and loads back with ``--format effm2f``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from effm2f.cli.errors import guarded
from effm2f.io import atomic_path, write_json_atomic
from effm2f.models.checkpoint import FORMATS, CheckpointError, ImportReport, load_checkpoint
from effm2f.models.mask2former import Mask2Former
from effm2f.variants import DEFAULT_VARIANTS_FILE, load_variants, resolve_variant


def import_checkpoint(
    source: str | Path,
    fmt: str,
    variant: str,
    num_classes: int,
    out: str | Path,
    *,
    variants_file: str | Path = DEFAULT_VARIANTS_FILE,
    strict: bool = False,
) -> ImportReport:
    """Build ``variant`` with ``num_classes`` classes, import ``source`` and save it to ``out``.

    Raises:
        CheckpointError: unreadable file, shape mismatch, or (``strict``) missing/unexpected keys.
    """
    config = resolve_variant(variant, load_variants(variants_file))
    model = Mask2Former(config=config, num_classes=num_classes)
    report = load_checkpoint(model, source, fmt)
    if not report.loaded:
        raise CheckpointError(
            f"no key of {source} matched variant {variant!r} as format {fmt!r}: wrong --format "
            "or --variant?"
        )
    if strict and not report.ok:
        raise CheckpointError(
            f"--strict: {len(report.missing)} missing and {len(report.unexpected)} "
            "unexpected keys\n" + report.summary()
        )
    payload = {
        "model": model.state_dict(),
        "effm2f": {"variant": variant, "num_classes": num_classes, "import": report.to_dict()},
    }
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return report


@guarded("effm2f model")
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="effm2f model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="convert a checkpoint into a variant's state dict")
    imp.add_argument("--source", required=True, help="local checkpoint file")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("--variant", required=True)
    imp.add_argument("--num-classes", required=True, type=int)
    imp.add_argument("--out", required=True)
    imp.add_argument("--variants-file", default=str(DEFAULT_VARIANTS_FILE))
    imp.add_argument("--report", help="also write the import report as JSON here")
    imp.add_argument("--strict", action="store_true", help="fail on missing or unexpected keys")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with warnings.catch_warnings():  # the report below repeats every warning
        warnings.simplefilter("ignore", UserWarning)
        report = import_checkpoint(
            args.source,
            args.format,
            args.variant,
            args.num_classes,
            args.out,
            variants_file=args.variants_file,
            strict=args.strict,
        )
    print(report.summary())
    if args.report:
        write_json_atomic(args.report, report.to_dict())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
