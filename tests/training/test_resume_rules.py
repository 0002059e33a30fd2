"""Resume means one thing, and numbers that cannot be right stop the run (docs/recovery.md): the
run's own latest.pt wins over --resume_from, --resume false always moves the old run aside, a new
run never takes over another run's folders, a finished run says so, every changed setting is
refused or applied and recorded (or does not touch what is trained), an unloadable latest.pt
names a command that works, a mid-epoch checkpoint that no longer fits restarts its epoch, and
diverging losses, non-finite weights or NaN metrics stop before anything is saved."""

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_args, run_main, tiny_config, tiny_run, write_pair

import train
from config import ARCHITECTURE_FIELDS, Config, architecture_defaults
from training import validation
from training.checkpoint import (
    NOT_RECORDED,
    ON_RESUME,
    RECORDED,
    REFUSED,
    CheckpointError,
    full_checkpoint,
    load_generator,
    restore,
)
from training.guards import TrainingError
from training.setup import setup
from training.state import LOSS_NAMES


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    """One epoch at a constant lr, no TensorBoard (tiny_run's other settings)."""
    return tiny_run(synthetic_split, tmp_path, epochs=1, lr_decay_epochs=0, tensorboard="false")


def latest(cfg) -> dict:
    return torch.load(Path(cfg.checkpoint_dir) / cfg.name / "latest.pt", weights_only=True)


def test_the_runs_own_latest_wins_over_resume_from(tiny, capsys):
    train.train(dataclasses.replace(tiny, name="source"))
    snapshot = Path(tiny.checkpoint_dir) / "source" / "epoch_001.pt"
    started = dataclasses.replace(tiny, resume_from=str(snapshot), epochs=2)
    train.train(started)  # epoch 2, from the snapshot's weights
    capsys.readouterr()
    train.train(dataclasses.replace(started, epochs=3))  # the same command, one epoch more
    out = capsys.readouterr().out
    assert "latest.pt exists: the run continues from it" in out
    assert [row["epoch"] for row in latest(tiny)["history"]["epochs"]] == [1, 2, 3]  # not from 2 again


def test_resume_false_with_resume_from_still_moves_the_old_run_aside(tiny, capsys):
    train.train(dataclasses.replace(tiny, name="source"))
    train.train(tiny)
    old = latest(tiny)
    snapshot = Path(tiny.checkpoint_dir) / "source" / "epoch_001.pt"
    train.train(dataclasses.replace(tiny, resume=False, resume_from=str(snapshot), epochs=2))
    moved = sorted(Path(tiny.checkpoint_dir).glob("run.old-*"))
    assert len(moved) == 1 and "--resume false: the previous run's files" in capsys.readouterr().out
    kept = torch.load(moved[0] / "latest.pt", weights_only=True)
    assert all(torch.equal(kept["generator"][k], t) for k, t in old["generator"].items())


def test_a_new_run_never_takes_over_another_runs_results(tiny, capsys):
    train.train(dataclasses.replace(tiny, epochs=2))
    other = dataclasses.replace(tiny, checkpoint_dir=str(Path(tiny.checkpoint_dir).parent / "other"))
    train.train(other)  # the same name, another checkpoint folder: a new run
    assert "a new run: the previous run's files" in capsys.readouterr().out
    (moved,) = Path(tiny.results_dir).glob("run.old-*")
    assert len((moved / "history.csv").read_text().splitlines()) == 1 + 2  # the old run's two epochs
    assert len((Path(tiny.results_dir) / "run" / "history.csv").read_text().splitlines()) == 1 + 1
    assert not (Path(tiny.results_dir) / "run" / "samples" / "epoch_002.png").exists()


def test_a_finished_run_says_so_and_trains_nothing(tiny, capsys):
    """The line goes to train.log too; latest.pt stays as it was."""
    train.train(tiny)
    path = Path(tiny.checkpoint_dir) / "run" / "latest.pt"
    before = path.read_bytes()
    capsys.readouterr()
    train.train(tiny)
    out = capsys.readouterr().out
    assert "run has finished 1/1 epochs" in out and "raise --epochs" in out
    assert "resuming" not in out and "training run" not in out
    assert path.read_bytes() == before


def test_changed_optimiser_settings_apply_and_are_recorded(tiny, capsys):
    train.train(tiny)
    changed = dataclasses.replace(tiny, epochs=2, lr=1e-4, beta1=0.9, lambda_l1=50.0)
    train.train(changed)
    assert (
        "changed settings apply from epoch 2 on: lr 0.0002 -> 0.0001, beta1 0.5 -> 0.9"
        in capsys.readouterr().out
    )
    saved = latest(tiny)
    for opt in ("opt_G", "opt_D"):
        group = saved[opt]["param_groups"][0]
        assert group["initial_lr"] == pytest.approx(1e-4) and group["betas"] == (0.9, 0.999)
    assert saved["history"]["epochs"][1]["lr"] == pytest.approx(1e-4)
    fields = [c["field"] for c in saved["history"]["changes"]]
    assert fields == ["lr", "beta1", "lambda_l1"] and saved["history"]["changes"][0]["epoch"] == 2
    record = json.loads((Path(tiny.results_dir) / "run" / "config.json").read_text())
    assert [c["field"] for c in record["changes"]] == fields


def test_a_mid_epoch_checkpoint_that_no_longer_fits_restarts_its_epoch(tiny, capsys):
    """Saved at iteration 3 of an epoch of 4 pairs, continued with 2 pairs: that epoch starts again
    (its means are not 3 iterations' sums over 2), without a scheduler warning."""
    from training.checkpoint import full_checkpoint, save_checkpoint

    state = setup(tiny)
    state.progress.iteration, state.progress.batches = 3, 4
    (Path(tiny.checkpoint_dir) / "run").mkdir(parents=True)
    save_checkpoint(full_checkpoint(state), Path(tiny.checkpoint_dir) / "run" / "latest.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. lr_scheduler.step() before optimizer.step()
        train.train(dataclasses.replace(tiny, max_images=2))
    assert "an epoch has 2: epoch 1 starts again from its first iteration" in capsys.readouterr().out
    (row,) = latest(tiny)["history"]["epochs"]
    assert row["seconds"] > 0 and all(abs(row[name]) < 10 for name in LOSS_NAMES)


def test_diverging_losses_stop_before_anything_is_saved(tiny):
    train.train(tiny)
    before = latest(tiny)
    with pytest.raises(TrainingError, match=r"in epoch 2, iterations 1-2 \(training diverged") as stopped:
        train.train(dataclasses.replace(tiny, epochs=2, lr=1e10))
    assert latest(tiny)["epoch"] == 1 and latest(tiny)["history"] == before["history"]
    # The line says what is left, as the files say it.
    assert str(stopped.value).endswith(
        f"{Path(tiny.checkpoint_dir) / 'run' / 'latest.pt'} (epoch 1) holds the last good state"
    )


def test_a_first_epoch_that_diverges_says_there_is_no_checkpoint(tiny):
    with pytest.raises(TrainingError, match="training diverged") as stopped:
        train.train(dataclasses.replace(tiny, lr=1e10))
    assert "no checkpoint was written before it" in str(stopped.value)
    assert "holds the last good state" not in str(stopped.value)
    assert not (Path(tiny.checkpoint_dir) / "run" / "latest.pt").exists()


def test_a_new_run_from_a_finished_snapshot_names_the_snapshot(tiny, capsys):
    """--name new --resume_from a snapshot that has --epochs already: said with the file it read."""
    train.train(dataclasses.replace(tiny, epochs=1, save_every=1))
    snapshot = Path(tiny.checkpoint_dir) / "run" / "epoch_001.pt"
    capsys.readouterr()
    train.train(dataclasses.replace(tiny, name="new", epochs=1, resume_from=str(snapshot)))
    out = capsys.readouterr().out
    assert f"new has finished 1/1 epochs ({snapshot}); raise --epochs to continue it" in out
    assert not (Path(tiny.checkpoint_dir) / "new" / "latest.pt").exists()


def test_nan_validation_stops_the_run(tiny, monkeypatch):
    def diverged(state, val_set, indices):
        nan = float("nan")
        return (
            {name: [nan] * len(indices) for name in validation.METRICS},
            dict.fromkeys(validation.METRICS, nan),
            [],
        )

    monkeypatch.setattr(validation, "validate", diverged)
    with pytest.raises(TrainingError, match="validation val_L1 is nan after epoch 1"):
        train.train(tiny)
    assert not (Path(tiny.checkpoint_dir) / "run" / "latest.pt").exists()


def test_non_finite_batchnorm_statistics_stop_the_run(tiny, monkeypatch):
    one_epoch = train.train_one_epoch

    def poisoned(state, *args):
        means = one_epoch(state, *args)
        state.G.down[1][2].running_var[0] = float("inf")  # as a diverging batch leaves it
        return means

    monkeypatch.setattr(train, "train_one_epoch", poisoned)
    with pytest.raises(
        TrainingError, match=r"generator down.1.2.running_var is no longer finite after epoch 1"
    ):
        train.train(tiny)
    assert not (Path(tiny.checkpoint_dir) / "run" / "latest.pt").exists()


def test_the_run_says_what_it_will_take(tiny, tmp_path, capsys):
    """After 30 iterations: the whole run's estimate; after each epoch but the last: the time left."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 2)):
        (tmp_path / "big" / split).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            write_pair(tmp_path / "big" / split / f"{i + 1}.png", a, 255 - a)
    train.train(dataclasses.replace(tiny, data_root=str(tmp_path / "big"), epochs=2))
    out = capsys.readouterr().out
    assert "s per iteration here, the run's 80 iterations take about" in out
    first, last = (line for line in out.splitlines() if line.startswith("epoch "))
    assert first.startswith("epoch 1/2") and "left" in first and "left" not in last


def test_the_loop_ends_only_on_the_agreed_stop(tiny, monkeypatch):
    """A signal that arrives just after the processes agreed to go on, at the end of epoch 1,
    must not end the loop in that process alone (under torchrun the others would wait for it in
    their next collective): it is acted on at the next agreement, after epoch 2's first step."""
    agree, one_epoch, seen = train.ddp.any_rank, train.train_one_epoch, {}

    def epoch(state, *args):
        seen["state"], seen["ended"] = state, False
        means = one_epoch(state, *args)
        seen["ended"] = True
        return means

    def late_signal(world, device, flag):
        agreed = agree(world, device, flag)
        if seen.pop("ended", False):  # the end of epoch 1's agreement: the signal comes after it
            seen["state"].stop = True
        return agreed

    monkeypatch.setattr(train, "train_one_epoch", epoch)
    monkeypatch.setattr(train.ddp, "any_rank", late_signal)
    train.train(dataclasses.replace(tiny, epochs=3))
    saved = latest(tiny)
    assert (saved["epoch"], saved["progress"]["iteration"]) == (1, 1)


# --- Every setting recorded or refused on resume ----------------------------------------------


def other_value(field: str, value):
    """A value of the field's type other than `value` (another choice where the values are a set)."""
    choices = next(f.metadata["choices"] for f in dataclasses.fields(Config) if f.name == field)
    if choices:
        return next(choice for choice in choices if choice and choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2
    return value + "2"


def test_every_config_field_is_classified():
    assert list(ON_RESUME) != [] and set(ON_RESUME) == {f.name for f in dataclasses.fields(Config)}
    assert set(ON_RESUME.values()) == {REFUSED, RECORDED, NOT_RECORDED}
    assert all(ON_RESUME[f] == REFUSED for f in ARCHITECTURE_FIELDS)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config)])
def test_each_changed_field_is_refused_recorded_or_neither(field, tmp_path, capsys):
    """Continued with one field changed: refused naming it and the value that continues, or
    applied with a line and a history entry, or (where and how the run works) neither."""
    base = tiny_config(name="run", checkpoint_dir=str(tmp_path))  # lr_decay_epochs > 0: --epochs counts
    saved = full_checkpoint(dataclasses.replace(setup(base), epoch=1))
    state = setup(base)
    state.cfg = dataclasses.replace(base, **{field: other_value(field, getattr(base, field))})
    path = tmp_path / "elsewhere.pt"
    if ON_RESUME[field] == REFUSED:
        with pytest.raises(CheckpointError) as err:
            restore(state, saved, path, architecture_defaults())
        message = str(err.value)
        assert f"{field}={getattr(base, field)!r} there" in message
        assert f"--{field} {getattr(base, field)} continues it" in message
        return
    restore(state, saved, path, architecture_defaults())
    recorded = state.history.changes
    if ON_RESUME[field] == NOT_RECORDED:
        assert recorded == [] and "changed settings" not in capsys.readouterr().out
        return
    change = {"epoch": 2, "field": field, "from": getattr(base, field), "to": getattr(state.cfg, field)}
    assert recorded == [change]
    assert f"changed settings apply from epoch 2 on: {field} " in capsys.readouterr().out


def test_changed_data_dropout_and_generation_apply_and_are_recorded(synthetic_split, tmp_path, capsys):
    """--dropout 0 --eval_mode true --load_size 96 --flip false --seed 5 on resume: applied from
    epoch 2, said in one line, recorded in the history and config.json; the snapshot of epoch 1
    still says what epoch 1 trained with, latest.pt what the run trains with now."""
    cfg = tiny_run(
        synthetic_split,
        tmp_path,
        image_size=64,
        load_size=72,
        lr_decay_epochs=0,
        tensorboard="false",
        epochs=1,
    )
    train.train(cfg)
    changed = dataclasses.replace(
        cfg, epochs=2, dropout=0.0, eval_mode=True, load_size=96, flip=False, seed=5
    )
    train.train(changed)
    said = (
        "changed settings apply from epoch 2 on: load_size 72 -> 96, flip True -> False, dropout 0.5 -> 0.0, "
    )
    assert said + "eval_mode False -> True, seed 0 -> 5" in capsys.readouterr().out
    expected = [
        {"epoch": 2, "field": field, "from": getattr(cfg, field), "to": getattr(changed, field)}
        for field in ("load_size", "flip", "dropout", "eval_mode", "seed")
    ]
    saved = latest(cfg)
    assert saved["history"]["changes"] == expected
    assert json.loads((Path(cfg.results_dir) / "run" / "config.json").read_text())["changes"] == expected
    assert saved["generator_kwargs"]["dropout"] == saved["config"]["dropout"] == 0.0
    first = torch.load(Path(cfg.checkpoint_dir) / "run" / "epoch_001.pt", weights_only=True)
    assert first["generator_kwargs"]["dropout"] == first["config"]["dropout"] == 0.5
    assert first["history"]["changes"] == []
    G, _ = load_generator(Path(cfg.checkpoint_dir) / "run" / "latest.pt", torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.Dropout) for m in G.modules())  # what epoch 2 trained


def test_a_refused_change_names_commands_that_work(synthetic_split, tmp_path, monkeypatch, capsys):
    """--resume false does not help a run started from --resume_from (it is read again): the
    line names the value that continues and the run without --resume_from; both work."""
    cfg = tiny_run(synthetic_split, tmp_path, epochs=1, lr_decay_epochs=0, tensorboard="false")
    train.train(dataclasses.replace(cfg, name="source"))
    snapshot = Path(cfg.checkpoint_dir) / "source" / "epoch_001.pt"
    started = dataclasses.replace(cfg, epochs=2, resume_from=str(snapshot))
    code, _, (line,) = run_main(
        train.main, [*cli_args(started), "--ngf", "16"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and "ngf=8 there, 16 now" in line and "--resume false" not in line
    assert "--ngf 8 continues it; without --resume_from the run trains new networks" in line
    train.train(dataclasses.replace(started, ngf=8))
    assert latest(cfg)["epoch"] == 2
    train.train(dataclasses.replace(started, ngf=16, resume_from="", resume=False, name="new"))
    assert latest(dataclasses.replace(cfg, name="new"))["config"]["ngf"] == 16
    # The run's own latest.pt: --resume false starts it over.
    with pytest.raises(CheckpointError, match="--ngf 8 continues it; --resume false starts the run over"):
        train.train(dataclasses.replace(started, epochs=3, ngf=16))


@pytest.mark.parametrize("damage", ["garbage", "flipped_byte"])
def test_an_unloadable_latest_advises_a_command_that_works(damage, tiny, tmp_path, monkeypatch, capsys):
    """The advice is run as it stands: the run starts over from the snapshot (read before the
    run's folders are moved aside, the damaged file with them) and trains on from its epoch."""
    from conftest import flip_a_byte_of_tensor_data

    cfg = dataclasses.replace(tiny, epochs=2)
    train.train(cfg)
    folder = Path(cfg.checkpoint_dir) / "run"
    if damage == "garbage":
        (folder / "latest.pt").write_bytes(b"garbage")
    else:
        flip_a_byte_of_tensor_data(folder / "latest.pt")
    damaged = (folder / "latest.pt").read_bytes()
    argv = [*cli_args(cfg), "--epochs", "3"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and str(folder / "latest.pt") in line
    advice = line.split("continue from the newest loadable snapshot with ", 1)[1].split(" (")[0].split()
    assert advice == ["--resume", "false", "--resume_from", str(folder / "epoch_002.pt")]
    monkeypatch.setattr(sys, "argv", ["train.py", *argv, *advice])
    train.main()
    assert "resuming" in capsys.readouterr().out
    saved = latest(cfg)
    assert saved["epoch"] == 3 and [row["epoch"] for row in saved["history"]["epochs"]] == [1, 2, 3]
    (moved,) = Path(cfg.checkpoint_dir).glob("run.old-*")
    assert (moved / "latest.pt").read_bytes() == damaged and (moved / "epoch_002.pt").is_file()
