"""The Lightning training module: Mask2Former's losses, optimiser, schedule and a NaN guard.

Optimisation concerns only; the model is `effm2f.models.mask2former.Mask2Former`, the data comes
from `effm2f.engine.data`, gradient clipping is done by the Trainer (``gradient_clip_val``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from effm2f.config import to_dict
from effm2f.engine.config import OptimConfig
from effm2f.engine.datamodule import mix_seed
from effm2f.engine.optim import build_optimizer
from effm2f.errors import RunFailure
from effm2f.models.config import ModelConfig
from effm2f.models.mask2former import Mask2Former

CONFIG_KEY = "effm2f_config_key"
"""Checkpoint field: the run key of the config that wrote it."""


class NonFiniteLossError(RunFailure, FloatingPointError):
    """The loss (or the gradient) became NaN or infinite; training stops before any update."""


class SegmentationModule(L.LightningModule):
    """Trains a Mask2Former with the set-prediction loss summed over all decoder layers.

    Args:
        model_config: the variant's model config.
        num_classes: categories of the dataset.
        optim: optimiser and schedule settings.
        max_steps: the poly schedule's length.
        seed: seeds the loss's point sampling at every step (a pure function of the step index,
            so a resumed run samples the same points as an uninterrupted one).
        config_key: identifies the job's config; saved in every checkpoint (``CONFIG_KEY``) so
            that a checkpoint of another config is never resumed.
    """

    def __init__(self, *, model_config: ModelConfig, num_classes: int, optim: OptimConfig,
                 max_steps: int, seed: int = 0, config_key: str = "") -> None:
        super().__init__()
        self.save_hyperparameters({"model": to_dict(model_config), "num_classes": num_classes,
                                   "optim": to_dict(optim), "max_steps": max_steps,
                                   "seed": seed}, logger=False)
        self.model = Mask2Former(config=model_config, num_classes=num_classes)
        self.optim = optim
        self.max_steps = max_steps
        self.seed = seed
        self.config_key = config_key

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config_key

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The loss samples points with torch's RNG: seed it from the step so that every step is
        # a pure function of (weights, optimiser state, batch, step), resumed or not.
        torch.manual_seed(mix_seed(self.seed, self.global_step, self.global_rank))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        output = self.model(batch["images"])
        losses = self.model.loss(output, batch["mask_labels"], batch["class_labels"])
        loss = torch.stack(list(losses.values())).sum()
        if not torch.isfinite(loss):
            bad = sorted(k for k, v in losses.items() if not torch.isfinite(v))
            raise NonFiniteLossError(
                f"loss is {loss.item()} at training step {self.global_step} (non-finite terms: "
                f"{', '.join(bad[:6])}); training stopped before the update, the last good "
                f"checkpoint is kept")
        batch_size = len(batch["mask_labels"])
        final = {k: v for k, v in losses.items() if not k[-1].isdigit()}  # last decoder layer
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in final.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        # Under fp16 mixed precision the grad scaler skips steps with inf/NaN gradients itself.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if norms and scaler is None:
            total = torch.stack(norms).norm()
            if not torch.isfinite(total):
                raise NonFiniteLossError(
                    f"gradient norm is {total.item()} at training step {self.global_step}; "
                    f"training stopped before the update, the last good checkpoint is kept")
            self.log("train/grad_norm", total, batch_size=1)
        for group in optimizer.param_groups:
            self.log(f"lr/{group.get('name', 'group')}", group["lr"], batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(self.model, self.optim, max_steps=self.max_steps)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
