"""Training: the loss goes down, a NaN stops training and keeps the last good checkpoint."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from effm2f.data.datasets import build_dataset, collate
from effm2f.engine.config import TrackingConfig
from effm2f.engine.module import NonFiniteLossError, SegmentationModule
from effm2f.engine.train import read_loss_curve, resume_candidates, train
from support.engine import (
    checkpoint_weights,
    shared_synthetic_root,
    tiny_model_config,
    tiny_train_config,
)

OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_synthetic_root(tmp_path_factory)


def fixed_batch_loss(model: torch.nn.Module, batch: dict) -> float:
    """The loss of ``model`` on ``batch`` with a fixed point-sampling seed."""
    torch.manual_seed(123)
    with torch.no_grad():
        output = model(batch["images"])
        return float(sum(model.loss(output, batch["mask_labels"], batch["class_labels"]).values()))


def test_short_training_decreases_the_loss(root, tmp_path):
    config = tiny_train_config(root, max_steps=10, checkpoint_every=5)
    result = train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                   config=config, tracking_config=OFF, output=tmp_path, progress=False)
    assert result.global_step == 10
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

    data = build_dataset("synthetic", "train", train=True, root=root)
    batch = collate([data[i] for i in range(4)])
    L.seed_everything(config.seed, verbose=False)  # the same initial weights as train()
    initial = SegmentationModule(model_config=tiny_model_config(), num_classes=6,
                                 optim=config.optimizer, max_steps=10).model
    trained = SegmentationModule(model_config=tiny_model_config(), num_classes=6,
                                 optim=config.optimizer, max_steps=10)
    trained.load_state_dict(checkpoint_weights(result.checkpoint))
    before, after = fixed_batch_loss(initial, batch), fixed_batch_loss(trained.model, batch)
    assert after < 0.9 * before, (before, after)

    curve = read_loss_curve(tmp_path / "train_log.csv")
    assert [row["step"] for row in curve] == list(range(10))
    assert curve[0]["lr"] == pytest.approx(1e-3)  # the poly schedule, stepped per update
    assert curve[-1]["lr"] == pytest.approx(1e-3 * 0.1 ** 0.9)
    assert all(math.isfinite(row["loss"]) for row in curve)


class PoisonWeights(L.Callback):
    """Sets one weight to NaN before step ``at`` (the forward pass then gives a NaN loss)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(root, tmp_path):
    config = tiny_train_config(root, max_steps=12, checkpoint_every=3)
    with pytest.raises(NonFiniteLossError, match=r"at training step 5\b"):
        train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
              config=config, tracking_config=OFF, output=tmp_path, progress=False,
              extra_callbacks=[PoisonWeights(at=5)])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert resume_candidates(tmp_path / "checkpoints")[0] == last
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values()
               if v.is_floating_point())
    assert not (tmp_path / "train.json").exists()  # the job did not finish


def test_resume_tries_last_requeue_and_periodic_checkpoints_newest_first(tmp_path):
    import os

    assert resume_candidates(tmp_path) == []
    for age, name in ((30, "last.ckpt"), (20, "hpc_ckpt_1.ckpt"), (10, "hpc_ckpt_2.ckpt"),
                      (5, "step0000005.ckpt"), (0, "notes.txt")):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    assert [p.name for p in resume_candidates(tmp_path)] == [
        "step0000005.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_1.ckpt", "last.ckpt"]
    os.utime(tmp_path / "last.ckpt", (1e9 + 5, 1e9 + 5))
    assert resume_candidates(tmp_path)[0].name == "last.ckpt"


def test_checkpoints_of_another_config_are_set_aside_not_resumed(root, tmp_path):
    first = tiny_train_config(root, max_steps=4, checkpoint_every=2)
    train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(), config=first,
          tracking_config=OFF, output=tmp_path, progress=False)
    longer = tiny_train_config(root, max_steps=3, checkpoint_every=2)
    result = train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                   config=longer, tracking_config=OFF, output=tmp_path, progress=False)
    assert result.global_step == 3  # trained afresh, not "already at step 4"
    assert (tmp_path / "checkpoints.stale-1" / "last.ckpt").is_file()
    assert [row["step"] for row in read_loss_curve(tmp_path / "train_log.csv")] == [0, 1, 2]
