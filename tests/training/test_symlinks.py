"""No write follows a link the project did not create: a run's lock file or train.log planted as
a symbolic or hard link to another file is refused with one line, the other file untouched; the
files written by rename (checkpoints, images, pages, predictions) replace a planted link itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_args, run_main, tiny_config
from PIL import Image

import predict
import train
from files.writing import atomic_write, write_text
from training.checkpoint import full_checkpoint, save_checkpoint
from training.setup import setup

PRECIOUS = "a file of the user's that the run must not touch\n"


@pytest.fixture
def cfg(synthetic_split, tmp_path):
    root = synthetic_split(n=2, size=40).parent
    return tiny_config(
        data_root=str(root),
        epochs=1,
        checkpoint_dir=str(tmp_path / "ck"),
        results_dir=str(tmp_path / "res"),
        name="run",
    )


def plant(link: Path, kind: str, tmp_path: Path) -> Path:
    """Make `link` a symbolic or hard link to a new file holding PRECIOUS; returns that file."""
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim) if kind == "symbolic" else os.link(victim, link)
    return victim


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
@pytest.mark.parametrize("which", ["lock", "train.log"])
def test_a_planted_link_is_refused_and_its_target_untouched(which, kind, cfg, tmp_path, monkeypatch, capsys):
    """The lock, planted before a new run; train.log, planted in a run that continues (a new run
    moves a folder of another run's files aside, planted links included, and writes none of them)."""
    link = {"lock": tmp_path / "ck" / ".run.lock", "train.log": tmp_path / "res" / "run" / "train.log"}[which]
    if which == "train.log":
        train.train(cfg)
        link.unlink()
    victim = plant(link, kind, tmp_path)
    argv = [*cli_args(cfg), "--epochs", "2"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and str(link) in line and "link" in line, line
    assert victim.read_text() == PRECIOUS
    latest = tmp_path / "ck" / "run" / "latest.pt"
    assert not latest.exists() or torch.load(latest, weights_only=True)["epoch"] == 1, (
        "stopped before training"
    )


def test_a_planted_fifo_lock_is_refused_without_hanging(cfg, tmp_path, monkeypatch, capsys):
    lock = tmp_path / "ck" / ".run.lock"
    lock.parent.mkdir(parents=True)
    os.mkfifo(lock)
    code, _, (line,) = run_main(train.main, cli_args(cfg), tmp_path, monkeypatch, capsys)
    assert code == 1 and str(lock) in line and "not a regular file" in line, line


def test_the_lock_and_log_of_a_run_are_reused_when_it_continues(cfg):
    train.train(cfg)
    log = Path(cfg.results_dir) / "run" / "train.log"
    first = log.read_text()
    train.train(cfg)  # the same files again: a plain file each, opened again
    assert log.read_text().startswith(first) and len(log.read_text()) > len(first)


def test_a_write_by_rename_replaces_a_planted_link_not_its_target(tmp_path):
    for name, write in (
        ("page.html", lambda path: write_text(path, "<p>new</p>")),
        ("model.bin", lambda path: atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"new"))),
    ):
        victim = plant(tmp_path / name, "symbolic", tmp_path)
        write(tmp_path / name)
        assert victim.read_text() == PRECIOUS
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).read_bytes() in (
            b"<p>new</p>",
            b"new",
        )
        victim.unlink()


def test_predict_replaces_a_planted_link_in_its_output_folder_not_its_target(tmp_path):
    checkpoint = tmp_path / "latest.pt"
    save_checkpoint(full_checkpoint(setup(tiny_config(name="tiny"))), checkpoint)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    victim = plant(tmp_path / "out" / "x.png", "symbolic", tmp_path)
    predict.run(
        predict.parse_args(
            ["--checkpoint", str(checkpoint), str(tmp_path / "x.png"), "--output", str(tmp_path / "out")]
        )
    )
    assert victim.read_text() == PRECIOUS and not (tmp_path / "out" / "x.png").is_symlink()
