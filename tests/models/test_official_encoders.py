"""Our encoder reproduces what the official PRO-SCALE and Mask2Former encoders computed.

The fixtures (tests/fixtures/official_encoders/README.md) hold tiny official pixel decoders' weights
under their detectron2 names, backbone features and the official outputs. Each is imported through
our detectron2 importer and must give the same outputs; this guards every encoder change (a fast
path, a refactor) against the original code, not against ourselves.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from effm2f.models.checkpoint import import_state_dict
from effm2f.models.config import EncoderConfig, ModelConfig
from effm2f.models.encoders import TokenSchedulePixelDecoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official_encoders"
CASES = {  # file -> number of official keys
    "proscale_333_linear_trc_lpe.pt": 166,
    "proscale_123_conv_trc_residual_conv.pt": 119,
    "m2f_msdeformattn_6.pt": 117,
}


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def imported_decoder(fixture: dict, **encoder_overrides) -> tuple[nn.Module, object]:
    project = fixture["config"]["project"]
    spec = {**project["encoder"], "schedule": tuple(project["encoder"]["schedule"]),
            **encoder_overrides}
    encoder = EncoderConfig(**spec)
    decoder = TokenSchedulePixelDecoder(in_channels=project["in_channels"],
                                        hidden_dim=project["hidden_dim"],
                                        mask_dim=project["mask_dim"],
                                        norm_groups=project["norm_groups"], config=encoder).eval()
    holder = nn.Module()
    holder.pixel_decoder = decoder
    holder.config = ModelConfig(encoder=encoder)  # read by the importer's trc_layout check
    report = import_state_dict(holder, fixture["state_dict"], "detectron2")
    return decoder, report


def run(decoder: nn.Module, fixture: dict):
    features = [fixture["features"][k] for k in ("res2", "res3", "res4", "res5")]
    with torch.no_grad():
        return decoder(features)


def max_difference(out, expected: dict) -> float:
    pairs = [(out.mask_features, expected["mask_features"]),
             (out.multi_scale_features[0], expected["transformer_encoder_features"])]
    pairs += list(zip(out.multi_scale_features, expected["multi_scale_features"], strict=True))
    return max((a - b).abs().max().item() for a, b in pairs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_official_encoder_outputs_reproduced_through_the_importer(name):
    fixture = load_fixture(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no trc_layout warning: the config matches the weights
        decoder, report = imported_decoder(fixture)
    assert len(report.loaded) == CASES[name] == len(fixture["state_dict"])
    assert not report.missing and not report.unexpected and not report.skipped
    out = run(decoder, fixture)
    expected = fixture["expected"]
    torch.testing.assert_close(out.mask_features, expected["mask_features"], rtol=0, atol=1e-4)
    for got, want in zip(out.multi_scale_features, expected["multi_scale_features"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.multi_scale_features[0],
                               expected["transformer_encoder_features"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["proscale_333_linear_trc_lpe.pt",
                                  "proscale_123_conv_trc_residual_conv.pt"])
def test_token_layout_misses_the_official_outputs(name):
    """The fixtures tell the TRC layouts apart: the transpose-correct layout is not the released
    computation, and the importer says so."""
    fixture = load_fixture(name)
    with pytest.warns(UserWarning, match="trc_layout"):
        decoder, _ = imported_decoder(fixture, trc_layout="tokens")
    assert max_difference(run(decoder, fixture), fixture["expected"]) > 1e-2
