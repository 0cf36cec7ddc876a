"""The assembled model: shapes, exits, the loss, and parameter counts against the model zoo."""

from __future__ import annotations

import pytest
import torch

from effm2f.models.config import ModelConfig
from effm2f.models.mask2former import Mask2Former
from support.models import tiny_model


@pytest.mark.parametrize("backbone", ["resnet_test", "swin_test"])
def test_forward_gives_a_prediction_per_decoder_layer(backbone):
    config = tiny_model()
    config = ModelConfig(**{**config.__dict__, "backbone": backbone})
    model = Mask2Former(config=config, num_classes=5).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 96) * 255)
    assert len(output.class_logits) == len(output.mask_logits) == 3
    assert output.class_logits[-1].shape == (2, 8, 6)
    assert output.mask_logits[-1].shape == (2, 8, 16, 24)


def test_encoder_exit_changes_predictions():
    model = Mask2Former(config=tiny_model(schedule=(0, 0, 6)), num_classes=5).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        full = model(images).mask_logits[-1]
        early = model(images, num_encoder_layers=2).mask_logits[-1]
    assert full.shape == early.shape
    assert not torch.allclose(full, early)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    model = Mask2Former(
        config=tiny_model(schedule=(1, 1, 1), trc="linear", lpe=True), num_classes=3
    )
    images = torch.zeros(2, 3, 64, 64)
    images[:, 0, :32] = 255  # a red top half, class 0; a black bottom half, class 1
    masks = torch.zeros(2, 2, 64, 64, dtype=torch.bool)
    masks[:, 0, :32] = True
    masks[:, 1, 32:] = True
    labels = [torch.tensor([0, 1])] * 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = sum(model.loss(model(images), list(masks), labels).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_loss_weights_follow_the_config():
    model = Mask2Former(config=tiny_model(), num_classes=3).eval()
    output = model(torch.rand(1, 3, 64, 64) * 255)
    torch.manual_seed(0)
    losses = model.loss(output, [torch.ones(1, 64, 64, dtype=torch.bool)], [torch.tensor([2])])
    torch.manual_seed(0)
    raw = model.criterion(
        masks_queries_logits=output.mask_logits[-1],
        class_queries_logits=output.class_logits[-1],
        mask_labels=[torch.ones(1, 64, 64)],
        class_labels=[torch.tensor([2])],
        auxiliary_predictions=None,
    )
    assert losses["loss_cross_entropy"].item() == pytest.approx(
        2.0 * raw["loss_cross_entropy"].item()
    )
    assert losses["loss_dice"].item() == pytest.approx(5.0 * raw["loss_dice"].item())
    assert "loss_mask_1" in losses  # auxiliary predictions of the earlier decoder layers


@pytest.mark.parametrize(("backbone", "millions"), [("r50", 44.0), ("swint", 47.4)])
def test_parameter_counts_match_the_model_zoo(backbone, millions):
    """Mask2Former's model zoo lists 44M (R50) and 47M (Swin-T) parameters for COCO panoptic."""
    model = Mask2Former(config=ModelConfig(backbone=backbone), num_classes=133)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, abs=0.1)


def test_frozen_batch_norm_keeps_pretrained_statistics():
    from effm2f.models.backbone import Backbone, FrozenBatchNorm2d

    trained = Backbone("resnet_test")
    for module in trained.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    frozen = Backbone("resnet_test", freeze_norm=True)
    frozen.load_state_dict(trained.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    images = torch.randn(2, 3, 64, 64)
    frozen.train()  # train mode must not switch to batch statistics or update the buffers
    with torch.no_grad():
        expected = trained.eval()(images)
        actual = frozen(images)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(frozen.state_dict(), trained.state_dict())


def test_frozen_batch_norm_is_detectron2s():
    """detectron2's FrozenBatchNorm2d: F.batch_norm in eval form with the replaced layer's eps,
    the input dtype kept, BatchNorm2d's state-dict keys (num_batches_tracked included)."""
    from effm2f.models.backbone import freeze_batch_norm

    generator = torch.Generator().manual_seed(0)
    trained = torch.nn.BatchNorm2d(8, eps=1e-3)
    for buffer in (trained.weight, trained.bias, trained.running_mean):
        buffer.data = torch.randn(8, generator=generator)
    trained.running_var.data = torch.rand(8, generator=generator) + 0.01
    frozen = freeze_batch_norm(torch.nn.Sequential(trained)).train()  # replaces, keeps `trained`
    images = torch.randn(2, 8, 5, 7, generator=generator)
    with torch.no_grad():
        assert torch.equal(frozen(images), trained.eval()(images))
        assert frozen(images.bfloat16()).dtype == torch.bfloat16
    assert frozen[0].eps == 1e-3
    assert list(frozen[0].state_dict()) == list(trained.state_dict())
