"""Checkpoint import: detectron2, transformers, torchvision ResNet and Swin ImageNet formats.

Sources are built independently where possible: the transformers format from transformers' own
Mask2FormerForUniversalSegmentation (our forward must equal its forward), the others from key lists
written out here by hand in each format's own naming (detectron2 Mask2Former / PRO-SCALE,
torchvision, the Swin release), plus hand-placed spot tensors.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Mask2FormerForUniversalSegmentation

from effm2f.cli.model import main as model_cli
from effm2f.models.backbone import BACKBONES
from effm2f.models.checkpoint import (
    FORMATS,
    TABLES,
    CheckpointError,
    export_state_dict,
    import_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from effm2f.models.config import ModelConfig
from effm2f.models.mask2former import Mask2Former, transformers_config
from effm2f.untrusted import UnsafeFileError
from effm2f.variants import load_variants, resolve_variant
from support.models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5
NORM = ("weight", "bias")
BN = ("weight", "bias", "running_mean", "running_var")


def tiny(backbone: str = "resnet_test", **encoder) -> ModelConfig:
    config = tiny_model(**encoder)
    return replace(config, backbone=backbone, encoder=replace(config.encoder, schedule=(0, 0, 2)))


def build(config: ModelConfig) -> Mask2Former:
    return Mask2Former(config=config, num_classes=NUM_CLASSES).eval()


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Perturb every parameter and BN statistic: no zero-initialised tensor may hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or name.startswith("criterion."):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() + 0.5)
            else:
                tensor.add_(0.1 * noise)


def assert_same_state(
    a: torch.nn.Module, b: torch.nn.Module, ignore: str = "swin.layernorm."
) -> None:
    """Equal state dicts, except the Swin ImageNet final norm (unused, absent from detectron2)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert ignore in key or torch.equal(sa[key], sb[key]), key


def run(model: Mask2Former, pixel_values: torch.Tensor):
    """Our predictions from already-normalised pixels (as transformers takes them)."""
    with torch.no_grad():
        return model.decode(model.pixel_decoder(model.backbone(pixel_values)))


# ------------------------------------------------------------------------------ transformers format


def reference_model(config: ModelConfig) -> Mask2FormerForUniversalSegmentation:
    """transformers' own Mask2Former with the same sizes as ``config`` (baseline schedule)."""
    hf_config = transformers_config(config, NUM_CLASSES)
    hf_config.backbone_config = BACKBONES[config.backbone]()
    hf_config.encoder_layers = config.encoder.num_layers
    hf_config.encoder_feedforward_dim = config.encoder.ffn_dim
    assert config.encoder.num_heads == config.decoder.num_heads  # transformers shares one value
    model = Mask2FormerForUniversalSegmentation(hf_config).eval()
    randomise(model)
    return model


def assert_matches_reference(ours: Mask2Former, reference, seed: int = 3) -> None:
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_auxiliary_logits=True)
    got = run(ours, pixels)
    torch.testing.assert_close(
        got.class_logits[-1], expected.class_queries_logits, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        got.mask_logits[-1], expected.masks_queries_logits, atol=1e-5, rtol=0
    )
    for layer, aux in enumerate(expected.auxiliary_logits):
        torch.testing.assert_close(
            got.class_logits[layer], aux["class_queries_logits"], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            got.mask_logits[layer], aux["masks_queries_logits"], atol=1e-5, rtol=0
        )


def test_transformers_format_reproduces_the_reference_forward(tmp_path):
    config = tiny()
    reference = reference_model(config)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))

    ours = build(config)
    report = load_checkpoint(ours, path, "transformers")

    assert report.ok, report.summary()
    assert report.skipped == {"criterion.empty_weight": "derived buffer (from the loss config)"}
    assert_matches_reference(ours, reference)


# Swin names as stored in hub files saved before transformers 5 (transformers' own conversion
# mapping renames them on load); written here as the inverse, old <- new.
LEGACY_SWIN = [
    ("swin.embeddings.", "embeddings."),
    ("swin.encoder.", "encoder."),
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    (
        "attention.relative_position_bias.relative_position_bias_table",
        "attention.self.relative_position_bias_table",
    ),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
]


def legacy_hub_name(key: str) -> str:
    prefix = "model.pixel_level_module.encoder."
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix) :]
    for new, old in LEGACY_SWIN:
        rest = rest.replace(new, old)
    return prefix + rest


def test_transformers_format_with_legacy_swin_hub_names(tmp_path):
    config = tiny("swin_test")
    reference = reference_model(config)
    state = {legacy_hub_name(k): v for k, v in reference.state_dict().items()}
    assert (
        "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight"
        in state
    )
    assert "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.output.dense.weight" in state
    state[
        "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.relative_position_index"
    ] = torch.zeros(16, 16, dtype=torch.long)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)

    ours = build(config)
    report = load_checkpoint(ours, path, "transformers")

    assert report.ok, report.summary()
    assert_matches_reference(ours, reference)


# ------------------------------------------------------------------------------- detectron2 format


def test_detectron2_spot_keys_land_where_expected():
    model = build(tiny())
    c = model.config.hidden_dim
    self_attn = "sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn."
    state = {
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight": torch.full(
            (96, c), 1.0
        ),
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.norm2.bias": torch.full((c,), 2.0),
        "sem_seg_head.pixel_decoder.adapter_1.norm.weight": torch.full((c,), 3.0),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": torch.full((c, 256, 1, 1), 4.0),
        "sem_seg_head.pixel_decoder.mask_features.bias": torch.full((c,), 5.0),
        self_attn + "in_proj_weight": torch.cat(
            [torch.full((c, c), 10.0), torch.full((c, c), 11.0), torch.full((c, c), 12.0)]
        ),
        self_attn + "in_proj_bias": torch.arange(3.0 * c),
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.norm.weight": torch.full(
            (c,), 13.0
        ),
        "sem_seg_head.predictor.transformer_ffn_layers.1.linear2.weight": torch.full((c, 96), 14.0),
        "sem_seg_head.predictor.query_feat.weight": torch.full((8, c), 15.0),
        "sem_seg_head.predictor.query_embed.weight": torch.full((8, c), 16.0),
        "sem_seg_head.predictor.decoder_norm.weight": torch.full((c,), 17.0),
        "sem_seg_head.predictor.mask_embed.layers.2.bias": torch.full((c,), 18.0),
        "sem_seg_head.predictor.class_embed.weight": torch.full((NUM_CLASSES + 1, c), 19.0),
        "backbone.res3.0.conv2.weight": torch.full((64, 64, 3, 3), 20.0),
        "backbone.res5.0.shortcut.norm.running_var": torch.full((256,), 21.0),
        "backbone.stem.conv1.norm.running_mean": torch.full((16,), 22.0),
    }
    report = import_state_dict(model, state, "detectron2")
    assert not report.unexpected and len(report.loaded) == len(state) + 4  # q/k/v: 2 more each

    ours = model.state_dict()
    decoder = "transformer_decoder.decoder."
    expected = {
        "pixel_decoder.encoder.layers.0.fc1.weight": 1.0,
        "pixel_decoder.encoder.layers.1.final_layer_norm.bias": 2.0,
        "pixel_decoder.adapter_1.1.weight": 3.0,
        "pixel_decoder.input_projections.0.0.weight": 4.0,  # the res5 (coarsest) projection
        "pixel_decoder.mask_projection.bias": 5.0,
        decoder + "layers.1.self_attn.q_proj.weight": 10.0,
        decoder + "layers.1.self_attn.k_proj.weight": 11.0,
        decoder + "layers.1.self_attn.v_proj.weight": 12.0,
        decoder + "layers.0.cross_attn_layer_norm.weight": 13.0,
        decoder + "layers.1.fc2.weight": 14.0,
        "transformer_decoder.queries_features.weight": 15.0,
        "transformer_decoder.queries_embedder.weight": 16.0,
        decoder + "layernorm.weight": 17.0,
        decoder + "mask_predictor.mask_embedder.2.0.bias": 18.0,
        "class_predictor.weight": 19.0,
        "backbone.body.encoder.stages.1.layers.0.layer.1.convolution.weight": 20.0,
        "backbone.body.encoder.stages.3.layers.0.shortcut.normalization.running_var": 21.0,
        "backbone.body.embedder.embedder.normalization.running_mean": 22.0,
    }
    for key, value in expected.items():
        assert torch.all(ours[key] == value), key
    bias = torch.arange(3.0 * c)
    assert torch.equal(ours[decoder + "layers.1.self_attn.q_proj.bias"], bias[:c])
    assert torch.equal(ours[decoder + "layers.1.self_attn.k_proj.bias"], bias[c : 2 * c])
    assert torch.equal(ours[decoder + "layers.1.self_attn.v_proj.bias"], bias[2 * c :])


def test_detectron2_swin_spot_keys_split_qkv_in_q_k_v_order():
    model = build(tiny("swin_test"))
    dim = 16
    qkv = torch.cat(
        [torch.full((dim, dim), 1.0), torch.full((dim, dim), 2.0), torch.full((dim, dim), 3.0)]
    )
    state = {
        "backbone.layers.0.blocks.0.attn.qkv.weight": qkv,
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table": torch.full((49, 1), 4.0),
        "backbone.layers.0.blocks.0.attn.relative_position_index": torch.zeros(
            16, 16, dtype=torch.long
        ),
        "backbone.layers.1.downsample.reduction.weight": torch.full((64, 128), 5.0),
        "backbone.norm3.weight": torch.full((128,), 6.0),
        "backbone.patch_embed.norm.bias": torch.full((16,), 7.0),
    }
    report = import_state_dict(model, state, "detectron2")
    assert not report.unexpected
    assert "backbone.layers.0.blocks.0.attn.relative_position_index" in report.skipped
    ours = model.state_dict()
    block = "backbone.body.swin.encoder.layers.0.blocks.0.attention."
    for key, value in {
        block + "q_proj.weight": 1.0,
        block + "k_proj.weight": 2.0,
        block + "v_proj.weight": 3.0,
        block + "relative_position_bias.relative_position_bias_table": 4.0,
        "backbone.body.swin.encoder.layers.1.downsample.reduction.weight": 5.0,
        "backbone.body.hidden_states_norms.stage4.weight": 6.0,
        "backbone.body.swin.embeddings.norm.bias": 7.0,
    }.items():
        assert torch.all(ours[key] == value), key


@pytest.mark.parametrize("backbone", ["resnet_test", "swin_test"])
def test_detectron2_round_trip(backbone):
    source = build(tiny(backbone))
    randomise(source)
    exported = export_state_dict(source, "detectron2")
    expected = d2_mask2former_keys(source.config)
    assert set(exported) == {
        k
        for k in expected
        if k != "criterion.empty_weight" and not k.endswith("relative_position_index")
    }

    target = build(tiny(backbone))
    report = import_state_dict(target, exported, "detectron2")

    assert report.ok, report.summary()
    assert_same_state(source, target)


def test_detectron2_pickle_of_numpy_arrays_and_pth(tmp_path):
    source = build(tiny())
    randomise(source)
    exported = export_state_dict(source, "detectron2")
    pkl = tmp_path / "model_final.pkl"
    with pkl.open("wb") as handle:
        arrays = {k: v.numpy() for k, v in exported.items()}
        pickle.dump({"model": arrays, "__author__": "Mask2Former"}, handle, protocol=2)
    pth = tmp_path / "model_final.pth"
    torch.save({"model": exported, "iteration": 7, "scheduler": {"last_epoch": 7}}, pth)

    for path in (pkl, pth):
        target = build(tiny())
        report = load_checkpoint(target, path, "detectron2")
        assert report.ok, report.summary()
        assert_same_state(source, target)


def test_detectron2_backbone_only_pickle(tmp_path):
    source = build(tiny())
    randomise(source)
    backbone = {
        k[len("backbone.") :]: v.numpy()
        for k, v in export_state_dict(source, "detectron2").items()
        if k.startswith("backbone.")
    }
    assert "stem.conv1.weight" in backbone
    path = tmp_path / "R-50.pkl"
    path.write_bytes(
        pickle.dumps({"model": backbone, "__author__": "torchvision", "matching_heuristics": True})
    )

    target = build(tiny())
    report = load_checkpoint(target, path, "detectron2")
    assert not report.unexpected
    assert all(not k.startswith("backbone.") for k in report.missing)
    for key in report.loaded:
        assert torch.equal(target.state_dict()[key], source.state_dict()[key]), key


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": np.zeros(2)}, "hook": print}))
    with pytest.raises(UnsafeFileError, match="refusing to load checkpoint .*evil.pkl.*"
                                              "builtins.print"):
        read_checkpoint(path)


def test_proscale_checkpoint_trc_lpe_and_layout_warning():
    proscale = dict(schedule=(1, 1, 1), trc="linear", lpe=True)
    source = build(replace(tiny(), encoder=replace(tiny().encoder, **proscale)))
    randomise(source)
    exported = export_state_dict(source, "detectron2")
    assert "sem_seg_head.pixel_decoder.transformer.encoder.token_excite.ops.weight" in exported
    assert "sem_seg_head.pixel_decoder.layer_1.norm.weight" in exported
    assert "sem_seg_head.pixel_decoder.layer_1.weight" not in exported  # LPE: a max-pool

    default_layout = build(source.config)
    with pytest.warns(UserWarning, match="trc_layout: official"):
        report = import_state_dict(default_layout, exported, "detectron2")
    assert report.ok and report.warnings
    assert_same_state(source, default_layout)

    official = build(
        replace(source.config, encoder=replace(source.config.encoder, trc_layout="official"))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = import_state_dict(official, exported, "detectron2")
    assert report.ok and not report.warnings
    assert_same_state(source, official)

    # Into the same schedule without TRC and LPE: TRC weights unused, the 3x3 conv missing.
    plain = build(replace(tiny(), encoder=replace(tiny().encoder, schedule=(1, 1, 1))))
    report = import_state_dict(plain, exported, "detectron2")
    assert report.missing == ["pixel_decoder.layer_1.0.weight"]
    assert set(report.unexpected) == {
        "sem_seg_head.pixel_decoder.transformer.encoder.token_excite.ops.weight",
        "sem_seg_head.pixel_decoder.transformer.encoder.token_excite.ops.bias",
    }


def test_shape_mismatch_is_refused_naming_key_and_shapes():
    model = build(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exported = export_state_dict(model, "detectron2")
    exported["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(81, 64)
    with pytest.raises(CheckpointError) as info:
        import_state_dict(model, exported, "detectron2")
    message = str(info.value)
    assert "sem_seg_head.predictor.class_embed.weight" in message and "(81, 64)" in message
    assert "class_predictor.weight" in message and "(6, 64)" in message

    exported = export_state_dict(model, "detectron2")
    key = "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_weight"
    exported[key] = torch.zeros(3 * 32, 64)
    with pytest.raises(
        CheckpointError, match=r"in_proj_weight.*\(96, 64\).*q_proj.weight.*\(64, 64\)"
    ):
        import_state_dict(model, exported, "detectron2")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was half-loaded


def test_missing_and_corrupt_files_are_named(tmp_path):
    model = build(tiny())
    missing = tmp_path / "nowhere.pkl"
    with pytest.raises(CheckpointError, match="not found.*nowhere.pkl"):
        load_checkpoint(model, missing, "detectron2")
    for name in ("corrupt.pth", "corrupt.pkl", "corrupt.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"\x80\x02not a checkpoint at all")
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{name}"):
            load_checkpoint(model, path, "detectron2")
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}}, empty)
    with pytest.raises(CheckpointError, match="empty.pth holds no state dict"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(model, empty, "timm")


# ------------------------------------------------------------------- backbone-only ImageNet formats


def torchvision_resnet_keys(depths, bottleneck: bool) -> list[str]:
    """torchvision ResNet names. Block 0 of every stage has a projection shortcut (downsample)."""
    keys = [
        "conv1.weight",
        *(f"bn1.{p}" for p in (*BN, "num_batches_tracked")),
        "fc.weight",
        "fc.bias",
    ]
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            for conv in range(1, 4 if bottleneck else 3):
                keys.append(f"{prefix}.conv{conv}.weight")
                keys += [f"{prefix}.bn{conv}.{p}" for p in (*BN, "num_batches_tracked")]
            if block == 0:
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{p}" for p in (*BN, "num_batches_tracked")]
    return keys


def swin_imagenet_keys(depths) -> list[str]:
    """The official Swin release's names (incl. its buffers and classifier)."""
    keys = [f"patch_embed.proj.{p}" for p in NORM] + [f"patch_embed.norm.{p}" for p in NORM]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}"
            keys += [
                f"{prefix}.attn.relative_position_bias_table",
                f"{prefix}.attn.relative_position_index",
            ]
            for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                keys += [f"{prefix}.{name}.{p}" for p in NORM]
            if block % 2:
                keys.append(f"{prefix}.attn_mask")
        if stage < len(depths) - 1:
            keys += [f"layers.{stage}.downsample.reduction.weight"]
            keys += [f"layers.{stage}.downsample.norm.{p}" for p in NORM]
    return keys + [f"norm.{p}" for p in NORM] + [f"head.{p}" for p in NORM]


def test_torchvision_resnet_names_and_round_trip(tmp_path):
    source = build(tiny())
    randomise(source)
    exported = export_state_dict(source, "torchvision-resnet")
    expected = set(torchvision_resnet_keys([1, 1, 1, 1], bottleneck=False)) - {
        "fc.weight",
        "fc.bias",
    }
    assert set(exported) == expected - {k for k in expected if k.endswith("num_batches_tracked")}
    exported["fc.weight"], exported["fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    path = tmp_path / "resnet.pth"
    torch.save(exported, path)

    target = build(tiny())
    report = load_checkpoint(target, path, "torchvision-resnet")
    assert report.ok and report.scope == "backbone.body.", report.summary()
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    body_s, body_t = source.backbone.body.state_dict(), target.backbone.body.state_dict()
    assert all(torch.equal(body_s[k], body_t[k]) for k in body_s)
    assert torch.equal(
        target.state_dict()["backbone.body.encoder.stages.2.layers.0.shortcut.convolution.weight"],
        exported["layer3.0.downsample.0.weight"],
    )


def test_swin_imagenet_names_and_round_trip(tmp_path):
    source = build(tiny("swin_test"))
    randomise(source)
    exported = export_state_dict(source, "swin")
    expected = set(swin_imagenet_keys([1, 1, 1, 1]))
    assert set(exported) == {
        k for k in expected if not k.startswith("head.") and not k.endswith(("_index", "attn_mask"))
    }
    state = {k: exported.get(k, torch.zeros(2)) for k in expected}  # buffers and head: placeholders
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": state}, path)
    # Mask2Former's convert-pretrained-swin-model-to-d2.py: the same tensors, plain-pickled.
    d2_path = tmp_path / "swin_tiny_patch4_window7_224.pkl"
    d2_path.write_bytes(pickle.dumps({"model": state, "__author__": "third_party"}, protocol=2))
    assert read_checkpoint(d2_path).keys() == state.keys()

    target = build(tiny("swin_test"))
    report = load_checkpoint(target, path, "swin")
    assert not report.unexpected, report.summary()
    assert report.missing == [
        f"backbone.body.hidden_states_norms.stage{i}.{p}" for i in range(1, 5) for p in NORM
    ]
    assert set(report.skipped) == {
        k for k in expected if k.startswith("head.") or k.endswith(("_index", "attn_mask"))
    }
    swin_s, swin_t = source.backbone.body.swin.state_dict(), target.backbone.body.swin.state_dict()
    assert all(torch.equal(swin_s[k], swin_t[k]) for k in swin_s)


# -------------------------------------------------------- full-size key coverage (no forward, meta)


def d2_mask2former_keys(config: ModelConfig, *, backbone_only: bool = False) -> list[str]:
    """Every key of a detectron2 Mask2Former / PRO-SCALE checkpoint, written from its modules."""
    keys: list[str] = []
    if config.backbone in ("r50", "resnet_test"):
        bottleneck = config.backbone == "r50"
        depths = [3, 4, 6, 3] if bottleneck else [1, 1, 1, 1]
        keys += ["backbone.stem.conv1.weight", *(f"backbone.stem.conv1.norm.{p}" for p in BN)]
        for stage, depth in enumerate(depths, start=2):
            for block in range(depth):
                prefix = f"backbone.res{stage}.{block}"
                for conv in range(1, 4 if bottleneck else 3):
                    keys += [
                        f"{prefix}.conv{conv}.weight",
                        *(f"{prefix}.conv{conv}.norm.{p}" for p in BN),
                    ]
                if block == 0:
                    keys += [
                        f"{prefix}.shortcut.weight",
                        *(f"{prefix}.shortcut.norm.{p}" for p in BN),
                    ]
    else:
        depths = [2, 2, 6, 2] if config.backbone == "swint" else [1, 1, 1, 1]
        swin = [
            k
            for k in swin_imagenet_keys(depths)
            if not k.startswith(("norm.", "head.")) and "attn_mask" not in k
        ]
        keys += ["backbone." + k for k in swin]
        keys += [f"backbone.norm{i}.{p}" for i in range(4) for p in NORM]
    if backbone_only:
        return keys

    pd = "sem_seg_head.pixel_decoder."
    keys += [f"{pd}input_proj.{level}.{m}.{p}" for level in range(3) for m in (0, 1) for p in NORM]
    keys.append(pd + "transformer.level_embed")
    for i in range(config.encoder.num_layers):
        layer = f"{pd}transformer.encoder.layers.{i}."
        for name in (
            "self_attn.sampling_offsets",
            "self_attn.attention_weights",
            "self_attn.value_proj",
            "self_attn.output_proj",
            "norm1",
            "linear1",
            "linear2",
            "norm2",
        ):
            keys += [f"{layer}{name}.{p}" for p in NORM]
    if config.encoder.trc:
        keys += [f"{pd}transformer.encoder.token_excite.ops.{p}" for p in NORM]
    keys += [pd + "adapter_1.weight", *(f"{pd}adapter_1.norm.{p}" for p in NORM)]
    if not config.encoder.lpe:
        keys.append(pd + "layer_1.weight")
    keys += [f"{pd}layer_1.norm.{p}" for p in NORM] + [f"{pd}mask_features.{p}" for p in NORM]

    pr = "sem_seg_head.predictor."
    keys += [pr + "query_feat.weight", pr + "query_embed.weight", pr + "level_embed.weight"]
    attention = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    for i in range(config.decoder.num_layers - 1):
        keys += [f"{pr}transformer_self_attention_layers.{i}.self_attn.{n}" for n in attention]
        keys += [
            f"{pr}transformer_cross_attention_layers.{i}.multihead_attn.{n}" for n in attention
        ]
        for module in (
            f"transformer_self_attention_layers.{i}.norm",
            f"transformer_cross_attention_layers.{i}.norm",
            f"transformer_ffn_layers.{i}.linear1",
            f"transformer_ffn_layers.{i}.linear2",
            f"transformer_ffn_layers.{i}.norm",
        ):
            keys += [f"{pr}{module}.{p}" for p in NORM]
    keys += [f"{pr}decoder_norm.{p}" for p in NORM] + [f"{pr}class_embed.{p}" for p in NORM]
    keys += [f"{pr}mask_embed.layers.{j}.{p}" for j in range(3) for p in NORM]
    return keys + ["criterion.empty_weight"]


def mapped_targets(fmt: str, keys: list[str]) -> tuple[set[str], list[str]]:
    table, targets, unmapped = TABLES[fmt], set(), []
    for key in keys:
        mapped = table.map_key(key)
        if mapped is None:
            unmapped.append(key)
        else:
            assert not targets & set(mapped.targets), key
            targets.update(mapped.targets)
    return targets, unmapped


def meta_model(config: ModelConfig) -> Mask2Former:
    with torch.device("meta"):
        return Mask2Former(config=config, num_classes=133)


def learned_keys(
    model: Mask2Former, prefix: str = "", *, swin_final_norm: bool = False
) -> set[str]:
    """Model keys a checkpoint should fill (the ImageNet Swin's final norm only when asked)."""
    return {
        k
        for k in model.state_dict()
        if k.startswith(prefix)
        and not k.startswith("criterion.")
        and not k.endswith("num_batches_tracked")
        and (swin_final_norm or "swin.layernorm." not in k)
    }


@pytest.mark.parametrize("variant", ["m2f_r50", "m2f_swint", "proscale_r50", "proscale_swint"])
def test_full_size_detectron2_key_coverage(variant):
    config = resolve_variant(variant, load_variants(ROOT / "params" / "variants.yaml"))
    model = meta_model(config)
    targets, unmapped = mapped_targets("detectron2", d2_mask2former_keys(config))
    assert not unmapped
    assert targets == learned_keys(model)
    if config.backbone == "r50":  # Mask2Former's R50 (torchvision layout): stride on the 3x3 conv
        (target,) = TABLES["detectron2"].map_key("backbone.res3.0.conv2.weight").targets
        conv = model.get_submodule(target.rsplit(".", 1)[0])
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2)


def test_full_size_imagenet_backbone_key_coverage():
    r50 = meta_model(ModelConfig(backbone="r50"))
    targets, unmapped = mapped_targets(
        "torchvision-resnet", torchvision_resnet_keys([3, 4, 6, 3], bottleneck=True)
    )
    assert unmapped == []
    assert targets - {k for k in targets if k.endswith("num_batches_tracked")} == learned_keys(
        r50, "backbone.body."
    )
    (target,) = TABLES["torchvision-resnet"].map_key("layer2.0.conv2.weight").targets
    assert r50.get_submodule(target.rsplit(".", 1)[0]).stride == (2, 2)

    swint = meta_model(ModelConfig(backbone="swint"))
    targets, unmapped = mapped_targets("swin", swin_imagenet_keys([2, 2, 6, 2]))
    assert unmapped == []
    body = learned_keys(swint, "backbone.body.", swin_final_norm=True)
    norms = {k for k in body if "hidden_states_norms" in k}
    assert len(norms) == 8
    assert targets == body - norms  # the stage norms are new in the detection backbone


# ------------------------------------------------------------------------------------------- CLI


def test_cli_import_writes_a_loadable_state_dict(tmp_path, capsys):
    variants = ROOT / "params" / "variants.yaml"
    config = resolve_variant("m2f_tiny", load_variants(variants))
    source = Mask2Former(config=config, num_classes=NUM_CLASSES)
    randomise(source)
    exported = export_state_dict(source, "detectron2")
    del exported["sem_seg_head.predictor.decoder_norm.bias"]
    exported["sem_seg_head.predictor.extra.weight"] = torch.zeros(2)
    src = tmp_path / "model_final.pkl"
    src.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in exported.items()}}))
    out = tmp_path / "imported.pth"
    args = [
        "import",
        "--source",
        str(src),
        "--format",
        "detectron2",
        "--variant",
        "m2f_tiny",
        "--num-classes",
        str(NUM_CLASSES),
        "--out",
        str(out),
        "--variants-file",
        str(variants),
        "--report",
        str(tmp_path / "report.json"),
    ]

    model_cli(args)
    printed = capsys.readouterr().out
    assert "1 missing, 1 unexpected" in printed
    assert "transformer_decoder.decoder.layernorm.bias" in printed
    assert "sem_seg_head.predictor.extra.weight: no mapping rule" in printed

    target = Mask2Former(config=config, num_classes=NUM_CLASSES)
    report = load_checkpoint(target, out, "effm2f")
    assert report.ok
    s, t = source.state_dict(), target.state_dict()
    assert all(
        torch.equal(s[k], t[k]) for k in s if k != "transformer_decoder.decoder.layernorm.bias"
    )

    for bad_args, message in (([*args, "--strict"], "--strict: 1 missing and 1 unexpected"),
                              ([*args[:4], "torchvision-resnet", *args[5:]],
                               "no key of .* matched")):
        with pytest.raises(SystemExit) as info:
            model_cli(bad_args)
        assert info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert set(FORMATS) >= {"detectron2", "transformers", "torchvision-resnet", "swin"}
