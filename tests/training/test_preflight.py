"""Every setting and file is checked before work starts: a run that cannot finish its first epoch
stops before loading its data or building its networks, with one line naming the setting or file
(docs/recovery.md lists each promise with its test here)."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_config, run_main, tiny_config
from PIL import Image

import config
import train
from evaluation import metrics
from training import cli, preflight, session, settings
from training import loader as data
from training.setup import setup


def no_work(*args, **kwargs):
    raise AssertionError("work started: the error had to come before it")


def write_split(folder: Path, n: int, height: int, width: int) -> None:
    """n aligned A|B files of `height` x 2 `width` pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, 2 * width, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )


TINY = ["--dataset", "custom", "--image_size", "64", "--load_size", "72", "--ngf", "8", "--ndf", "8"]
TINY += ["--tensorboard", "false", "--epochs", "1", "--lr_decay_epochs", "0", "--max_images", "4"]


# ---------------------------------------------------------------------------------------------
# Images too small for what the run does with them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preprocess,val_size,shown",
    [("crop", (8, 8), "8x8"), ("scale_width", (20, 1000), "64x1")],  # (height, width) of each half
)
def test_validation_images_too_small_for_ssim_stop_before_training(
    tmp_path, monkeypatch, capsys, preprocess, val_size, shown
):
    write_split(tmp_path / "data" / "train", 2, 80, 80)
    write_split(tmp_path / "data" / "val", 2, *val_size)
    real_setup = setup
    monkeypatch.setattr(session, "setup", no_work)
    argv = ["--data_root", tmp_path / "data", "--preprocess", preprocess, *TINY]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    size = metrics.SSIM_SIZE
    assert code == 1 and str(Path("data") / "val" / "0.png") in line and shown in line, line
    assert f"--preprocess {preprocess}" in line and f"{size}x{size}" in line and "--val_every 0" in line
    # Without validation the same data trains: nothing else needs that size.
    monkeypatch.setattr(session, "setup", real_setup)
    train.train(cli.parse_args([*map(str, argv), "--val_every", "0"]))
    assert (tmp_path / "results" / "custom" / "samples" / "epoch_001.png").is_file()


def test_ssim_size_is_the_size_metrics_needs():
    size = metrics.SSIM_SIZE
    image = torch.zeros(1, 3, size, size)
    assert metrics.ssim(image, image).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=f"at least {size}x{size}"):
        metrics.ssim(image[..., 1:], image[..., 1:])


def test_training_images_too_small_for_the_discriminator_stop_before_training(tmp_path, monkeypatch, capsys):
    """--preprocess none trains on the images' own sizes: 32 px is too small for 4 strided layers."""
    write_split(tmp_path / "data" / "train", 2, 32, 32)
    monkeypatch.setattr(session, "setup", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, "--preprocess", "none", "--image_size", "96"]
    argv += ["--load_size", "96", "--n_layers_D", "4", "--val_every", "0"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and "0.png" in line and "32x32" in line and "--n_layers_D 4" in line, line
    assert f"at least {data.discriminator_size(4)}x" in line


def test_fid_on_a_single_validation_image_stops_before_training(tmp_path, monkeypatch, capsys):
    write_split(tmp_path / "data" / "train", 2, 64, 64)
    monkeypatch.setattr(session, "inception_weights_path", lambda: None)  # whether installed or not
    monkeypatch.setattr(session, "setup", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, "--max_images", "1", "--val_fid", "true"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and str(Path("data") / "train") in line and "1 validation image" in line, line
    assert f"at least {metrics.FID_MIN_IMAGES}" in line and "--val_fid false" in line
    with pytest.raises(ValueError, match=f"at least {metrics.FID_MIN_IMAGES} images"):
        metrics.fid_kid_of_features(torch.zeros(1, 8), torch.zeros(1, 8))


def test_predict_names_a_split_it_cannot_score_before_translating(tmp_path, monkeypatch, capsys):
    """predict.py --split scores each image as validation does: images too small for SSIM, or one
    image with --fid, stop before the first image is translated or written."""
    import predict
    from training.checkpoint import full_checkpoint, save_checkpoint

    save_checkpoint(full_checkpoint(setup(tiny_config(preprocess="crop"))), tmp_path / "run.pt")
    write_split(tmp_path / "data" / "small", 2, 8, 8)
    write_split(tmp_path / "data" / "one", 1, 32, 32)
    monkeypatch.setattr(predict, "inception_weights_path", lambda: None)
    for split, words in (("small", "8x8"), ("one", f"at least {metrics.FID_MIN_IMAGES}")):
        argv = ["--checkpoint", tmp_path / "run.pt", "--split", split, "--data_root", tmp_path / "data"]
        argv += ["--output", tmp_path / "out", "--fid"]
        code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
        assert code == 1 and str(tmp_path / "data" / split) in line and words in line, line
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_the_discriminators_smallest_input_is_exact(n_layers):
    from discriminator import PatchDiscriminator

    D = PatchDiscriminator(6, 8, n_layers).train()
    size = data.discriminator_size(n_layers)
    assert D(torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)).shape[-1] >= 1
    with pytest.raises((ValueError, RuntimeError)):
        D(torch.zeros(1, 3, size - 1, size - 1), torch.zeros(1, 3, size - 1, size - 1))


# ---------------------------------------------------------------------------------------------
# --config files: exact types, bounded size and depth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"name": ["a", 1]}', "--name: expected a JSON string, got an array"),
        ('{"name": null}', "--name: expected a JSON string, got null"),
        ('{"data_root": {"a": 1}}', "--data_root: expected a JSON string, got an object"),
        ('{"flip": 1}', "--flip: expected JSON true or false, got the number 1"),
        ('{"flip": "true"}', "--flip: expected JSON true or false, got the string 'true'"),
        ('{"epochs": true}', "--epochs: expected int (a whole JSON number), got true"),
        ('{"epochs": 2.0}', "--epochs: expected int (a whole JSON number), got the number 2.0"),
        ('{"lr": "0.1"}', "--lr: expected float (a JSON number), got the string '0.1'"),
        ('{"lr": false}', "--lr: expected float (a JSON number), got false"),
        ('{"lr": NaN}', "--lr: expected a finite number, got nan"),
        ('{"lr": 1e999}', "--lr: expected a finite number, got inf"),
        ('{"data_root": "a\\u0000b"}', "--data_root: holds a NUL character"),
        ('{"name": "\\ud800"}', "--name: holds a lone surrogate"),
        ('{"lr": 0.1, "lr": 0.2}', "field 'lr' is given twice"),
    ],
)
def test_config_file_values_must_have_the_fields_json_type(tmp_path, text, message):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(settings.ConfigError) as err:
        cli.parse_args(["--config", str(tmp_path / "c.json")])
    assert str(err.value).startswith(f"--config {tmp_path / 'c.json'}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_file_numbers_keep_their_meaning(tmp_path):
    """An integer for a float field is that float; everything else arrives as written."""
    (tmp_path / "c.json").write_text('{"lr": 1, "beta1": 0, "epochs": 3, "flip": false, "name": "x"}')
    cfg = cli.parse_args(["--config", str(tmp_path / "c.json")])
    assert (cfg.lr, cfg.beta1, cfg.epochs, cfg.flip, cfg.name) == (1.0, 0.0, 3, False, "x")
    assert type(cfg.lr) is float and type(cfg.epochs) is int


@pytest.mark.parametrize(
    "content,message",
    [
        ("[" * 3000 + "]" * 3000, "nested deeper than"),
        ('{"config": ' * 40 + "{}" + "}" * 40, "nested deeper than"),
        ('{"lr": 0.1}' + " " * (2 << 20), "larger than 1 MiB"),
    ],
)
def test_config_file_size_and_depth_are_bounded(tmp_path, content, message):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(settings.ConfigError, match=re.escape(message)):
        cli.parse_args(["--config", str(tmp_path / "c.json")])


def test_a_runs_own_config_json_is_within_the_bounds(tmp_path, synthetic_split):
    """results/<name>/config.json (nested sections of versions, git, ...) reads back as a --config."""
    root = synthetic_split(n=1).parent
    cfg = run_config(tmp_path, root, epochs=1, tensorboard="false")
    train.train(cfg)
    assert cli.parse_args(["--config", str(tmp_path / "res" / "run" / "config.json")]) == cfg


# ---------------------------------------------------------------------------------------------
# Threads and devices
# ---------------------------------------------------------------------------------------------


def test_threads_are_capped_at_four_per_usable_cpu(tmp_path, monkeypatch, capsys):
    cap = settings.max_threads()
    assert cap == 4 * len(os.sched_getaffinity(0))
    assert cli.parse_args(["--threads", str(cap)]).threads == cap
    monkeypatch.setattr(session, "build_data", no_work)
    code, _, (line,) = run_main(train.main, ["--threads", "100000"], tmp_path, monkeypatch, capsys)
    assert code == 2 and line.startswith("error: --threads:") and f"at most {cap}" in line
    help_text = next(f.metadata["help"] for f in dataclasses.fields(config.Config) if f.name == "threads")
    assert "at most 4 per usable CPU" in help_text
    assert not list(tmp_path.iterdir())


def test_a_checksum_that_cannot_match_is_refused_before_downloading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(session, "prepare_data_root", no_work)
    argv = ["--data_root", tmp_path / "facades", "--download_sha256", "not-a-digest"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and line.startswith("error: --download_sha256: must be 64 hex digits")
    assert cli.parse_args(["--download_sha256", "A" * 64]).download_sha256 == "A" * 64


@pytest.mark.parametrize("device,precision,message", [("cuda:3", "auto", "1 GPU"), ("cpu", "fp16", "fp16")])
def test_a_device_this_machine_lacks_stops_before_the_data_is_read(
    tmp_path, monkeypatch, capsys, device, precision, message
):
    write_split(tmp_path / "data" / "train", 1, 64, 64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(session, "build_data", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, "--device", device, "--precision", precision]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and message in line and (f"--device {device}" in line or "--precision" in line), line


# ---------------------------------------------------------------------------------------------
# Folders and files the run reads and writes
# ---------------------------------------------------------------------------------------------


def make_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("in the way")


@pytest.mark.parametrize(
    "in_the_way,kind,words",
    [
        ("checkpoints/run", "file", "a file, not a folder"),
        ("checkpoints", "file", "a file, not a folder"),
        ("results/run", "file", "a file, not a folder"),
        ("results", "file", "a file, not a folder"),
        ("results/run/samples", "file", "a file, not a folder"),
        ("results/run/tensorboard", "file", "a file, not a folder"),
        ("checkpoints/run/latest.pt", "folder", "a folder, not a file"),
        ("checkpoints/run/best.pt", "folder", "a folder, not a file"),
        ("checkpoints/run/epoch_001.pt", "folder", "a folder, not a file"),
        ("results/run/history.csv", "folder", "a folder, not a file"),
        ("results/run/samples/epoch_001.png", "folder", "a folder, not a file"),
    ],
)
def test_outputs_in_the_way_stop_before_any_work(tmp_path, monkeypatch, capsys, in_the_way, kind, words):
    write_split(tmp_path / "data" / "train", 1, 64, 64)
    if kind == "file":
        make_file(tmp_path / in_the_way)
    else:
        (tmp_path / in_the_way).mkdir(parents=True)
    monkeypatch.setattr(session, "build_data", no_work)
    monkeypatch.setattr(session, "prepare_data_root", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, "--name", "run", "--tensorboard", "auto"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and f"{in_the_way}: {words}" in line, line
    assert "--name run" in line, line


def test_an_output_folder_without_write_permission_stops_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").mkdir()
    write_split(tmp_path / "data" / "train", 1, 64, 64)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "checkpoints" and real_access(p, mode))
    monkeypatch.setattr(session, "build_data", no_work)
    monkeypatch.setattr(session, "prepare_data_root", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, "--name", "run"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and "checkpoints: no permission to write in this folder" in line, line


@pytest.mark.parametrize(
    "setting,make,words",
    [
        ("--data_root", make_file, "a file, not a folder"),
        ("--resume_from", lambda p: None, "no such checkpoint file"),
        ("--resume_from", Path.mkdir, "a folder, not a checkpoint file"),
    ],
)
def test_inputs_that_are_not_what_they_must_be_stop_before_any_work(
    tmp_path, monkeypatch, capsys, setting, make, words
):
    write_split(tmp_path / "data" / "train", 1, 64, 64)
    make(tmp_path / "given")
    monkeypatch.setattr(session, "build_data", no_work)
    monkeypatch.setattr(session, "prepare_data_root", no_work)
    argv = ["--data_root", tmp_path / "data", *TINY, setting, tmp_path / "given"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and f"{setting} {tmp_path / 'given'}: {words}" in line, line


def test_every_file_a_run_writes_is_one_preflight_checks(tmp_path, synthetic_split):
    """preflight's patterns of the run's files cover every file a run writes (so none is missed)."""
    root = synthetic_split(n=2).parent
    cfg = run_config(tmp_path, root, epochs=2, save_every=1, tensorboard="false")
    train.train(cfg)
    folders = preflight.run_folders(cfg)
    for kind, folder in folders.items():
        written = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        assert written, kind
        for name in written:
            assert any(fnmatch.fnmatch(name, pattern) for pattern in preflight.RUN_FILES[kind]), (kind, name)
        subfolders = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir()}
        assert subfolders <= set(preflight.RUN_FOLDERS[kind]), (kind, subfolders)
