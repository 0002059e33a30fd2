"""What a run shows and writes besides checkpoints: TensorBoard events, train.log and plain
progress lines, config.json as the record of the run, captioned grids, plots and the gallery."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_args, error_lines, require, run_script, tiny_run
from PIL import Image

import train
from reporting import figures, runlog
from reporting import reporter as report
from training.cli import parse_args

TAGS = {"loss/G_GAN", "loss/G_L1", "loss/D_real", "loss/D_fake", "val/L1", "val/PSNR", "val/SSIM", "train/lr"}


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    """4 synthetic training pairs (4 iterations an epoch, a loss point every 2), 2 val pairs."""
    return tiny_run(synthetic_split, tmp_path)


def results(cfg) -> Path:
    return Path(cfg.results_dir) / cfg.name


def events(cfg):
    """The run's TensorBoard events as TensorBoard itself reads them (purges included)."""
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(results(cfg) / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def steps(accumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


def test_tensorboard_holds_losses_metrics_lr_grids_and_config(tiny):
    require("tensorboard")
    train.train(tiny)
    run = events(tiny)
    assert TAGS <= set(run.Tags()["scalars"])
    assert steps(run, "loss/G_L1") == [2, 4, 6, 8]  # global step = iterations done
    assert steps(run, "val/L1") == steps(run, "train/lr") == [4, 8]  # the end of each epoch
    history = torch.load(Path(tiny.checkpoint_dir) / "run" / "latest.pt", weights_only=True)["history"]
    assert [e.value for e in run.Scalars("loss/G_L1")] == pytest.approx(history["steps"]["G_L1"], rel=1e-6)
    assert [e.value for e in run.Scalars("val/L1")] == pytest.approx(
        [r["val_L1"] for r in history["epochs"]], rel=1e-6
    )
    images = run.Images("samples")
    assert [image.step for image in images] == [4, 8]
    with Image.open(results(tiny) / "samples" / "epoch_002.png") as grid:
        assert (images[-1].width, images[-1].height) == grid.size
    (config,) = run.Tensors("config/text_summary")
    assert '"lr": 0.0002' in config.tensor_proto.string_val[0].decode()


def as_a_new_process() -> None:
    """Wait for the next whole second before another run in this process: TensorBoard reads event
    files in name order, and the names of one process's writers differ only in a counter that
    sorts as text ('.10' before '.9') within a second; runs in processes of their own, as users
    make them, never meet that."""
    time.sleep(1 - time.time() % 1)


def test_resumed_runs_continue_the_curves_without_repeated_steps(tiny):
    """A run continued from epoch 1 after an earlier process had already logged epoch 2 (as a
    killed run leaves it): TensorBoard shows each step once, the later process's values."""
    require("tensorboard")
    latest_pt = Path(tiny.checkpoint_dir) / "run" / "latest.pt"
    train.train(dataclasses.replace(tiny, epochs=1))
    after_epoch_1 = latest_pt.read_bytes()
    as_a_new_process()
    train.train(tiny)  # resumes latest.pt: epoch 2
    first = events(tiny)
    assert steps(first, "loss/G_GAN") == [2, 4, 6, 8] and steps(first, "val/L1") == [4, 8]
    # Epoch 2 again, as after a kill before epoch 2's latest.pt was written (its events were),
    # and on to epoch 3.
    latest_pt.write_bytes(after_epoch_1)
    as_a_new_process()
    train.train(dataclasses.replace(tiny, epochs=3))
    run = events(tiny)
    assert len(list((results(tiny) / "tensorboard").glob("events.out.tfevents.*"))) == 3
    for tag in TAGS:
        assert steps(run, tag) == sorted(set(steps(run, tag))), tag
    assert steps(run, "loss/G_GAN") == [2, 4, 6, 8, 10, 12]
    assert steps(run, "val/L1") == [4, 8, 12]
    latest = torch.load(Path(tiny.checkpoint_dir) / "run" / "latest.pt", weights_only=True)["history"]
    assert [e.value for e in run.Scalars("loss/G_GAN")] == pytest.approx(latest["steps"]["G_GAN"], rel=1e-6)


def test_tensorboard_false_writes_no_events(tiny):
    train.train(dataclasses.replace(tiny, epochs=1, tensorboard="false"))
    assert not (results(tiny) / "tensorboard").exists()
    assert (results(tiny) / "history.csv").exists()


def test_tensorboard_auto_without_the_package_trains_without_it_and_says_so_once(tiny, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "tensorboard" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    train.train(tiny)  # two epochs: the line comes once
    assert not (results(tiny) / "tensorboard").exists()
    said = [line for line in capsys.readouterr().out.splitlines() if "TensorBoard" in line]
    assert said == [
        "no TensorBoard logs: the tensorboard package is not installed "
        "(pip install -r requirements-tensorboard.txt)"
    ]
    assert said[0] in (results(tiny) / "train.log").read_text()


def test_tensorboard_true_without_the_package_is_one_error_line(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train.py",
            "--data_root",
            tiny.data_root,
            "--tensorboard",
            "true",
            "--results_dir",
            tiny.results_dir,
            "--checkpoint_dir",
            tiny.checkpoint_dir,
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 1  # as for --val_fid without its package: the work cannot be done here
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line]
    assert line.startswith("error: --tensorboard:") and "pip install -r requirements-tensorboard.txt" in line
    assert not Path(tiny.checkpoint_dir).exists()  # refused before any work


def test_bad_tensorboard_value_is_one_error_line(tmp_path):
    result = run_script("train.py", "--tensorboard", "maybe", cwd=tmp_path)
    (line,) = error_lines(result)
    assert result.returncode == 2 and line.startswith(
        "error: --tensorboard: must be one of auto, true, false"
    )


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # three training runs
def test_output_to_a_file_has_no_carriage_returns_and_train_log_spans_resumes(tiny, tmp_path):
    """Run with stdout and stderr in files, then resume from the run's own config.json: plain
    lines only, and train.log holds both runs' lines."""
    first = run_script("train.py", *cli_args(tiny), "--epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script("train.py", "--config", results(tiny) / "config.json", "--epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for result in (first, resumed):
        assert "\r" not in result.stdout + result.stderr
    assert "resuming" in resumed.stdout
    log = (results(tiny) / "train.log").read_text()
    assert "\r" not in log and "\x1b" not in log
    lines = log.splitlines()
    for expected in ("training run:", "epoch 1/1 ", "done:", "resuming", "epoch 2/2 "):
        assert any(expected in line for line in lines), expected
    assert sum("training run:" in line for line in lines) == 2
    # Every line printed, on stdout or stderr, is in the log once, time-stamped.
    printed = [
        line.rstrip() for result in (first, resumed) for line in (result.stdout + result.stderr).splitlines()
    ]
    assert Counter(line.split("  ", 1)[1] for line in lines) == Counter(
        line for line in printed if line.strip()
    )


def test_plain_progress_lines_without_a_terminal(tiny, monkeypatch, capsys):
    monkeypatch.setattr(report, "PLAIN_PROGRESS_SECONDS", 0.0)  # every log point then prints a line
    train.train(dataclasses.replace(tiny, epochs=1))
    err = capsys.readouterr().err
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("epoch 1/1  iteration")]
    assert [line.split()[3] for line in progress] == ["2/4", "4/4"]
    assert "G_L1" in progress[0] and "s/it" in progress[0]
    assert progress[0] in (results(tiny) / "train.log").read_text()


def test_run_log_keeps_lines_until_opened_and_drops_terminal_frames(tmp_path, capsys):
    with pytest.raises(ValueError):
        with runlog.RunLog() as log:
            print("before the folder is known")
            sys.stderr.write("\rframe 1\rframe 2\r      \rwarning: a real line\n")
            log.open(tmp_path / "train.log")
            print("\x1b[1mafter\x1b[0m")
            sys.stderr.write("\rbar without end")
            raise ValueError("it broke")
    lines = [line.split("  ", 1)[1] for line in (tmp_path / "train.log").read_text().splitlines()]
    assert lines == ["before the folder is known", "warning: a real line", "after", "error: it broke"]
    assert not isinstance(sys.stdout, runlog._Tee) and not isinstance(sys.stderr, runlog._Tee)


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def test_config_json_records_the_run_and_starts_it_again(tiny):
    train.train(dataclasses.replace(tiny, epochs=1))
    record = json.loads((results(tiny) / "config.json").read_text())
    config = dataclasses.replace(tiny, epochs=1)
    assert record["config"] == dataclasses.asdict(config)
    assert parse_args(["--config", str(results(tiny) / "config.json")]) == config
    assert parse_args(["--config", str(results(tiny) / "config.json"), "--epochs", "5"]).epochs == 5
    resolved = record["resolved"]
    assert resolved["device"] == "cpu" and resolved["precision"] == "float32"
    assert resolved["threads"] == torch.get_num_threads() and resolved["world_size"] == 1
    assert (resolved["train_pairs"], resolved["val_pairs"]) == (4, 2)
    versions = record["versions"]
    assert (
        versions["python"] == ".".join(map(str, sys.version_info[:3]))
        and versions["torch"] == torch.__version__
    )
    assert {"torchvision", "project"} <= set(versions)
    if versions["project"] is not None:  # a git checkout
        assert len(versions["project"]["commit"]) == 40 and isinstance(versions["project"]["dirty"], bool)
    assert record["started"][:4].isdigit() and record["start"] == {
        "epoch": 0,
        "iteration": 0,
        "resumed": False,
    }


def test_git_version_tolerates_no_git_and_no_checkout(tmp_path, monkeypatch):
    assert runlog.git_version(tmp_path) is None  # not a checkout

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runlog.subprocess, "run", missing)
    assert runlog.git_version() is None

    def hangs(*args, **kwargs):
        raise subprocess.TimeoutExpired("git", 5)

    monkeypatch.setattr(runlog.subprocess, "run", hangs)
    assert runlog.git_version() is None


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def test_sample_grid_has_a_header_and_leaves_the_images_as_they_are(tmp_path):
    rng = torch.Generator().manual_seed(0)
    rows = [[torch.rand(3, 64, 64, generator=rng) * 2 - 1 for _ in range(3)] for _ in range(2)]
    pixels = figures.save_sample_grid(rows, tmp_path / "grid.png", title="facades, epoch 7")
    with Image.open(tmp_path / "grid.png") as grid:
        saved = np.array(grid.convert("RGB"))
    assert saved.shape == (figures.HEADER_HEIGHT + 2 * 66 + 2, 3 * 66 + 2, 3) and np.array_equal(
        saved, pixels
    )
    top = figures.HEADER_HEIGHT + 2
    expected = (((rows[1][2] + 1) / 2).mul(255).add(0.5).clamp(0, 255).byte().permute(1, 2, 0)).numpy()
    assert np.array_equal(
        saved[top + 66 : top + 66 + 64, 2 + 2 * 66 : 2 + 2 * 66 + 64], expected
    )  # row 2, target
    header = saved[: figures.HEADER_HEIGHT]
    background = np.all(header == figures.HEADER_BACKGROUND, axis=-1)
    assert not background[: figures.HEADER_HEIGHT // 2].all()  # the title is drawn
    for column in range(3):  # and a caption over each column
        assert not background[figures.HEADER_HEIGHT // 2 :, 2 + 66 * column : 2 + 66 * column + 64].all(), (
            column
        )


def test_captions_fit_narrow_columns(tmp_path):
    rows = [[torch.zeros(3, 32, 32)] * 3]
    pixels = figures.save_sample_grid(rows, tmp_path / "grid.png", title="a long run name, epoch 200")
    assert pixels.shape == (figures.HEADER_HEIGHT + 36, 3 * 34 + 2, 3)


def test_smoothing_is_centred_so_it_does_not_lag():
    ramp = np.arange(100, dtype=float)
    smoothed = figures.smooth(ramp, 25)
    assert np.allclose(smoothed[12:-12], ramp[12:-12])  # a trailing mean would be 12 points behind
    assert figures.smooth([1.0, 2.0, 3.0], 1).tolist() == [1.0, 2.0, 3.0]


def test_plots_have_one_legend_and_labelled_axes(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    epochs = [{"epoch": 1, "G_GAN": 1.0, "G_L1": 0.5}, {"epoch": 2, "G_GAN": 0.9, "G_L1": 0.4}]
    steps = {"epoch": [0.5, 1.0, 1.5, 2.0], "G_GAN": [1.1, 0.9, 0.95, 0.85], "G_L1": [0.6, 0.4, 0.45, 0.35]}
    figures.plot_curves(epochs, steps, ["G_GAN", "G_L1"], tmp_path / "loss.png", epoch_means=True)
    (fig,) = saved
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert all(ax.get_ylabel() and ax.get_xlabel() == "epoch" for ax in fig.axes)
    means = fig.axes[0].lines[-1]
    assert list(means.get_xdata()) == [0.5, 1.5]  # an epoch's mean sits in the middle of its iterations
    with Image.open(tmp_path / "loss.png") as image:
        image.verify()


def test_gallery_grids_load_lazily(tmp_path):
    (tmp_path / "samples").mkdir()
    for epoch in (1, 2):
        figures.save_sample_grid(
            [[torch.zeros(3, 32, 32)] * 3], tmp_path / "samples" / f"epoch_{epoch:03d}.png"
        )
    figures.write_gallery(
        [{"epoch": 1, "lr": 1e-4}, {"epoch": 2, "lr": 1e-4}], ["G_GAN"], [], tmp_path, "run"
    )
    page = (tmp_path / "index.html").read_text()
    grids = [line for line in page.splitlines() if "samples/epoch_" in line]
    assert len(grids) == 2 and all('loading="lazy"' in line for line in grids)


def test_the_gallery_shows_the_whole_split_scores_of_the_last_epoch(tmp_path):
    epochs = [
        {"epoch": 1, "G_L1": 0.5, "val_L1": 0.2, "lr": 1e-4, "seconds": 3.0},
        {"epoch": 2, "G_L1": 0.4, "val_L1": 0.19, "val_all_L1": 0.1768, "val_all_PSNR": 13.4,
         "val_all_SSIM": 0.2346, "lr": 1e-4, "seconds": 3.0},
    ]  # fmt: skip
    figures.write_gallery(epochs, ["G_L1"], ["val_L1"], tmp_path, "run")
    page = (tmp_path / "index.html").read_text()
    assert "The whole val split after epoch 2:</b> L1 0.1768, PSNR 13.40 dB, SSIM 0.2346" in page
    headers = [line for line in page.splitlines() if line.startswith("<table>")]
    assert "<th>val_all_L1</th>" in headers[0] and "<td>0.1768</td>" in headers[0]  # epoch 2, first
    assert "val_all" not in headers[1]
    figures.write_gallery(epochs[:1], ["G_L1"], ["val_L1"], tmp_path, "run")
    assert "whole val split" not in (tmp_path / "index.html").read_text()


# ---------------------------------------------------------------------------------------------
# Checkpoint sizes
# ---------------------------------------------------------------------------------------------


def test_checkpoint_sizes_are_measured_and_the_folder_at_the_end_forecast(tmp_path):
    assert report.checkpoint_sizes(tmp_path, 200, 10) is None  # nothing written yet
    for name, size in (("latest.pt", 686_000_000), ("best.pt", 229_000_000), ("epoch_010.pt", 229_000_000)):
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)  # sparse: the size without the disk
    assert report.checkpoint_sizes(tmp_path, 200, 10) == (
        f"checkpoints in {tmp_path}: latest.pt 686 MB, best.pt 229 MB, epoch_010.pt 229 MB "
        f"(epoch_NNN.pt every 10 epochs: about 5.5 GB by the end of the run)"
    )
    assert report.checkpoint_sizes(tmp_path, 200, 0).endswith("epoch_010.pt 229 MB")


def test_a_run_says_its_checkpoint_sizes_once_when_written(tiny, capsys):
    train.train(dataclasses.replace(tiny, epochs=3, tensorboard="false"))
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if line.startswith("checkpoints in ")]
    folder = Path(tiny.checkpoint_dir) / "run"
    assert len(said) == 1 and said[0].startswith(f"checkpoints in {folder}: latest.pt ")
    assert "best.pt" in said[0] and "(epoch_NNN.pt every epoch: about " in said[0]
    # Right after the first epoch's line: the first end waits for its own files.
    assert lines.index(said[0]) == next(i for i, line in enumerate(lines) if line.startswith("epoch 1/3")) + 1


def test_a_one_epoch_run_says_its_checkpoint_sizes_before_its_last_line(tiny, capsys):
    train.train(dataclasses.replace(tiny, epochs=1, tensorboard="false"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("checkpoints in ") and "latest.pt" in lines[-2]
    assert lines[-1].startswith("done:")
