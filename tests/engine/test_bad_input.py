"""Bad input, as a demanding user gives it: code in a checkpoint never runs, regenerated data is a
new training, a truncated checkpoint falls back to an older one, a failed evaluation leaves the
old one as it was, and every command answers with one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from effm2f.cli.errors import guarded
from effm2f.cli.evaluate import main as evaluate_main
from effm2f.cli.train import main as train_main
from effm2f.data.synthetic import SyntheticConfig
from effm2f.engine.config import TrackingConfig
from effm2f.engine.evaluate import evaluate
from effm2f.engine.train import AtomicCheckpointIO, checkpoint_config_key, train
from effm2f.models.checkpoint import FORMATS, load_checkpoint
from effm2f.models.mask2former import Mask2Former
from effm2f.untrusted import UnreadableFileError, UnsafeFileError
from support.engine import (
    REPO,
    SMALL_DATA,
    checkpoint_weights,
    shared_synthetic_root,
    sqlite_tracking,
    synthetic_root,
    tiny_eval_config,
    tiny_model_config,
    tiny_train_config,
)
from support.workflow import snakemake, workflow_dir

OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_synthetic_root(tmp_path_factory)


class WritesMarker:
    """Unpickling this calls a function that writes a marker file: code that must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def crafted_checkpoint(path: Path, marker: Path, weights: dict | None = None) -> Path:
    """A Lightning-shaped checkpoint (real weights) with the payload beside them."""
    torch.save({"state_dict": weights or {}, "global_step": 3, "payload": WritesMarker(marker),
                "effm2f_config_key": "x"}, path)
    return path


def train_tiny(root: Path, out: Path, tracking: TrackingConfig = OFF, **overrides):
    return train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                 config=tiny_train_config(root, **overrides), tracking_config=tracking,
                 output=out, progress=False)


# ------------------------------------------------------------------------ code in checkpoints


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return train_tiny(root, out, max_steps=4, checkpoint_every=2)


def test_crafted_checkpoint_is_refused_by_every_loader(root, trained, tmp_path):
    marker = tmp_path / "marker"
    weights = checkpoint_weights(trained.checkpoint)
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker, weights)

    with pytest.raises(UnsafeFileError, match=r"evil\.ckpt: it holds (builtins\.)?exec\b"):
        evaluate(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                 checkpoint=evil, config=tiny_eval_config(root), tracking_config=OFF,
                 output=tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval").exists()

    resumed = tmp_path / "resume"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, resumed / "checkpoints" / "last.ckpt")
    with pytest.raises(UnsafeFileError, match=r"last\.ckpt"):
        train_tiny(root, resumed, max_steps=4)

    model = Mask2Former(config=tiny_model_config(), num_classes=3)
    for fmt in FORMATS:  # the import formats (.pth and .pkl readers)
        for suffix in (".pth", ".pkl"):
            path = tmp_path / f"evil{suffix}"
            shutil.copy(evil, path)
            with pytest.raises(UnsafeFileError, match=f"evil{suffix}"):
                load_checkpoint(model, path, fmt)
    plain_pickle = tmp_path / "evil_plain.pkl"  # detectron2's .pkl: a plain pickle
    import pickle

    plain_pickle.write_bytes(pickle.dumps({"model": {}, "x": WritesMarker(marker)}))
    with pytest.raises(UnsafeFileError, match="builtins.exec"):
        load_checkpoint(model, plain_pickle, "detectron2")
    assert not marker.exists()


def test_crafted_checkpoint_through_the_real_command_is_refused(tmp_path):
    """The installed entry point (a new process, as Snakemake runs it)."""
    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "effm2f.cli.main", "evaluate", "--config",
         str(REPO / "params/default.yaml"), "--config", str(absolute_variants(tmp_path)),
         "--variant", "m2f_tiny", "--checkpoint", str(evil), "--output", str(tmp_path / "eval"),
         "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("effm2f evaluate: error: refusing to load checkpoint ")
    assert "evil.ckpt" in lines[-1]
    assert not marker.exists() and not (tmp_path / "eval").exists()


def absolute_variants(folder: Path) -> Path:
    path = folder / "variants-config.yaml"
    path.write_text(f"variants_file: {REPO / 'params' / 'variants.yaml'}\n")
    return path


# -------------------------------------------------------------------------- data and resume


def test_regenerated_data_trains_afresh_in_a_new_run(tmp_path):
    tracking = sqlite_tracking(tmp_path)
    data = tmp_path / "data"
    first = train_tiny(synthetic_root(data), tmp_path / "out", tracking, max_steps=2,
                       checkpoint_every=2)
    shutil.rmtree(data)
    regenerated = synthetic_root(data, SyntheticConfig(**{**SMALL_DATA.__dict__, "seed": 4}))
    second = train_tiny(regenerated, tmp_path / "out", tracking, max_steps=2, checkpoint_every=2)
    assert (tmp_path / "out" / "checkpoints.stale-1" / "last.ckpt").is_file()
    assert second.mlflow_run_id != first.mlflow_run_id
    assert checkpoint_config_key(second.checkpoint) != checkpoint_config_key(
        tmp_path / "out" / "checkpoints.stale-1" / "last.ckpt")

    # a fresh training into a deleted output folder: a new run, not the finished one
    shutil.rmtree(tmp_path / "out")
    third = train_tiny(regenerated, tmp_path / "out", tracking, max_steps=2, checkpoint_every=2)
    assert third.mlflow_run_id not in (first.mlflow_run_id, second.mlflow_run_id)
    client = MlflowClient(tracking_uri=tracking.tracking_uri)
    history = client.get_metric_history(third.mlflow_run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1]


class Killed(RuntimeError):
    """Stands for a kill: the job ends where it is, without saving."""


class StopAfter(Callback):
    """Ends training abruptly once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed


def test_truncated_last_checkpoint_falls_back_to_the_periodic_one(root, tmp_path, caplog):
    plain = train_tiny(root, tmp_path / "plain", max_steps=6, checkpoint_every=3)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
              config=tiny_train_config(root, max_steps=6, checkpoint_every=3),
              tracking_config=OFF, output=out, progress=False, extra_callbacks=[StopAfter(5)])
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a kill while copying
    caplog.set_level("WARNING")
    resumed = train_tiny(root, out, max_steps=6, checkpoint_every=3)
    assert (out / "checkpoints" / "last.ckpt.corrupt-1").is_file()
    assert "last.ckpt" in caplog.text and "trying the previous checkpoint" in caplog.text
    assert resumed.global_step == 6
    mine, theirs = checkpoint_weights(resumed.checkpoint), checkpoint_weights(plain.checkpoint)
    for name, value in theirs.items():
        assert torch.allclose(mine[name], value, rtol=0, atol=1e-6), name


def test_a_kill_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(4)}, last)
    before = last.read_bytes()

    def dies_half_way(obj, target):
        Path(target).write_bytes(before[: len(before) // 2])
        raise Killed

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(Killed):
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(4)}, last)
    assert last.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(last)["global_step"] == 3


# ------------------------------------------------------------------------------- evaluation


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_evaluation_leaves_the_previous_one_byte_identical(trained, tmp_path_factory,
                                                                  tmp_path):
    data = synthetic_root(tmp_path / "data")
    eval_dir = tmp_path / "eval"
    config = tiny_eval_config(data)
    evaluate(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
             checkpoint=trained.checkpoint, config=config, tracking_config=OFF, output=eval_dir,
             progress=False)
    before = tree_digest(eval_dir)
    assert "metrics.json" in before

    # the third validation image's panoptic PNG is broken: evaluation fails half-way
    annotations = json.loads((data / "annotations" / "panoptic_val2017.json").read_text())
    third = data / "panoptic_val2017" / annotations["annotations"][2]["file_name"]
    third.write_bytes(b"not a png")
    with pytest.raises(Exception, match=third.name):
        evaluate(dataset="synthetic", variant="tiny", model_config=tiny_model_config(),
                 checkpoint=trained.checkpoint, config=config, tracking_config=OFF,
                 output=eval_dir, progress=False)
    assert tree_digest(eval_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval"]  # no staging left


# ---------------------------------------------------------------------- the command line

BAD_INPUTS = {  # case -> what the one line must name
    "truncated checkpoint": "truncated.ckpt",
    "not a checkpoint": "notes.ckpt",
    "missing checkpoint": "absent.ckpt",
    "malformed annotation": "panoptic_val2017.json",
    "unknown backbone": "resnet_tset",
    "output under a file": "occupied",
}


@pytest.fixture(scope="module")
def bad_inputs(trained, tmp_path_factory):
    """A folder holding every bad input of BAD_INPUTS, and the command line that uses each."""
    base = tmp_path_factory.mktemp("bad")
    good = trained.checkpoint
    (base / "truncated.ckpt").write_bytes(good.read_bytes()[:4096])
    (base / "notes.ckpt").write_text("a text file, not a checkpoint\n")
    data = synthetic_root(base / "data")
    broken = base / "broken"
    shutil.copytree(data, broken)
    (broken / "annotations" / "panoptic_val2017.json").write_text('{"images": [')
    (base / "occupied").write_text("a file where a folder is wanted\n")
    variants = base / "variants.yaml"
    shutil.copy(REPO / "params" / "variants.yaml", variants)
    with variants.open("a") as handle:  # the tests' tiny model, and a typo in a backbone name
        handle.write("\nodd: {base: m2f_tiny, backbone: resnet_tset}\n"
                     f"tiny: {json.dumps(tiny_variant_spec())}\n")

    def config(name: str, **evaluate_overrides) -> str:
        path = base / f"{name.replace(' ', '_')}.yaml"
        path.write_text(json.dumps({
            "variants_file": str(variants), "mlflow": {"enabled": False},
            "evaluate": {"root": str(data), "max_images": 2, "threads": 1,
                         **evaluate_overrides}}))
        return path

    def evaluate_args(name: str, checkpoint: Path, *extra: str, **overrides) -> list[str]:
        return ["--config", str(REPO / "params/default.yaml"), "--config",
                str(config(name, **overrides)), "--variant", "tiny", "--checkpoint",
                str(checkpoint), "--output", str(base / "eval"), "--no-progress", *extra]

    commands = {
        "truncated checkpoint": (evaluate_main,
                                 evaluate_args("truncated", base / "truncated.ckpt")),
        "not a checkpoint": (evaluate_main, evaluate_args("notes", base / "notes.ckpt")),
        "missing checkpoint": (evaluate_main, evaluate_args("absent", base / "absent.ckpt")),
        "malformed annotation": (evaluate_main,
                                 evaluate_args("broken", good, root=str(broken))),
        "unknown backbone": (train_main, ["--config", str(REPO / "params/default.yaml"),
                                          "--config", str(config("odd")), "--variant", "odd"]),
        "output under a file": (evaluate_main, [*evaluate_args("occupied", good)[:-3],
                                                "--output", str(base / "occupied" / "eval"),
                                                "--no-progress"]),
    }
    return base, commands


def tiny_variant_spec() -> dict:
    """support.engine.tiny_model_config as a variant of the variants file."""
    model = dataclasses.asdict(tiny_model_config())
    return {key: model[key] for key in ("backbone", "freeze_backbone_norm", "hidden_dim",
                                        "mask_dim", "norm_groups", "encoder", "decoder", "loss")}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_it_with_status_2(bad_inputs, case, capsys):
    base, commands = bad_inputs
    main, argv = commands[case]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert " error: " in last and BAD_INPUTS[case] in last, last
    assert not (base / "eval").exists()  # nothing half-written


def test_debug_shows_the_traceback(bad_inputs):
    _, commands = bad_inputs
    main, argv = commands["truncated checkpoint"]
    with pytest.raises(UnreadableFileError, match="truncated.ckpt"):
        main([*argv, "--debug"])


def test_full_disk_is_one_line(capsys):
    @guarded("effm2f test")
    def write_to_full_disk(argv: list[str]) -> None:
        with open("/dev/full", "w") as handle:
            handle.write("x" * 65536)
            handle.flush()

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(SystemExit) as info:
        write_to_full_disk([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "disk is full" in err


# ------------------------------------------------------------------------------ the workflow


@pytest.mark.parametrize("bad, message", [
    ({"train": {"variants": ["m2f_tiny", "m2f_tinny"]}}, "unknown model variant 'm2f_tinny'"),
    ({"train": {"variants": ["neg"]}}, "variants.neg.encoder: schedule must be three "
                                       "non-negative layer counts"),
    ({"train": {"variants": ["trc"]}}, "variants.trc.encoder: trc must be one of"),
])
def test_bad_variant_fails_the_dry_run_with_the_jobs_message(tmp_path, bad, message):
    workdir = workflow_dir(tmp_path, bad)
    with (workdir / "params" / "variants.yaml").open("a") as handle:
        handle.write("\nneg: {base: m2f_tiny, encoder: {schedule: [2, -1, 2]}}\n"
                     "trc: {base: m2f_tiny, encoder: {trc: lineer}}\n")
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("effm2f workflow: error: ") and message in last, result.stderr
