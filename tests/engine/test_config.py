"""The train / evaluate / mlflow config sections: strict keys, schema, CLI errors, rules."""

from __future__ import annotations

import subprocess
import sys

import jsonschema
import pytest

from effm2f.cli.train import main as train_main
from effm2f.config import ConfigError, from_dict, load_yaml
from effm2f.engine.config import EvalConfig, TrackingConfig, TrainConfig, section
from effm2f.engine.optim import param_groups, poly_factor
from effm2f.models.mask2former import Mask2Former
from support.engine import REPO, tiny_model_config


def test_unknown_keys_are_errors_that_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key train\.optimizer\.learning_rate"):
        from_dict(TrainConfig, {"optimizer": {"learning_rate": 1e-4}}, where="train")
    with pytest.raises(ConfigError, match=r"unknown config key evaluate\.treshold"):
        section({"evaluate": {"treshold": 0.8}}, "evaluate", EvalConfig)
    with pytest.raises(ConfigError, match=r"precision"):
        section({"train": {"precision": "16"}}, "train", TrainConfig)


def test_cli_names_the_unknown_key_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_step: 3}\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(REPO / "params/default.yaml"), "--config", str(bad),
                    "--variant", "m2f_tiny"])
    assert exit_info.value.code == 2
    assert "unknown config key train.max_step" in capsys.readouterr().err


def test_default_config_sections_build_and_pass_the_schema():
    config = load_yaml(REPO / "params/default.yaml")
    schema = load_yaml(REPO / "workflow/schemas/config.schema.yaml")
    jsonschema.validate(config, schema)
    train = section(config, "train", TrainConfig)
    assert train.variants == ("m2f_tiny", "proscale_tiny")
    assert train.max_time is not None and train.max_time <= 300
    section(config, "evaluate", EvalConfig)
    assert section(config, "mlflow", TrackingConfig).tracking_uri is None
    config["train"]["optimiser"] = {}
    with pytest.raises(jsonschema.ValidationError, match="optimiser"):
        jsonschema.validate(config, schema)


def test_reference_defaults_and_parameter_groups():
    train = TrainConfig()
    assert (train.optimizer.lr, train.optimizer.weight_decay) == (1e-4, 0.05)
    assert train.optimizer.backbone_lr_multiplier == 0.1
    assert (train.optimizer.clip_type, train.optimizer.clip_value) == ("full_model", 0.01)
    model = Mask2Former(config=tiny_model_config(), num_classes=6)
    groups = param_groups(model, train.optimizer)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["backbone.body.embedder.embedder.convolution.weight"])]["lr"] == \
        pytest.approx(1e-5)
    norm = next(n for n in named if n.startswith("backbone.") and "normalization" in n)
    assert by_param[id(named[norm])]["weight_decay"] == 0.0
    assert by_param[id(named["pixel_decoder.level_embed"])]["weight_decay"] == 0.0
    assert by_param[id(named["transformer_decoder.queries_embedder.weight"])]["weight_decay"] == 0
    assert by_param[id(named["class_predictor.weight"])] == next(
        g for g in groups if g["lr"] == 1e-4 and g["weight_decay"] == 0.05)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_poly_schedule():
    assert poly_factor(0, max_steps=100, power=0.9) == 1.0
    assert poly_factor(50, max_steps=100, power=0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, max_steps=100, power=0.9) == 0.0
    assert poly_factor(0, max_steps=100, power=0.9, warmup_steps=10, warmup_factor=0.1) == \
        pytest.approx(0.1)


SNAKEFILE = """
configfile: "{repo}/params/default.yaml"
include: "{repo}/workflow/rules/common.smk"
include: "{repo}/workflow/rules/data.smk"
include: "{repo}/workflow/rules/train.smk"
include: "{repo}/workflow/rules/evaluate.smk"
"""


def test_rules_chain_training_and_evaluation(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(repo=REPO))
    (tmp_path / "params").symlink_to(REPO / "params")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--dry-run",
         "results/synthetic/m2f_tiny/eval/metrics.json",
         "results/synthetic/proscale_tiny/eval/metrics.json", "--quiet", "rules"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts == {"synthetic_coco": "1", "train": "2", "evaluate": "2", "total": "5"}, \
        result.stdout
