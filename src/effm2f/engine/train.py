"""Training of one variant on one dataset with Lightning, resumable and tracked in MLflow.

Layout under ``<output_root>/<dataset>/<variant>/``::

    checkpoints/last.ckpt           the newest checkpoint (every ``checkpoint_every`` steps + end)
    checkpoints/stepNNNNNNN.ckpt    the newest periodic checkpoint
    train_config.yaml               the resolved config of the job
    train_log.csv                   step (0-based), loss terms, lr, seconds (the learning curve)
    train.json                      summary: steps, final loss, time, checkpoint, MLflow run id

A job started again (after a kill, a failure or a Slurm requeue) resumes from the newest readable
checkpoint (``last.ckpt``, Lightning's ``hpc_ckpt_*.ckpt`` or the periodic ``stepNNNNNNN.ckpt``;
an unreadable one is moved aside as ``<name>.corrupt-N``) and continues its MLflow run, logging
only the steps the killed job had not logged; since every step's batch, augmentation and loss
sampling are pure functions of the seed and the step, it ends with the same weights as an
uninterrupted run (on CPU). Checkpoints carry the key of the config and of the training data that
wrote them: a job with another config or other data moves them aside (``checkpoints.stale-N/``),
starts afresh and opens a new MLflow run. Every checkpoint is written under a temporary name and
renamed, and read back through the weights-only loader (`effm2f.untrusted`).
"""

from __future__ import annotations

import csv
import datetime
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from torch import nn

from effm2f.config import ConfigError, to_dict
from effm2f.data.catalog import split_fingerprint
from effm2f.data.datasets import build_dataset
from effm2f.data.metadata import get_metadata
from effm2f.data.transforms import build_transform
from effm2f.engine import tracking
from effm2f.engine.config import PretrainedWeights, TrackingConfig, TrainConfig
from effm2f.engine.datamodule import TrainDataModule
from effm2f.engine.module import CONFIG_KEY, SegmentationModule
from effm2f.io import atomic_path, write_json_atomic
from effm2f.models.checkpoint import load_checkpoint
from effm2f.models.config import ModelConfig
from effm2f.untrusted import UnreadableFileError, load_torch_file

log = logging.getLogger(__name__)

LAST = "last.ckpt"
LOG_FIELDS = ("step", "loss", "loss_cross_entropy", "loss_mask", "loss_dice", "lr", "elapsed_s")


@dataclass(frozen=True)
class TrainResult:
    """What a finished training job produced."""

    checkpoint: Path
    global_step: int
    final_loss: float | None
    elapsed_s: float
    mlflow_run_id: str | None
    output_dir: Path


def output_dir(root: str | Path, dataset: str, variant: str) -> Path:
    """``<root>/<dataset>/<variant>``: the folder of a variant's checkpoints and results."""
    return Path(root) / dataset / variant


def resume_candidates(checkpoint_dir: str | Path) -> list[Path]:
    """``last.ckpt``, Lightning's Slurm-requeue ``hpc_ckpt_*.ckpt`` and the periodic
    ``step*.ckpt`` in ``checkpoint_dir``, newest first."""
    folder = Path(checkpoint_dir)
    found = {p for p in (folder / LAST, *folder.glob("hpc_ckpt_*.ckpt"),
                         *folder.glob("step*.ckpt")) if p.is_file()}
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def checkpoint_config_key(path: str | Path) -> str | None:
    """The run key a checkpoint was written with (None for a foreign checkpoint).

    Raises:
        UnreadableFileError, UnsafeFileError: see `effm2f.untrusted.load_torch_file`.
    """
    state = load_torch_file(path, mmap=True)
    return state.get(CONFIG_KEY) if isinstance(state, Mapping) else None


def newest_readable_checkpoint(checkpoint_dir: Path) -> tuple[Path, str | None] | None:
    """The newest checkpoint that reads back, with its run key; unreadable (truncated) ones on
    the way are moved aside as ``<name>.corrupt-N`` (rank 0) and named in a warning."""
    for path in resume_candidates(checkpoint_dir):
        try:
            return path, checkpoint_config_key(path)
        except UnreadableFileError as error:
            if rank_zero_only.rank == 0:
                moved = _unique_sibling(path, "corrupt")
                path.rename(moved)
                log.warning("%s; moved it to %s and trying the previous checkpoint", error, moved)
    return None


def _unique_sibling(path: Path, tag: str) -> Path:
    n = 1
    while (candidate := path.with_name(f"{path.name}.{tag}-{n}")).exists():
        n += 1
    return candidate


def set_aside(checkpoint_dir: Path) -> Path:
    """Rename ``checkpoint_dir`` to ``<name>.stale-<n>`` (nothing is deleted); recreate it."""
    stale = _unique_sibling(checkpoint_dir, "stale")
    checkpoint_dir.rename(stale)
    checkpoint_dir.mkdir()
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name in their own folder and renamed (a kill while
    saving never leaves a truncated ``last.ckpt``), and read through the weights-only loader.

    Lightning's own save goes through fsspec, which stages the file in the system's temporary
    folder and copies it over when that is another file system (a cluster's local /tmp).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_torch_file(path)


class LossCurve(Callback):
    """Appends the learning curve to a CSV (rank 0), on the steps Lightning logs to MLflow.

    A row's ``step`` is the 0-based index of the optimizer step (MLflow's step of the same
    metrics), ``loss`` that step's total loss and ``lr`` the learning rate of its update (the
    last parameter group's: the non-backbone lr). Steps the file already has (logged by a job
    killed after its last checkpoint) are not written again.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every
        self.start = time.monotonic()
        self.lr = float("nan")
        self.logged_through = last_logged_step(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.lr = trainer.optimizers[0].param_groups[-1]["lr"]

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step - 1
        if (step + 1) % self.every and trainer.global_step != trainer.max_steps:
            return
        if step <= self.logged_through:
            return
        metrics = trainer.callback_metrics
        row = {"step": step, "elapsed_s": round(time.monotonic() - self.start, 2), "lr": self.lr}
        row["loss"] = float(outputs["loss"]) if isinstance(outputs, Mapping) else None
        for name in ("loss_cross_entropy", "loss_mask", "loss_dice"):
            value = metrics.get(f"train/{name}")
            row[name] = None if value is None else float(value)
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def last_logged_step(path: Path) -> int:
    """The largest step in a ``train_log.csv`` (-1 when there is none)."""
    if not path.exists():
        return -1
    with path.open() as handle:
        return max((int(row["step"]) for row in csv.DictReader(handle)), default=-1)


class ResumedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger that skips the steps its run already holds (a job resumed from
    a checkpoint older than its last logged step recomputes those steps; MLflow cannot forget
    a metric value, so the first one stays)."""

    def __init__(self, *, logged_through: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logged_through = logged_through

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and step <= self.logged_through:
            return
        super().log_metrics(metrics, step)


def read_loss_curve(path: str | Path) -> list[dict[str, float]]:
    """The rows of ``train_log.csv``, one per step (a step logged twice, before a kill and after
    the resume, keeps its last row), in step order."""
    rows: dict[int, dict[str, float]] = {}
    with Path(path).open() as handle:
        for row in csv.DictReader(handle):
            rows[int(row["step"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[s] for s in sorted(rows)]


def _precision(cfg: TrainConfig, accelerator: str) -> str:
    if accelerator == "cpu" and cfg.precision in ("16-mixed",):
        log.warning("precision 16-mixed is not available on CPU; using 32")
        return "32"
    return cfg.precision


def _gradient_clipping(cfg: TrainConfig) -> dict[str, Any]:
    optim = cfg.optimizer
    if optim.clip_type == "none" or optim.clip_value <= 0:
        return {}
    algorithm = "value" if optim.clip_type == "value" else "norm"
    return {"gradient_clip_val": optim.clip_value, "gradient_clip_algorithm": algorithm}


def initialise_from_pretrained(model: nn.Module, weights: PretrainedWeights | None) -> None:
    """Load ``weights`` into a fresh model; an import that loads nothing is an error."""
    if weights is None:
        return
    report = load_checkpoint(model, weights.path, weights.format)
    log.info("%s", report.summary(limit=20))
    if not report.loaded:
        raise ConfigError(f"train.pretrained: {weights.path} ({weights.format}) matched no "
                          "parameter of the model; check the file and its format")


def train(
    *,
    dataset: str,
    variant: str,
    model_config: ModelConfig,
    config: TrainConfig,
    tracking_config: TrackingConfig | None = None,
    output: str | Path | None = None,
    extra_callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``variant`` (its ``model_config``) on ``dataset`` with ``config``.

    Resumes from the newest checkpoint in ``<output>/checkpoints`` when there is one.

    Args:
        dataset: a dataset name of the data catalog (e.g. "synthetic", "coco").
        variant: the variant's name (names the output folder and the MLflow run).
        model_config: the variant's resolved model config.
        config: the ``train`` config section.
        tracking_config: the ``mlflow`` config section (None: defaults; ``enabled: false``: off).
        output: the output folder (default ``<config.output_root>/<dataset>/<variant>``).
        extra_callbacks: more Lightning callbacks (tests use one to inject a fault).
        progress: show Lightning's progress bar.

    Raises:
        NonFiniteLossError: the loss or gradient became NaN/inf (the last good checkpoint stays).
    """
    tracking_config = tracking_config or TrackingConfig()
    out = Path(output) if output is not None else output_dir(config.output_root, dataset, variant)
    checkpoint_dir = out / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    resolved = {"stage": "train", "dataset": dataset, "variant": variant,
                "model": to_dict(model_config), "train": to_dict(config)}
    # Values that do not change what is computed stay out of the run key (the variant list too:
    # adding a variant must not restart the others).
    unkeyed = ("num_workers", "log_every", "output_root", "variants")
    keyed = {**resolved, "train": {k: v for k, v in resolved["train"].items()
                                   if k not in unkeyed},
             # the data's content: regenerated or re-prepared data is a new training
             "data": split_fingerprint(dataset, config.split, config.root)}
    tracking.write_config_yaml(out / "train_config.yaml", resolved)

    metadata = get_metadata(dataset)
    data = build_dataset(dataset, config.split, train=True, root=config.root,
                         transform=build_transform(config.transform.name,
                                                   config.transform.params))
    key = tracking.run_key(dataset, variant, "train", keyed)
    found = newest_readable_checkpoint(checkpoint_dir)
    resume = found[0] if found else None
    if found is not None and found[1] != key:
        resume = None
        if rank_zero_only.rank == 0:
            stale = set_aside(checkpoint_dir)
            log.warning("the checkpoints in %s were written with another config or other data; "
                        "moved them to %s and training from scratch", checkpoint_dir, stale)
    if resume is None and rank_zero_only.rank == 0:  # a fresh start: no stale curve or summary
        for old in (out / "train_log.csv", out / "train.json"):
            old.unlink(missing_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = SegmentationModule(model_config=model_config, num_classes=metadata.num_classes,
                                optim=config.optimizer, max_steps=config.max_steps,
                                seed=config.seed, config_key=key)
    if resume is None:
        initialise_from_pretrained(module.model, config.pretrained.get(model_config.backbone))
    datamodule = TrainDataModule(data, batch_size=config.batch_size, seed=config.seed,
                                 num_workers=config.num_workers)

    run = None
    logger: MLFlowLogger | bool = False
    if tracking_config.enabled and rank_zero_only.rank == 0:
        run = tracking.start_run(
            key=key, config=tracking_config, continue_run=resume is not None,
            params=resolved, tags={"effm2f.stage": "train", "effm2f.dataset": dataset,
                                   "effm2f.variant": variant})
        logger = ResumedMLFlowLogger(experiment_name=tracking_config.experiment,
                                     tracking_uri=run.tracking_uri, run_id=run.run_id,
                                     logged_through=tracking.last_logged_step(run))

    checkpointing = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="step{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every, save_last=True, save_top_k=1,
        save_on_train_epoch_end=False)
    callbacks: list[Callback] = [checkpointing, LossCurve(out / "train_log.csv",
                                                          config.log_every), *extra_callbacks]
    plugins = []
    if os.environ.get("SLURM_JOB_ID") and SLURMEnvironment.detect():
        # Lightning saves hpc_ckpt_N.ckpt into default_root_dir and requeues the job on SIGUSR1.
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    accelerator = config.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    max_time = (datetime.timedelta(seconds=config.max_time) if config.max_time else None)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=_precision(config, accelerator),  # type: ignore[arg-type]
        max_steps=config.max_steps,
        max_epochs=-1,
        max_time=max_time,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *plugins],
        default_root_dir=checkpoint_dir,
        log_every_n_steps=config.log_every,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # the ResumableDataLoader shards by rank itself
        benchmark=False,
        **_gradient_clipping(config),
    )
    if resume is not None:
        log.info("resuming from %s", resume)
    started = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except BaseException:
        if run is not None:
            tracking.end_run(run, "FAILED")
        raise
    elapsed = time.monotonic() - started
    last = checkpoint_dir / LAST
    if trainer.interrupted:
        raise RuntimeError(f"training of {variant} on {dataset} was interrupted at step "
                           f"{trainer.global_step}; run it again to resume from {last}")
    trainer.save_checkpoint(last)  # the end state (a no-op resume if started again)

    curve = read_loss_curve(out / "train_log.csv") if (out / "train_log.csv").exists() else []
    final_loss = curve[-1].get("loss") if curve else None
    result = TrainResult(last, trainer.global_step, final_loss, elapsed,
                         run.run_id if run else None, out)
    if trainer.is_global_zero:
        summary = {"dataset": dataset, "variant": variant, "global_step": trainer.global_step,
                   "max_steps": config.max_steps, "final_loss": final_loss,
                   "elapsed_s_this_job": round(elapsed, 1), "checkpoint": str(last),
                   "mlflow_run_id": result.mlflow_run_id}
        write_json_atomic(out / "train.json", summary)
        if run is not None:
            final = {"train/final_loss": final_loss, "train/steps": trainer.global_step}
            tracking.log_metrics(run, {k: v for k, v in final.items() if v is not None},
                                 step=trainer.global_step)
            tracking.log_artifacts(run, [out / "train_config.yaml", out / "train.json",
                                         out / "train_log.csv"])
            tracking.end_run(run)
    return result
