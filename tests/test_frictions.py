"""Small frictions of a first hour: a near-miss option name, a decay longer than the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_main, tiny_config

import train
from training import cli, settings
from training.setup import lr_factor


@pytest.mark.parametrize(
    "argv,hint",
    [
        (["--epoch", "3"], "--epoch: unknown setting; did you mean --epochs?"),
        (["--epoch=3"], "--epoch=3: unknown setting; did you mean --epochs?"),
        (["--lambda_L1", "10"], "did you mean --lambda_l1?"),
        (["--imagesize", "64"], "did you mean --image_size?"),
    ],
)
def test_near_misses_name_the_setting(argv, hint, tmp_path, monkeypatch, capsys):
    code, err, lines = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and hint in lines[0], err
    assert not list(tmp_path.iterdir())  # nothing written


def test_no_hint_for_a_name_like_none_and_in_config_files(tmp_path):
    with pytest.raises(settings.ConfigError) as raised:
        cli.parse_args(["--zzzz", "1"])
    assert "did you mean" not in str(raised.value)
    (tmp_path / "c.json").write_text(json.dumps({"epoch": 3}))
    with pytest.raises(settings.ConfigError, match="unknown field 'epoch'; did you mean --epochs?"):
        cli.parse_args(["--config", str(tmp_path / "c.json")])


def run_tiny(root: Path, tmp_path: Path, monkeypatch, capsys, **settings) -> tuple[str, dict]:
    cfg = tiny_config(
        data_root=str(root),
        checkpoint_dir=str(tmp_path / "ck"),
        results_dir=str(tmp_path / "res"),
        name="run",
        max_images=2,
        val_every=0,
        tensorboard="false",
        **settings,
    )
    monkeypatch.chdir(tmp_path)
    train.train(cfg)
    record = json.loads((tmp_path / "res" / "run" / "config.json").read_text())
    return capsys.readouterr().out, record


def test_a_decay_longer_than_the_run_is_said_and_recorded(synthetic_split, tmp_path, monkeypatch, capsys):
    root = synthetic_split(n=2, size=32).parent
    out, record = run_tiny(root, tmp_path, monkeypatch, capsys, epochs=2, lr_decay_epochs=5)
    lines = [line for line in out.splitlines() if "lr_decay_epochs" in line]
    assert lines == [
        "lr_decay_epochs 5 is more than epochs 2: the lr decays linearly over all 2 epochs, "
        "as with lr_decay_epochs 2"
    ]
    assert record["config"]["lr_decay_epochs"] == 5 and record["resolved"]["lr_decay_epochs"] == 2
    # What was said is what the schedule does: the same lr factors as a decay over the 2 epochs.
    assert [lr_factor(e, 2, 5) for e in range(2)] == [lr_factor(e, 2, 2) for e in range(2)]
    log = (tmp_path / "res" / "run" / "train.log").read_text()
    assert "lr_decay_epochs 5 is more than epochs 2" in log


def test_a_decay_within_the_run_says_nothing(synthetic_split, tmp_path, monkeypatch, capsys):
    root = synthetic_split(n=2, size=32).parent
    out, record = run_tiny(root, tmp_path, monkeypatch, capsys, epochs=1, lr_decay_epochs=1)
    assert "lr_decay_epochs" not in out and record["resolved"]["lr_decay_epochs"] == 1
