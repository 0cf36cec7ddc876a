"""The `effm2f data` entry points: thin adapters with clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from effm2f.cli.data import main


def test_synthetic_then_prepare(tmp_path):
    root = tmp_path / "syn"
    main(["synthetic", "coco", "--root", str(root), "--num-train", "3", "--num-val", "2",
          "--height", "32", "--width", "40", "--no-prepare", "--no-progress", "--workers", "1"])
    assert not (root / "panoptic_semseg_val2017").exists()
    data = json.loads((root / "annotations" / "panoptic_train2017.json").read_text())
    assert len(data["images"]) == 3 and data["images"][0]["width"] == 40
    main(["prepare", "synthetic", "--root", str(root), "--workers", "2", "--no-progress"])
    assert len(list((root / "panoptic_semseg_val2017").iterdir())) == 2
    assert (root / "annotations" / "instances_train2017.json").is_file()


def test_cityscapes_layout(tmp_path):
    root = tmp_path / "cs"
    main(["synthetic", "cityscapes", "--root", str(root), "--num-train", "1", "--num-val", "1",
          "--no-progress", "--workers", "1"])
    assert (root / "gtFine" / "cityscapes_panoptic_val.json").is_file()


def test_missing_credentials_exit_with_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["download", "cityscapes", "--root", str(tmp_path / "cs"),
              "--archives", str(tmp_path / "a"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("effm2f data: error: ") and err.count("\n") == 1
    assert "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD" in err


def test_bad_annotation_exits_naming_the_file(tmp_path, capsys):
    root = tmp_path / "syn"
    main(["synthetic", "coco", "--root", str(root), "--num-train", "1", "--num-val", "1",
          "--height", "32", "--width", "32", "--no-prepare", "--no-progress"])
    (root / "annotations" / "panoptic_val2017.json").write_text("{")
    with pytest.raises(SystemExit) as info:
        main(["prepare", "synthetic", "--root", str(root), "--splits", "val", "--no-progress"])
    assert info.value.code == 2
    assert "panoptic_val2017.json is not valid JSON" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "effm2f.cli.data", "prepare", "synthetic",
                             "--root", str(tmp_path / "absent"), "--no-progress"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "missing annotation file" in result.stderr and "absent" in result.stderr
