"""A real training process killed (SIGKILL) at a seeded random point after a checkpoint was
written, then started again, ends with the same weights, learning curve and MLflow run as an
uninterrupted run of the same config, with no step logged twice."""

from __future__ import annotations

import csv
import random
import signal
import time

import pytest
import torch

from effm2f.engine.train import read_loss_curve, train
from support.engine import (
    checkpoint_weights,
    python,
    shared_synthetic_root,
    sqlite_tracking,
    tiny_model_config,
    tiny_train_config,
)

MAX_STEPS = 24
SCRIPT = """
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from support.engine import sqlite_tracking, tiny_model_config, tiny_train_config
from effm2f.engine.train import train
root, out, track = map(Path, sys.argv[1:4])
result = train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
               config=tiny_train_config(root, max_steps=int(sys.argv[4])),
               tracking_config=sqlite_tracking(track), output=out, progress=False)
print("FINISHED", result.global_step, result.mlflow_run_id)
"""


def _step_checkpoints(folder):
    return sorted(folder.glob("checkpoints/step*.ckpt"))


def _checkpoint_step(path) -> int:
    return int(path.stem.removeprefix("step"))


def test_killed_training_resumes_to_identical_weights_and_metrics(tmp_path, tmp_path_factory):
    root = shared_synthetic_root(tmp_path_factory)
    rng = random.Random(20240611)
    kill_after_step = rng.choice([3, 6, 9])  # a checkpoint step (every 3)
    extra_delay = rng.uniform(0.0, 0.4)  # then kill somewhere in the following steps

    # the interrupted run: a real process, killed, then started again
    killed = tmp_path / "killed"
    args = (str(root), str(killed), str(tmp_path / "killed_mlflow"), str(MAX_STEPS))
    (tmp_path / "killed_mlflow").mkdir()
    process = python(SCRIPT, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        done = [_checkpoint_step(p) for p in _step_checkpoints(killed)]
        if done and max(done) >= kill_after_step:
            break
        time.sleep(0.02)
    time.sleep(extra_delay)
    assert process.poll() is None, "training ended before it could be killed:\n" + \
        process.stdout.read()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu",
                        weights_only=False)["global_step"]
    assert kill_after_step <= before < MAX_STEPS

    restarted = python(SCRIPT, *args)
    output, _ = restarted.communicate(timeout=180)
    assert restarted.returncode == 0, output[-3000:]
    assert f"FINISHED {MAX_STEPS}" in output
    assert "Restoring states from the checkpoint path at" in output

    # the uninterrupted run of the same config (in this process)
    (tmp_path / "plain_mlflow").mkdir()
    reference = train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                      config=tiny_train_config(root, max_steps=MAX_STEPS),
                      tracking_config=sqlite_tracking(tmp_path / "plain_mlflow"),
                      output=tmp_path / "plain", progress=False)

    resumed_weights = checkpoint_weights(killed / "checkpoints" / "last.ckpt")
    plain_weights = checkpoint_weights(reference.checkpoint)
    assert resumed_weights.keys() == plain_weights.keys()
    for name, value in plain_weights.items():
        assert torch.allclose(resumed_weights[name], value, rtol=0, atol=1e-6), name

    with (killed / "train_log.csv").open() as handle:  # no step written twice
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(MAX_STEPS))
    resumed_curve = read_loss_curve(killed / "train_log.csv")
    plain_curve = read_loss_curve(tmp_path / "plain" / "train_log.csv")
    assert [r["step"] for r in resumed_curve] == list(range(MAX_STEPS))
    for mine, theirs in zip(resumed_curve, plain_curve, strict=True):
        for key in ("loss", "loss_mask", "loss_dice", "loss_cross_entropy", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=0, abs=1e-6), (mine, theirs)

    # one MLflow run for the interrupted job, finished, with the whole loss history
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sqlite_tracking(tmp_path / "killed_mlflow").tracking_uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(MAX_STEPS))  # each step logged once
