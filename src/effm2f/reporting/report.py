"""Paper-style tables and the PQ-vs-GFLOPs plot, built only from tracked results.

Inputs are the evaluation summaries the pipeline wrote (``results/<dataset>/<variant>/eval/
metrics.json``) and the MLflow runs they name (for provenance: git commit, dirty flag, data
version). Nothing is typed in: the paper's figures, shown beside ours, come from
``params/paper_results.yaml``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from effm2f.efficiency.compare import is_baseline  # noqa: E402
from effm2f.errors import InputError  # noqa: E402
from effm2f.io import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402

METRICS_COLUMNS = [
    "variant", "backbone", "schedule", "trc", "lpe", "PQ", "PQ_th", "PQ_st", "AP", "mIoU",
    "gflops_total", "gflops_encoder", "latency_ms", "mlflow_run_id",
]
# The figures of metrics.json (what `dvc metrics show` prints), per variant.
JSON_METRICS = ["PQ", "PQ_th", "PQ_st", "AP", "mIoU", "gflops_total", "gflops_encoder",
                "latency_ms"]
PROVENANCE_TAGS = {"git_commit": "git.commit", "git_dirty": "git.dirty",
                   "data_version": "data.version"}


class ReportError(InputError, ValueError):
    """A summary file is missing or lacks a column the report needs."""


def load_summaries(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per evaluated variant from the ``summary`` block of each metrics.json."""
    rows = []
    for path in paths:
        try:
            summary = json.loads(Path(path).read_text())["summary"]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise ReportError(f"cannot read the evaluation summary in {path}: {error}") from error
        missing = [c for c in METRICS_COLUMNS if c not in summary]
        if missing:
            raise ReportError(f"{path}: summary lacks {', '.join(missing)}")
        rows.append(summary)
    return pd.DataFrame(rows)


def add_provenance(frame: pd.DataFrame, tracking_uri: str) -> pd.DataFrame:
    """Git commit, dirty flag and data version of each row's MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    tags = []
    for run_id in frame["mlflow_run_id"]:
        run_tags = client.get_run(run_id).data.tags if isinstance(run_id, str) else {}
        tags.append({col: run_tags.get(tag, "unknown") for col, tag in PROVENANCE_TAGS.items()})
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(tags)], axis=1)


def with_baseline_changes(frame: pd.DataFrame) -> pd.DataFrame:
    """Add PQ and GFLOPs changes relative to the same backbone's Mask2Former baseline."""
    frame = frame.copy()
    baselines = {row["backbone"]: row for _, row in frame.iterrows() if is_baseline(row)}
    for column, name in [("PQ", "PQ_change"), ("gflops_total", "gflops_total_change_pct"),
                         ("gflops_encoder", "gflops_encoder_change_pct")]:
        values = []
        for _, row in frame.iterrows():
            base = baselines.get(row["backbone"])
            if base is None or pd.isna(row[column]) or pd.isna(base[column]):
                values.append(None)
            elif name == "PQ_change":
                values.append(row[column] - base[column])
            else:
                values.append(100.0 * (row[column] / base[column] - 1.0))
        frame[name] = values
    return frame


def _fmt(value: Any, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _gflops(value: Any) -> str:
    """GFLOPs with three significant digits below 10 (tiny models), else one decimal."""
    if isinstance(value, int | float) and not pd.isna(value) and abs(value) < 10:
        return f"{value:.3g}"
    return _fmt(value)


def _method(row: Mapping[str, Any]) -> str:
    if is_baseline(row):
        return "M2F"
    extras = [name for name, on in (("TRC", row["trc"] != "none"), ("LPE", bool(row["lpe"])))
              if on]
    return f"PRO-SCALE ({row['schedule']})" + (" + " + " + ".join(extras) if extras else "")


def _cell(reference: Mapping[str, float], column: str, value: Any) -> str:
    """Our figure, with the paper's in brackets when there is one."""
    fmt = _gflops if column.startswith("gflops") else _fmt
    mine = fmt(value)
    return f"{mine} ({fmt(reference[column])})" if column in reference else mine


def render_table(frame: pd.DataFrame, *, dataset: str,
                 paper: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The paper layout in Markdown: accuracy, GFLOPs and the change against M2F.

    Args:
        frame: rows of metrics.csv with the baseline changes and provenance.
        paper: optional per-variant figures of the papers, shown in brackets.
    """
    paper = paper or {}
    lines = [
        f"# {dataset}: Mask2Former encoders",
        "",
        "| Method | Backbone | PQ | PQ_th | PQ_st | AP | mIoU | GFLOPs (total) "
        "| GFLOPs (encoder) | ΔGFLOPs total | ΔPQ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ordered = frame.sort_values(["backbone", "gflops_total"], ascending=[True, False])
    for _, row in ordered.iterrows():
        cell = functools.partial(_cell, paper.get(row["variant"], {}))
        lines.append(
            f"| {_method(row)} | {row['backbone']} | {cell('PQ', row['PQ'])} "
            f"| {_fmt(row['PQ_th'])} | {_fmt(row['PQ_st'])} | {cell('AP', row['AP'])} "
            f"| {cell('mIoU', row['mIoU'])} | {cell('gflops_total', row['gflops_total'])} "
            f"| {_gflops(row['gflops_encoder'])} "
            f"| {_fmt(row['gflops_total_change_pct'], signed=True)}% "
            f"| {_fmt(row['PQ_change'], signed=True)} |"
        )
    lines += ["", *_provenance_lines(frame, paper)]
    return "\n".join(lines) + "\n"


def _provenance_lines(frame: pd.DataFrame, paper: Mapping[str, Any]) -> list[str]:
    notes = []
    if paper:
        notes.append("Figures in brackets: the papers (params/paper_results.yaml).")
    notes.append("GFLOPs at the evaluation input size; ΔGFLOPs and ΔPQ against the same "
                 "backbone's M2F.")
    notes.append("")
    notes.append("| variant | MLflow run | git commit | dirty | data version |")
    notes.append("| --- | --- | --- | --- | --- |")
    for _, row in frame.iterrows():
        notes.append(f"| {row['variant']} | {row['mlflow_run_id']} | {row.get('git_commit', '')} "
                     f"| {row.get('git_dirty', '')} | {row.get('data_version', '')} |")
    return notes


def tradeoff_plot(frame: pd.DataFrame, path: str | Path, *, dataset: str) -> None:
    """PQ against total GFLOPs, one marker per variant, one colour per backbone."""
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for backbone, group in frame.groupby("backbone"):
        axes.plot(group["gflops_total"], group["PQ"], "o", label=backbone, markersize=7)
        for _, row in group.iterrows():
            axes.annotate(row["variant"], (row["gflops_total"], row["PQ"]),
                          textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.margins(x=0.2, y=0.15)
    low, high = axes.get_ylim()
    if high - low < 2.0:  # keep sub-point PQ differences from looking like large ones
        middle = (low + high) / 2
        axes.set_ylim(middle - 1.0, middle + 1.0)
    axes.set_xlabel("GFLOPs (total)")
    axes.set_ylabel("PQ")
    axes.set_title(f"{dataset}: PQ vs GFLOPs")
    axes.grid(alpha=0.3)
    axes.legend(title="backbone")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def _finite(value: Any) -> float | None:
    """A finite float, else None (NaN, inf, missing or not a number become JSON null)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metrics_json(frame: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """``{variant: {PQ, PQ_th, PQ_st, AP, mIoU, gflops_total, gflops_encoder, latency_ms}}``
    with finite numbers or None, in the frame's row order."""
    return {str(row["variant"]): {column: _finite(row[column]) for column in JSON_METRICS}
            for _, row in frame.iterrows()}


def build_report(summary_paths: Sequence[str | Path], *, out_dir: str | Path, dataset: str,
                 tracking_uri: str | None,
                 paper: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Write metrics.csv, metrics.json, table.md and tradeoff.png for ``dataset`` under
    ``out_dir``."""
    out_dir = Path(out_dir)
    frame = load_summaries(summary_paths)
    if tracking_uri is not None:
        frame = add_provenance(frame, tracking_uri)
    frame = with_baseline_changes(frame)
    derived = (*PROVENANCE_TAGS, "PQ_change", "gflops_total_change_pct",
               "gflops_encoder_change_pct")
    extra = [c for c in derived if c in frame.columns]
    with atomic_path(out_dir / "metrics.csv") as tmp:
        frame[METRICS_COLUMNS + extra].to_csv(tmp, index=False)
    write_json_atomic(out_dir / "metrics.json", metrics_json(frame))
    write_text_atomic(out_dir / "table.md", render_table(frame, dataset=dataset, paper=paper))
    tradeoff_plot(frame, out_dir / "tradeoff.png", dataset=dataset)
    return frame
