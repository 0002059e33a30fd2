"""A checkpoint proves it is the one that was written: a checksum of its contents is saved in it
and verified before any use (resume, predict, demo, export); weights that are not finite are
refused; checkpoints from before checksums still load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_args, flip_a_byte_of_tensor_data, run_main, tiny_config, tiny_run

import demo
import predict
import train
from training import checkpoint, trained_generator
from training.setup import setup

V1_CHECKPOINT = ROOT / "tests" / "fixtures" / "v1_tiny" / "latest.pt"


@pytest.fixture
def trained(synthetic_split, tmp_path):
    """Two epochs of a 64 px run with a snapshot every epoch (tiny_run); returns its config."""
    cfg = tiny_run(synthetic_split, tmp_path, image_size=64, load_size=72, lr_decay_epochs=0)
    train.train(cfg)
    return cfg


def test_a_flipped_byte_stops_resume_naming_the_snapshot_that_verifies(
    trained, tmp_path, monkeypatch, capsys
):
    latest = Path(trained.checkpoint_dir) / "run" / "latest.pt"
    flip_a_byte_of_tensor_data(latest)
    damaged = latest.read_bytes()
    code, _, (line,) = run_main(
        train.main, [*cli_args(trained), "--epochs", "3"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and str(latest) in line and "checksum" in line, line
    assert f"--resume false --resume_from {latest.parent / 'epoch_002.pt'}" in line  # a command that works:
    # test_resume_rules.py::test_an_unloadable_latest_advises_a_command_that_works runs it
    assert latest.read_bytes() == damaged, "the damaged file is left for the user to look at"


@pytest.mark.parametrize("program", ["predict", "export", "demo", "resume_from"])
def test_a_flipped_byte_is_refused_before_any_use(program, trained, tmp_path, monkeypatch, capsys):
    folder = Path(trained.checkpoint_dir) / "run"
    flip_a_byte_of_tensor_data(folder / "epoch_001.pt")
    target = folder / "epoch_001.pt"
    expected = [str(target), "checksum", str(folder / "epoch_002.pt")]
    if program == "demo":
        with pytest.raises(demo.DemoError) as err:
            demo.load_model(target, "cpu")
        assert all(part in str(err.value) for part in expected) and "\n" not in str(err.value)
        return
    main, argv = {
        "predict": (predict.main, ["--checkpoint", target, "--split", "val"]),
        "export": (predict.main, ["--checkpoint", target, "--export", tmp_path / "model"]),
        "resume_from": (train.main, [*cli_args(trained), "--resume_from", target, "--name", "other"]),
    }[program]
    work = tmp_path / "work"  # not the data root (tmp_path): the output folder may not be in it
    work.mkdir()
    code, _, (line,) = run_main(main, argv, work, monkeypatch, capsys)
    assert code == 1 and all(part in line for part in expected), line
    assert not list(work.iterdir()) and not (tmp_path / "model.onnx").exists()


def test_the_checksum_is_of_the_contents_and_travels_with_them(tmp_path):
    state = dataclasses.replace(setup(tiny_config(name="tiny")), epoch=1)
    saved = checkpoint.full_checkpoint(state)
    checkpoint.save_checkpoint(saved, tmp_path / "a.pt")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["checksum"].startswith("sha256+crc32:") and len(raw["checksum"]) == len("sha256+crc32:") + 64
    loaded = checkpoint.load_checkpoint(tmp_path / "a.pt")
    assert "checksum" not in loaded and loaded.keys() == saved.keys()
    # Loaded, changed and saved again (the checksum loaded along is replaced): it verifies.
    raw["epoch"] = 7
    checkpoint.save_checkpoint(raw, tmp_path / "b.pt")
    assert checkpoint.load_checkpoint(tmp_path / "b.pt")["epoch"] == 7
    # Changed and saved without save_checkpoint, the old checksum no longer fits.
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"c\.pt: .*checksum.*no snapshot beside it"):
        checkpoint.load_checkpoint(tmp_path / "c.pt")


def test_checkpoints_from_before_checksums_still_load_silently(capsys):
    assert "checksum" not in torch.load(V1_CHECKPOINT, weights_only=True)
    G, settings, epoch = trained_generator.load_run(V1_CHECKPOINT, torch.device("cpu"))
    assert epoch >= 1 and isinstance(G, torch.nn.Module)
    assert capsys.readouterr() == ("", "")


def with_generator_tensor(path: Path, key_end: str, value: float) -> tuple[Path, str]:
    """A tiny checkpoint whose first generator tensor ending in key_end holds `value` once."""
    saved = checkpoint.full_checkpoint(setup(tiny_config(name="tiny")))
    key = next(k for k in saved["generator"] if k.endswith(key_end))
    saved["generator"][key].view(-1)[3] = value
    checkpoint.save_checkpoint(saved, path)
    return path, key


@pytest.mark.parametrize("program", ["predict", "export", "demo"])
@pytest.mark.parametrize("key_end,value", [("weight", float("nan")), ("running_var", float("inf"))])
def test_weights_that_are_not_finite_are_refused(program, key_end, value, tmp_path, monkeypatch, capsys):
    path, key = with_generator_tensor(tmp_path / "bad.pt", key_end, value)
    if program == "demo":
        with pytest.raises(demo.DemoError, match=rf"bad\.pt: generator tensor {key} holds NaN or infinite"):
            demo.load_model(path, "cpu")
        return
    extra = ["--export", tmp_path / "model.onnx"] if program == "export" else [tmp_path]
    code, _, (line,) = run_main(predict.main, ["--checkpoint", path, *extra], tmp_path, monkeypatch, capsys)
    assert code == 1 and str(path) in line and f"generator tensor {key} holds NaN or infinite" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
