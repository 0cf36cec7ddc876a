"""MLflow tracking: one run per job, found again by a deterministic run key.

A job (training or evaluation of one variant on one dataset) has a run key
``<dataset>/<variant>/<stage>/<hash of its resolved config>``, stored as the tag ``effm2f.run_key``.
:func:`start_run` searches the experiment for that tag and continues the newest run it finds (a
retried, requeued or resumed job), else creates it: one config, one run; a training that starts
from scratch opens a new run. Runs carry the full resolved config as flattened params, and
provenance tags (git commit and dirty state, data version from ``data.dvc``).

The tracking URI is the config's ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a
SQLite store ``mlflow.db`` at the repository root (MLflow's file store is deprecated).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from effm2f.engine.config import TrackingConfig

log = logging.getLogger(__name__)

RUN_KEY_TAG = "effm2f.run_key"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_PARAMS_PER_BATCH = 100


def repository_root(start: str | Path | None = None) -> Path:
    """The closest folder at or above ``start`` (default: the working directory) that holds
    ``.git`` or ``pyproject.toml``; ``start`` itself if there is none."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
            return folder
    return start


def tracking_uri(config: TrackingConfig | None = None, *, root: str | Path | None = None) -> str:
    """The tracking URI: config, else $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db."""
    if config is not None and config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root(root) / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``mlruns/`` beside the database (not the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
    return None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive file lock beside the database: jobs that start together
    (two training jobs of one workflow) must not create or migrate its tables at the same time."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///"):]).resolve().with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def config_hash(resolved: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able config (key order does not matter)."""
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(dataset: str, variant: str, stage: str, resolved: Mapping[str, Any]) -> str:
    """``<dataset>/<variant>/<stage>/<config hash>``."""
    return f"{dataset}/{variant}/{stage}/{config_hash(resolved)}"


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values (lists as JSON), truncated to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, list | tuple | Mapping) else str(value)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def data_version(root: str | Path | None = None) -> str:
    """The md5 of the ``data`` output in ``data.dvc`` at the repository root ("unknown" if none)."""
    path = repository_root(root) / "data.dvc"
    try:
        outs = yaml.safe_load(path.read_text()).get("outs", [])
        return str(next(o["md5"] for o in outs if "md5" in o))
    except (OSError, AttributeError, StopIteration, yaml.YAMLError, TypeError):
        return "unknown"


def provenance_tags(root: str | Path | None = None) -> dict[str, str]:
    """git commit, dirty flag and data version of the repository at ``root``."""
    repo = repository_root(root)
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "data.version": data_version(repo),
    }


@dataclass(frozen=True)
class TrackedRun:
    """A run found or created by :func:`start_run`."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    key: str
    resumed: bool


def start_run(*, key: str, config: TrackingConfig, params: Mapping[str, Any],
              tags: Mapping[str, str] | None = None, run_name: str | None = None,
              root: str | Path | None = None, continue_run: bool = True) -> TrackedRun:
    """Continue the newest run tagged with ``key`` or create one; log params and tags.

    Args:
        key: the deterministic run key (see :func:`run_key`).
        config: the ``mlflow`` config section.
        continue_run: False always creates a new run (a training that starts from scratch, e.g.
            into a deleted output folder, must not append its steps to an earlier run).
        params: the resolved config (nested), logged flattened with dotted keys.
        tags: more tags (e.g. stage, dataset, variant).
        run_name: the display name of a new run (default: the key without its hash).
        root: the repository root for the default store and the provenance tags.
    """
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(config, root=root)
    all_tags = {RUN_KEY_TAG: key, **provenance_tags(root), **(tags or {})}
    with store_lock(uri):  # the store's creation, and find-or-create, one job at a time
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(config.experiment,
                                                       artifact_location=artifact_location(uri)))
        found = continue_run and client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            log.info("MLflow: continuing run %s (key %s) at %s", run_id, key, uri)
        else:
            name = run_name or key.rsplit("/", 1)[0].replace("/", "-")
            run_id = client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id
            log.info("MLflow: new run %s (key %s) at %s", run_id, key, uri)
    flat = flatten_params(params)
    items = [Param(k, v) for k, v in flat.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    return TrackedRun(run_id, experiment_id, uri, key, resumed=bool(found))


def last_logged_step(run: TrackedRun) -> int:
    """The largest step any metric of ``run`` was logged at (-1 for a run without metrics)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=run.tracking_uri)
    names = client.get_run(run.run_id).data.metrics
    steps = (m.step for name in names for m in client.get_metric_history(run.run_id, name))
    return max(steps, default=-1)


def log_metrics(run: TrackedRun, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite numeric metrics (names may contain '/'); NaN/inf values are skipped."""
    import math
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(float(v))]
    client = MlflowClient(tracking_uri=run.tracking_uri)
    for start in range(0, len(items), 1000):
        client.log_batch(run.run_id, metrics=items[start:start + 1000])


def log_artifacts(run: TrackedRun, paths: Iterable[str | Path], artifact_path: str | None = None,
                  ) -> None:
    """Upload files (each under ``artifact_path``) to the run's artifact store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=run.tracking_uri)
    for path in paths:
        client.log_artifact(run.run_id, str(path), artifact_path)


def end_run(run: TrackedRun, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED/KILLED)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=run.tracking_uri).set_terminated(run.run_id, status)


def write_config_yaml(path: str | Path, resolved: Mapping[str, Any]) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    from effm2f.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(json.loads(json.dumps(resolved, default=str)),
                                           sort_keys=False))
    return Path(path)
