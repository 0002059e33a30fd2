"""Validation during training: a fixed, evenly spaced subset every epoch, the whole split after
the last epoch, the sample grid drawn from the scored pairs (validation.py), and the same split
for the whole run."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli_args, run_main, tiny_run

import train
from training import validation
from training.loader import build_data
from training.setup import setup


def test_evenly_spaced_takes_the_same_spread_indices():
    assert validation.evenly_spaced(100, 25) == list(range(0, 100, 4))
    assert validation.evenly_spaced(10, 3) == [0, 3, 6]
    assert validation.evenly_spaced(5, 0) == validation.evenly_spaced(5, 9) == [0, 1, 2, 3, 4]


def test_val_fid_scores_the_whole_split(synthetic_split, tmp_path):
    cfg = tiny_run(synthetic_split, tmp_path, val_images=2)
    assert validation.subset(cfg, 6) == [0, 3]
    assert validation.subset(dataclasses.replace(cfg, val_fid=True), 6) == list(range(6))


def latest(cfg) -> dict:
    return torch.load(Path(cfg.checkpoint_dir) / "run" / "latest.pt", weights_only=True)


@pytest.fixture
def run(synthetic_split, tmp_path):
    """A 2-epoch tiny run with 6 val pairs, of which validation scores 2 (pairs 0 and 3)."""
    cfg = tiny_run(synthetic_split, tmp_path, val_images=2, num_samples=2)
    synthetic_split(n=6, size=40, name="val")
    return cfg


def test_the_subset_every_epoch_and_the_whole_split_after_the_last(run, capsys):
    train.train(run)
    out = capsys.readouterr().out
    first, last = latest(run)["history"]["epochs"]
    assert "val_L1" in first and not any(k.startswith("val_all_") for k in first)
    # The same generator scored again: the last row's figures are the subset's and the split's.
    state = setup(run)
    state.G.load_state_dict(latest(run)["generator"])
    _, val_set = build_data(run)
    per_image, whole, _ = validation.validate(state, val_set, list(range(6)))
    _, part, _ = validation.validate(state, val_set, [0, 3])
    for name in validation.METRICS:
        assert last[f"val_all_{name}"] == pytest.approx(whole[name], rel=1e-6)
        assert last[f"val_{name}"] == pytest.approx(part[name], rel=1e-6)
        assert last[f"val_{name}"] == pytest.approx((per_image[name][0] + per_image[name][3]) / 2, rel=1e-6)
    assert "validation scores 2 of the 6 val pairs (val_images)" in out
    assert f"the whole val split (6 pairs): L1 {last['val_all_L1']:.4f}" in out.splitlines()[-1]


def test_the_last_epoch_validates_even_off_the_val_every_beat(run):
    train.train(dataclasses.replace(run, epochs=3, val_every=2))
    history = latest(run)["history"]["epochs"]
    assert ["val_L1" in row for row in history] == [False, True, True]
    assert "val_all_L1" in history[-1] and "val_all_L1" not in history[1]


def test_the_sample_grid_shows_the_first_scored_pairs(run):
    state = setup(run)
    _, val_set = build_data(run)
    for indices in ([0, 3], list(range(6))):  # an epoch's subset, and the last epoch's whole split
        _, _, samples = validation.validate(state, val_set, indices)
        assert [torch.equal(row[0], val_set[i][0]) for row, i in zip(samples, [0, 3])] == [True, True]
    assert validation.sample_indices(run, 6) == [0, 3]


def test_a_split_no_larger_than_val_images_is_scored_whole_every_epoch(synthetic_split, tmp_path, capsys):
    cfg = tiny_run(synthetic_split, tmp_path)  # 2 val pairs, val_images 20
    train.train(cfg)
    rows, lines = latest(cfg)["history"]["epochs"], capsys.readouterr().out.splitlines()
    assert all("val_L1" in row and "val_all_L1" not in row for row in rows)
    assert f"the whole val split (2 pairs): L1 {rows[-1]['val_L1']:.4f}" in lines[-1]
    assert not any(line.startswith("validation scores") for line in lines)


def test_a_changed_val_images_is_said_and_recorded_on_resume(run, capsys):
    run = dataclasses.replace(run, lr_decay_epochs=0)  # a constant lr: --epochs changes nothing else
    train.train(dataclasses.replace(run, epochs=1, val_images=0))
    train.train(run)
    assert "changed settings apply from epoch 2 on: val_images 0 -> 2" in capsys.readouterr().out
    changes = latest(run)["history"]["changes"]
    assert changes == [{"epoch": 2, "field": "val_images", "from": 0, "to": 2}]


def test_validation_keeps_the_split_it_started_with(synthetic_split, tmp_path, monkeypatch, capsys):
    """val/ removed after epoch 1: the continued run would score test/ under the same val_*
    columns; it stops with one line instead, and without validation it trains on."""
    cfg = tiny_run(synthetic_split, tmp_path, epochs=1, lr_decay_epochs=0, tensorboard="false")
    synthetic_split(n=3, size=40, name="test")
    train.train(cfg)
    assert latest(cfg)["history"]["val_split"] == "val"
    shutil.rmtree(tmp_path / "val")
    argv = [*cli_args(cfg), "--epochs", "2"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and "validation would score test/, but this run has scored val/ since it started" in line
    assert f"put {tmp_path / 'val'} back, or --val_every 0" in line
    assert latest(cfg)["epoch"] == 1
    train.train(dataclasses.replace(cfg, epochs=2, val_every=0))
    rows = latest(cfg)["history"]["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2] and "val_L1" in rows[0] and "val_L1" not in rows[1]
    assert latest(cfg)["history"]["val_split"] == "val"
