"""Evaluation of a trained variant on a validation split, at full resolution, tracked in MLflow.

The model runs on the (test-resized) images and the original Mask2Former post-processing
(`effm2f.models.inference.postprocess`) predicts at each image's original size; the dataset's
evaluators (`effm2f.evaluation`) write the predictions in standard formats (COCO panoptic JSON +
PNGs, COCO instance results, Cityscapes files) and score them. The GFLOPs and latency of the
evaluated model at the evaluation input size are recorded with the metrics.

Layout under ``<output_root>/<dataset>/<variant>/eval/``::

    metrics.json        {"summary": {PQ, PQ_th, PQ_st, AP, mIoU, gflops_*, latency_ms, ...},
                         task: {metric: value}, ...}
    pq_per_class.csv, pq_per_image.csv, ap_per_class.csv, iou_per_class.csv
    panoptic_predictions.json + panoptic_predictions/  (COCO panoptic format)
    overlays/<image>.png  a few images blended with their predicted panoptic segmentation
    eval_config.yaml    the resolved config of the job

The folder is built under a temporary name beside it and put in place at the end, so a failed
evaluation leaves an earlier one untouched and nothing half-written behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from effm2f.config import ConfigError, to_dict
from effm2f.data.datasets import build_dataset, collate
from effm2f.data.metadata import DatasetMetadata, get_metadata
from effm2f.data.transforms import build_transform
from effm2f.efficiency.flops import count_flops
from effm2f.efficiency.latency import benchmark_latency
from effm2f.engine import tracking
from effm2f.engine.config import EvalConfig, TrackingConfig
from effm2f.engine.train import checkpoint_config_key
from effm2f.evaluation import DatasetEvaluator, dataset_evaluators, write_evaluation
from effm2f.io import staged_folder
from effm2f.models.config import ModelConfig
from effm2f.models.inference import InferenceConfig, postprocess
from effm2f.models.mask2former import Mask2Former, Mask2FormerOutput
from effm2f.untrusted import UnreadableFileError, load_torch_file
from effm2f.variants import describe

log = logging.getLogger(__name__)

SUMMARY_METRICS = (("PQ", "panoptic_seg", "PQ"), ("PQ_th", "panoptic_seg", "PQ_th"),
                   ("PQ_st", "panoptic_seg", "PQ_st"), ("AP", "segm", "AP"),
                   ("mIoU", "sem_seg", "mIoU"))
"""(summary column, task, metric): the headline figures of a variant."""


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation job produced."""

    metrics: dict[str, Any]
    output_dir: Path
    mlflow_run_id: str | None


def load_model(checkpoint: str | Path, model_config: ModelConfig, num_classes: int) -> Mask2Former:
    """A Mask2Former with the weights of a training checkpoint (Lightning's ``state_dict`` under
    ``model.``), checked against the expected model config; read weights-only."""
    state = load_torch_file(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise UnreadableFileError(f"{checkpoint} is not a training checkpoint of effm2f (no "
                                  "state_dict); give the last.ckpt a training job wrote")
    saved = state.get("hyper_parameters", {}).get("model")
    if saved is not None and saved != to_dict(model_config):
        raise ConfigError(f"checkpoint {checkpoint} was trained with another model config than "
                          f"the variant's (saved: {saved})")
    model = Mask2Former(config=model_config, num_classes=num_classes)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()
               if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"checkpoint {checkpoint} does not fit variant's model: "
                          f"{str(error).splitlines()[0]}") from error
    return model.eval()


def inference_config(cfg: EvalConfig) -> InferenceConfig:
    return InferenceConfig(**dataclasses.asdict(cfg.inference))


def panoptic_colors(seg: np.ndarray, segments: Sequence[Mapping[str, Any]],
                    metadata: DatasetMetadata) -> np.ndarray:
    """(H, W, 3) uint8 colouring of a panoptic map: each segment in its category's colour, thing
    instances lightened or darkened by instance so that touching ones stay apart; void black."""
    colors = np.zeros((*seg.shape, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for info in segments:
        base = np.array(metadata.categories[int(info["category_id"])].color, dtype=np.float64)
        if info.get("isthing"):
            base = np.clip(base + rng.integers(-40, 41, size=3), 0, 255)
        colors[seg == info["id"]] = base.astype(np.uint8)
    return colors


def segment_boundaries(seg: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment."""
    edges = np.zeros(seg.shape, dtype=bool)
    edges[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    edges[:-1, :] |= seg[:-1, :] != seg[1:, :]
    return edges


def write_overlay(path: Path, image: np.ndarray, seg: np.ndarray,
                  segments: Sequence[Mapping[str, Any]], metadata: DatasetMetadata,
                  alpha: float = 0.5) -> Path:
    """Save ``image`` (H, W, 3) beside a copy blended with its panoptic colouring, with the
    segment boundaries drawn in white (void pixels keep the image)."""
    colors = panoptic_colors(seg, segments, metadata)
    blend = (image * (1 - alpha) + colors * alpha).astype(np.uint8)
    blend[seg == 0] = image[seg == 0]
    blend[segment_boundaries(seg)] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([image, blend], axis=1)).save(path)
    return path


def summary_row(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """The headline figures (None where the dataset's evaluators do not produce one)."""
    return {name: metrics.get(task, {}).get(metric) for name, task, metric in SUMMARY_METRICS}


def _device(cfg: EvalConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def evaluate(
    *,
    dataset: str,
    variant: str,
    model_config: ModelConfig,
    checkpoint: str | Path,
    config: EvalConfig,
    tracking_config: TrackingConfig | None = None,
    output: str | Path | None = None,
    train_run_id: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate the weights in ``checkpoint`` on ``config.split`` of ``dataset``.

    Args:
        dataset, variant: names (the variant's resolved ``model_config`` builds the model).
        checkpoint: a training checkpoint (e.g. ``results/<dataset>/<variant>/checkpoints/
            last.ckpt``).
        config: the ``evaluate`` config section.
        tracking_config: the ``mlflow`` section (None: defaults; ``enabled: false``: off).
        output: the evaluation folder (default ``<output_root>/<dataset>/<variant>/eval``).
        train_run_id: the MLflow run that trained the weights (tagged on the evaluation run).
        progress: show progress bars.

    Returns:
        The metrics as written to ``metrics.json``.
    """
    tracking_config = tracking_config or TrackingConfig()
    out = (Path(output) if output is not None
           else Path(config.output_root) / dataset / variant / "eval")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    checkpoint = Path(checkpoint)
    resolved = {"stage": "eval", "dataset": dataset, "variant": variant,
                "checkpoint": str(checkpoint), "model": to_dict(model_config),
                "evaluate": to_dict(config),
                # the training config that wrote the weights: new weights, new evaluation run
                "trained_with": checkpoint_config_key(checkpoint)}
    if train_run_id is None:
        train_run_id = _train_run_id(checkpoint)
    run = _start_eval_run(tracking_config, resolved, train_run_id) \
        if tracking_config.enabled else None
    try:
        with staged_folder(out) as staging:
            done = _evaluate_into(staging, dataset=dataset, variant=variant,
                                  model_config=model_config, checkpoint=checkpoint,
                                  config=config, resolved=resolved, progress=progress,
                                  run_id=run.run_id if run else None)
        if run is not None:  # the artifacts from the folder now in place
            flat = {f"{task}/{name}": value for task, values in done.metrics.items()
                    for name, value in values.items()}
            flat.update({k: v for k, v in done.summary.items()
                         if k in EFFICIENCY_METRICS and isinstance(v, float | int)})
            tracking.log_metrics(run, flat)
            tracking.log_artifacts(run, [out / name for name in done.written])
            tracking.log_artifacts(run, [out / name for name in done.overlays],
                                   artifact_path="overlays")
            tracking.end_run(run)
    except BaseException:
        if run is not None:
            tracking.end_run(run, "FAILED")
        raise
    log.info("%s on %s: %s", variant, dataset, ", ".join(
        f"{k} {v:.2f}" for k, v in summary_row(done.metrics).items() if v is not None))
    return EvalResult(metrics={"summary": done.summary, **done.metrics}, output_dir=out,
                      mlflow_run_id=run.run_id if run else None)


EFFICIENCY_METRICS = ("gflops_total", "gflops_encoder", "latency_ms", "encoder_latency_ms",
                      "latency_threads")


def _start_eval_run(tracking_config: TrackingConfig, resolved: dict[str, Any],
                    train_run_id: str | None) -> tracking.TrackedRun:
    dataset, variant = resolved["dataset"], resolved["variant"]
    keyed = {k: v for k, v in resolved.items() if k != "evaluate"}
    keyed["evaluate"] = {k: v for k, v in resolved["evaluate"].items()
                         if k not in ("workers", "output_root")}
    return tracking.start_run(
        key=tracking.run_key(dataset, variant, "eval", keyed), config=tracking_config,
        params=resolved, tags={"effm2f.stage": "eval", "effm2f.dataset": dataset,
                               "effm2f.variant": variant,
                               **({"effm2f.train_run_id": train_run_id} if train_run_id else {})})


@dataclass(frozen=True)
class _Evaluation:
    """What :func:`_evaluate_into` wrote: the summary, the metrics, and the files (relative to
    the evaluation folder) to log as artifacts."""

    summary: dict[str, Any]
    metrics: dict[str, Any]
    written: list[Path]
    overlays: list[Path]


def _evaluate_into(out: Path, *, dataset: str, variant: str, model_config: ModelConfig,
                   checkpoint: Path, config: EvalConfig, resolved: dict[str, Any],
                   progress: bool, run_id: str | None) -> _Evaluation:
    """Evaluate into the (staging) folder ``out``."""
    tracking.write_config_yaml(out / "eval_config.yaml", resolved)
    metadata = get_metadata(dataset)
    device = _device(config)
    model = load_model(checkpoint, model_config, metadata.num_classes).to(device)
    data = build_dataset(dataset, config.split, train=False, root=config.root,
                         transform=build_transform(config.transform.name,
                                                   config.transform.params))
    if config.max_images is not None:
        data = Subset(data, range(min(config.max_images, len(data))))  # type: ignore[assignment]
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=False,
                        collate_fn=functools.partial(collate, size_divisibility=32))
    evaluators = dataset_evaluators(dataset, config.split, output_dir=out, root=config.root,
                                    names=config.evaluators, workers=config.workers,
                                    progress=progress)
    overlays: list[Path] = []

    def keep_overlay(target: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        if len(overlays) < config.num_overlays and "panoptic_seg" in result:
            overlays.append(_overlay(out, target, result, metadata))

    input_size, first = run_inference(model, loader, evaluators,
                                      thing_ids=metadata.thing_train_ids,
                                      inference=inference_config(config), device=device,
                                      on_result=keep_overlay, progress=progress,
                                      description=f"evaluate {variant}")
    metrics = evaluators.evaluate()
    tables = evaluators.tables()

    efficiency = _efficiency(model.cpu(), config, metadata, input_size, first)
    summary = {**describe(variant, model_config), "dataset": dataset, **summary_row(metrics),
               **efficiency, "num_images": len(data), "checkpoint": str(checkpoint)}
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in summary.items()}
    if run_id is not None:
        summary["mlflow_run_id"] = run_id
    written = write_evaluation(out, metrics, tables, extra={"summary": summary})
    return _Evaluation(summary, metrics,
                       [p.relative_to(out) for p in (out / "eval_config.yaml", *written.values())],
                       [p.relative_to(out) for p in overlays])


def run_inference(
    model: Callable[[torch.Tensor], Mask2FormerOutput],
    loader: Iterable[dict[str, Any]],
    evaluators: DatasetEvaluator,
    *,
    thing_ids: Collection[int],
    inference: InferenceConfig,
    device: torch.device | str = "cpu",
    on_result: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None,
    progress: bool = True,
    description: str = "evaluate",
) -> tuple[tuple[int, int] | None, Mapping[str, Any]]:
    """Feed ``evaluators`` (after ``reset()``) the post-processed predictions of ``model`` on every
    batch of ``loader`` (batches from `effm2f.data.datasets.collate`).

    Each image is predicted at its original size: the mask logits are upsampled to the padded
    input, cropped to the image's valid size and resized to its original ``height`` x ``width``.

    Returns:
        The padded input size of the first batch and the first image's target (for measuring
        GFLOPs and latency at the evaluation size); ``(None, {})`` for an empty loader.
    """
    evaluators.reset()
    input_size: tuple[int, int] | None = None
    first: Mapping[str, Any] = {}
    with torch.no_grad():
        for batch in tqdm(loader, desc=description, unit="batch", disable=not progress):
            images = batch["images"].to(device)
            targets = batch["targets"]
            output = model(images)
            results = postprocess(
                output.class_logits[-1], output.mask_logits[-1],
                padded_size=(int(images.shape[-2]), int(images.shape[-1])),
                image_sizes=[tuple(t["image_size"]) for t in targets],
                output_sizes=[(int(t["height"]), int(t["width"])) for t in targets],
                thing_ids=thing_ids, cfg=inference)
            results = [_to_cpu(r) for r in results]
            evaluators.process(targets, results)
            if input_size is None:
                input_size = (int(images.shape[-2]), int(images.shape[-1]))
                first = targets[0]
            if on_result is not None:
                for target, result in zip(targets, results, strict=True):
                    on_result(target, result)
    return input_size, first


def _to_cpu(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    if "sem_seg" in out:
        out["sem_seg"] = out["sem_seg"].cpu()
    if "panoptic_seg" in out:
        seg, info = out["panoptic_seg"]
        out["panoptic_seg"] = (seg.cpu(), info)
    if "instances" in out:
        out["instances"] = {k: v.cpu() for k, v in out["instances"].items()}
    return out


def _overlay(out: Path, target: Mapping[str, Any], result: Mapping[str, Any],
             metadata: DatasetMetadata) -> Path:
    seg, segments = result["panoptic_seg"]
    image = np.asarray(Image.open(target["file_name"]).convert("RGB"))
    name = Path(str(target["file_name"])).stem
    return write_overlay(out / "overlays" / f"{name}.png", image, seg.numpy(), segments, metadata)


def _efficiency(model: Mask2Former, cfg: EvalConfig, metadata: DatasetMetadata,
                input_size: tuple[int, int] | None, first: Mapping[str, Any]) -> dict[str, Any]:
    """GFLOPs and latency at the evaluation input size of the first image (padded to 32)."""
    if input_size is None:
        return {}
    image_size = tuple(first["image_size"])
    output_size = (int(first["height"]), int(first["width"]))
    flops = count_flops(model, input_size=input_size, image_size=image_size,
                        output_size=output_size, thing_ids=metadata.thing_train_ids,
                        inference=inference_config(cfg))
    latency = benchmark_latency({"model": model}, input_size=input_size,
                                thing_ids=metadata.thing_train_ids, warmup=cfg.latency.warmup,
                                repeats=cfg.latency.repeats, threads=cfg.latency.threads,
                                inference=inference_config(cfg))["model"]
    return {"gflops_total": round(flops.total, 4), "gflops_encoder": round(flops.encoder, 4),
            "latency_ms": round(latency.total_ms, 2),
            "encoder_latency_ms": round(latency.encoder_ms, 2),
            "latency_threads": latency.threads, "input_size": list(input_size)}


def _train_run_id(checkpoint: Path) -> str | None:
    """The training run id from ``train.json`` beside the checkpoint folder, if any."""
    import json

    summary = checkpoint.parent.parent / "train.json"
    try:
        return json.loads(summary.read_text()).get("mlflow_run_id")
    except (OSError, ValueError):
        return None
