"""Never lose a run: exact resume (with dropout), the commit point, one owner per run, lean
snapshots, starting over, signals, kills, failed writes, NaN losses, safe loading."""

import dataclasses
import os
import pickle
import signal
import threading
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_same_run,
    cli_args,
    error_lines,
    latest,
    run_config,
    run_main,
    run_script,
    start_script,
    tiny_run,
    train_killed_at,
    wait_for,
)

import train
from files.writing import temporary_name
from training import checkpoint
from training.checkpoint import CheckpointError
from training.guards import TrainingError
from training.setup import generator_kwargs, lr_factor
from utils import OutputError


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    """64 px (the U-Net has a dropout block) on 4 synthetic training pairs, writing under tmp_path."""
    return tiny_run(synthetic_split, tmp_path, image_size=64, load_size=72, num_samples=2)


def files_of(cfg) -> set[str]:
    """The run's files, relative to its two folders; TensorBoard's event files are left out (each
    process appends a new one, named by its time and pid: they are logs, like train.log)."""
    found = set()
    for top in (Path(cfg.checkpoint_dir) / cfg.name, Path(cfg.results_dir) / cfg.name):
        found |= {
            f"{top.parent.name}/{p.relative_to(top)}"
            for p in top.rglob("*")
            if p.is_file() and "tensorboard" not in p.relative_to(top).parts
        }
    return found


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kill_mid_epoch_then_resume_is_exact_with_dropout(tiny, tmp_path, precision):
    """Killed right after the mid-epoch latest.pt of epoch 2, iteration 2: the resumed run ends
    bit-identical to a straight one (in bf16 too: the default precision on native-bf16 CPUs)."""
    cfg = dataclasses.replace(tiny, checkpoint_every=3, precision=precision)
    assert generator_kwargs(cfg)["num_downs"] >= 6, "a U-Net with a dropout block"
    straight = dataclasses.replace(cfg, name="straight")
    assert run_script("train.py", *cli_args(straight), cwd=tmp_path).returncode == 0
    killed = train_killed_at(
        cfg, tmp_path, at=3, match="latest.pt", when="after"
    )  # it 3, epoch 1's end, it 6
    assert killed.returncode == 137 and latest(cfg)["progress"]["iteration"] == 2
    resumed = run_script("train.py", *cli_args(cfg), cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert_same_run(latest(straight), latest(cfg))


def test_resume_after_an_epoch_is_exact(tiny, monkeypatch):
    straight = dataclasses.replace(tiny, name="straight")
    train.train(straight)
    save = checkpoint.save_checkpoint

    def stop_after_first_latest(state, path):
        save(state, path)
        if Path(path).name == "latest.pt":
            raise KeyboardInterrupt  # the process ends here

    monkeypatch.setattr(checkpoint, "save_checkpoint", stop_after_first_latest)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny)
    assert latest(tiny)["epoch"] == 1
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    train.train(tiny)
    assert_same_run(latest(straight), latest(tiny))


@pytest.mark.slow
def test_a_kill_at_any_write_loses_nothing(tiny, tmp_path):
    """After epoch 1, stop the process at each write of epoch 2 in turn, leaving that write's
    temporary file behind: the run then ends with exactly the files and weights of a straight
    run, and no temporary file."""
    cfg = dataclasses.replace(tiny, lr_decay_epochs=0)  # the same lr whether 1 or 2 epochs are asked for
    straight = dataclasses.replace(cfg, name="straight")
    assert run_script("train.py", *cli_args(straight), cwd=tmp_path).returncode == 0
    assert run_script("train.py", *cli_args(cfg), "--epochs", "1", cwd=tmp_path).returncode == 0
    for at in range(2, 30):  # write 1 of every run is its config.json; then epoch 2's writes
        killed = train_killed_at(cfg, tmp_path, at=at)
        if killed.returncode == 0:
            break  # at is past the run's last write: every write has been hit once
        assert killed.returncode == 137, killed.stderr[-2000:]
        assert latest(cfg)["epoch"] == 1, f"latest.pt advanced before write {at}"
    assert at > 8, "epoch 2 writes its grid, csv, plots, page, snapshots and latest.pt"
    assert_same_run(latest(straight), latest(cfg))
    assert {f.replace("straight", "run") for f in files_of(straight)} == files_of(cfg)
    assert not [f for f in files_of(cfg) if ".tmp" in f]


@pytest.mark.slow
def test_latest_every_s_writes_latest_seldom_and_a_kill_loses_nothing(tiny, tmp_path):
    """With latest_every_s longer than the run, only the first and the last epoch write latest.pt:
    killed after epoch 2's snapshot, the run still has epoch 1's, and the same command then ends
    with exactly the files and weights of a straight run."""
    cfg = dataclasses.replace(tiny, epochs=3, latest_every_s=3600)
    straight = dataclasses.replace(cfg, name="straight")
    assert run_script("train.py", *cli_args(straight), cwd=tmp_path).returncode == 0
    killed = train_killed_at(cfg, tmp_path, at=1, match="epoch_002.pt", when="after")
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert (Path(cfg.checkpoint_dir) / "run" / "epoch_002.pt").exists() and latest(cfg)["epoch"] == 1
    resumed = run_script("train.py", *cli_args(cfg), cwd=tmp_path)
    assert resumed.returncode == 0 and "epoch 2, iteration 0" in resumed.stdout, resumed.stderr
    assert_same_run(latest(straight), latest(cfg))
    assert {f.replace("straight", "run") for f in files_of(straight)} == files_of(cfg)


def test_files_are_copies_taken_at_the_end_of_their_epoch(tiny, monkeypatch):
    """The writer thread writes epoch 2's snapshot only after epoch 3 has trained two iterations:
    the file still holds epoch 2's weights and history, as the snapshot of a 2-epoch run does.
    (Epoch 2: a process's first epoch end waits for its own files.)"""
    cfg = dataclasses.replace(tiny, lr_decay_epochs=0)  # the same lr whether 2 or 3 epochs are asked for
    train.train(dataclasses.replace(cfg, epochs=2, name="two"))
    save, step, steps, trained = checkpoint.save_checkpoint, train.train_step, [], threading.Event()

    def late_save(saved: dict, path) -> None:
        if Path(path).name == "epoch_002.pt":
            assert trained.wait(timeout=600), "epoch 3 never trained"
        save(saved, path)

    def counted_step(*args):
        losses = step(*args)
        steps.append(1)
        if len(steps) == 10:  # epoch 3, iteration 2 (4 iterations an epoch)
            trained.set()
        return losses

    monkeypatch.setattr(checkpoint, "save_checkpoint", late_save)
    monkeypatch.setattr(train, "train_step", counted_step)
    train.train(dataclasses.replace(cfg, epochs=3))
    folder = Path(cfg.checkpoint_dir)
    written, reference = (torch.load(folder / n / "epoch_002.pt", weights_only=True) for n in ("run", "two"))
    assert_same_run(reference, written)
    assert latest(cfg)["epoch"] == 3 and not torch.equal(
        latest(cfg)["generator"]["down.0.weight"], written["generator"]["down.0.weight"]
    )


def test_a_failed_background_write_stops_the_run_with_one_line(tiny, tmp_path, monkeypatch, capsys):
    """epoch_002.pt cannot be written (the disk fills as it is written; a folder in its way is
    refused before any work, and the tests run as root, so a read-only folder would not stop
    them): the run stops at its next wait with one line naming the file, and the writes queued
    behind the failed one (epoch 2's latest.pt) are not made."""
    cfg = dataclasses.replace(tiny, epochs=1, latest_every_s=0)
    train.train(cfg)
    save = torch.save

    def disk_full_at_epoch_2(obj, where, *args, **kwargs):
        if "epoch_002" in str(where):
            raise OSError(28, "No space left on device")
        return save(obj, where, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_2)
    argv = cli_args(dataclasses.replace(cfg, epochs=3))
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and "cannot write" in line and "epoch_002.pt" in line
    assert latest(cfg)["epoch"] == 1
    assert not [p for p in os.listdir(Path(cfg.checkpoint_dir) / "run") if ".tmp" in p]


def test_stale_temporary_files_are_removed_at_the_next_start(tiny, tmp_path):
    """A killed write's temporary file (as files.writing.atomic_write names it) goes when the run
    continues; the rules of what is removed where: tests/training/test_run_folders.py."""
    train.train(dataclasses.replace(tiny, epochs=1))
    folder = Path(tiny.checkpoint_dir) / "run"
    leftover = folder / temporary_name(folder / "latest.pt")
    leftover.write_bytes(b"half a checkpoint")
    train.train(tiny)
    assert not leftover.exists() and latest(tiny)["epoch"] == 2


@pytest.mark.slow  # two training processes, one killed
def test_second_process_on_a_run_stops_and_the_hold_dies_with_the_first(tiny, tmp_path):
    cfg = dataclasses.replace(tiny, epochs=200)
    first = start_script("train.py", *cli_args(cfg), cwd=tmp_path)
    try:
        wait_for(Path(cfg.checkpoint_dir) / "run" / "latest.pt", first)
        second = run_script("train.py", *cli_args(cfg), "--lr", "0.001", cwd=tmp_path)
        (line,) = error_lines(second)
        assert second.returncode == 1 and f"process {first.pid}" in line and "being trained" in line
    finally:
        first.kill()  # kill -9: the lock must vanish with it
        first.wait()
    third = run_script("train.py", *cli_args(dataclasses.replace(cfg, epochs=1)), cwd=tmp_path)
    assert third.returncode == 0, third.stderr


def test_snapshots_are_lean_and_training_continues_from_one(tmp_path, synthetic_split, capsys):
    root = synthetic_split(n=2, size=40).parent
    cfg = run_config(tmp_path, root, image_size=64, load_size=64, ngf=32, ndf=32, epochs=1, save_every=1)
    train.train(cfg)
    folder = tmp_path / "ck" / "run"
    full, lean = (folder / "latest.pt").stat().st_size, (folder / "epoch_001.pt").stat().st_size
    assert lean <= 0.4 * full, (lean, full)
    snapshot = torch.load(folder / "epoch_001.pt", weights_only=True)
    assert {"generator", "discriminator", "generator_kwargs", "config", "epoch", "metrics"} <= set(snapshot)
    assert "opt_G" not in snapshot and abs((folder / "best.pt").stat().st_size - lean) < 0.01 * lean
    train.train(
        dataclasses.replace(cfg, name="fine_tuned", epochs=2, resume_from=str(folder / "epoch_001.pt"))
    )
    assert "Adam starts fresh" in capsys.readouterr().out
    assert [
        row["epoch"] for row in latest(dataclasses.replace(cfg, name="fine_tuned"))["history"]["epochs"]
    ] == [1, 2]


def test_resume_false_moves_the_old_run_aside(tiny, tmp_path, capsys):
    train.train(dataclasses.replace(tiny, epochs=1))
    train.train(dataclasses.replace(tiny, epochs=1, resume=False, lr=1e-3))
    moved = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith("run.old-"))
    assert len(moved) == 1 and "now in" in capsys.readouterr().out
    assert (tmp_path / "ck" / moved[0] / "epoch_001.pt").exists()
    assert (tmp_path / "res" / moved[0] / "history.csv").exists()
    assert latest(tiny)["config"]["lr"] == 1e-3
    assert torch.load(tmp_path / "ck" / moved[0] / "latest.pt", weights_only=True)["config"]["lr"] == tiny.lr


def test_unloadable_latest_names_the_newest_snapshot(tiny, tmp_path):
    train.train(tiny)
    (Path(tiny.checkpoint_dir) / "run" / "latest.pt").write_bytes(b"garbage")
    result = run_script("train.py", *cli_args(tiny), "--epochs", "3", cwd=tmp_path)
    (line,) = error_lines(result)
    assert result.returncode == 1 and "epoch_002.pt" in line and "--resume_from" in line


def test_changed_architecture_is_refused(tiny):
    train.train(dataclasses.replace(tiny, epochs=1))
    with pytest.raises(CheckpointError, match=r"ngf=8 there, 16 now"):
        train.train(dataclasses.replace(tiny, ngf=16))
    # --resume false is the explicit way to start over
    train.train(dataclasses.replace(tiny, ngf=16, epochs=1, resume=False))
    assert latest(tiny)["config"]["ngf"] == 16


def test_shape_mismatch_names_the_parameter(tiny, tmp_path):
    train.train(dataclasses.replace(tiny, epochs=1))
    saved = latest(tiny)
    saved["generator"]["down.1.1.weight"] = torch.zeros(3, 3, 4, 4)
    checkpoint.save_checkpoint(saved, tmp_path / "bad.pt")  # a new checksum: only the shape is wrong
    with pytest.raises(
        CheckpointError,
        match=r"generator parameter down\.1\.1\.weight has shape \(3, 3, 4, 4\) "
        r"in the checkpoint but \(16, 8, 4, 4\)",
    ):
        train.train(dataclasses.replace(tiny, name="fresh", resume_from=str(tmp_path / "bad.pt")))


@pytest.mark.parametrize(
    "damage", ["generator_only", "epoch_is_text", "progress_missing", "weights_are_lists"]
)
def test_checkpoints_that_load_but_do_not_fit_are_one_line(tiny, tmp_path, damage, monkeypatch, capsys):
    train.train(dataclasses.replace(tiny, epochs=1))
    saved = latest(tiny)
    if damage == "generator_only":
        saved = {"generator": saved["generator"]}
    elif damage == "epoch_is_text":
        saved["epoch"] = "one"
    elif damage == "progress_missing":
        del saved["progress"]["total"]
    else:
        saved["discriminator"] = {k: v.tolist() for k, v in saved["discriminator"].items()}
    checkpoint.save_checkpoint(saved, tmp_path / "damaged.pt")  # with a checksum that fits
    code, _, (line,) = run_main(
        train.main,
        [*cli_args(tiny), "--name", "fresh", "--resume_from", tmp_path / "damaged.pt"],  # a run of its own
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 1 and "damaged.pt" in line


def test_failed_write_keeps_the_previous_checkpoint(tiny, monkeypatch):
    train.train(dataclasses.replace(tiny, epochs=1))
    before = latest(tiny)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputError, match=r"cannot write .*\.pt: .*No space left"):
        train.train(tiny)
    monkeypatch.undo()
    assert_same_run(before, latest(tiny))
    assert not [p for p in os.listdir(os.path.join(tiny.checkpoint_dir, "run")) if ".tmp" in p]


def test_nan_loss_stops_naming_loss_and_iteration(tiny, monkeypatch):
    train.train(dataclasses.replace(tiny, epochs=1))
    before = latest(tiny)
    step, calls = train.train_step, []

    def nan_on_third(*args):
        calls.append(1)
        losses = step(*args)
        return losses * float("nan") if len(calls) == 3 else losses

    monkeypatch.setattr(train, "train_step", nan_on_third)
    with pytest.raises(TrainingError, match=r"loss G_GAN became nan in epoch 2, iterations 3-4"):
        train.train(tiny)
    assert_same_run(before, latest(tiny))


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_and_does_not_run(tmp_path, tiny):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"generator": Exploit(str(marker))}, f)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "evil.pt")
    result = run_script("train.py", *cli_args(tiny), "--resume_from", tmp_path / "evil.pt", cwd=tmp_path)
    assert result.returncode == 1 and "not a loadable checkpoint" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,message", [(None, "no such checkpoint file"), (b"hello", "not a loadable checkpoint")]
)
def test_bad_checkpoint_path_is_one_line(tmp_path, tiny, content, message):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    result = run_script("train.py", *cli_args(tiny), "--resume_from", path, cwd=tmp_path)
    (line,) = error_lines(result)
    assert result.returncode == 1 and message in line and str(path) in line


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_exits_0(tiny, tmp_path, signum):
    cfg = dataclasses.replace(tiny, epochs=30)
    proc = start_script("train.py", *cli_args(cfg), cwd=tmp_path)
    wait_for(Path(cfg.checkpoint_dir) / "run" / "latest.pt", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "run the same command to resume" in out
    stopped_at = latest(cfg)["epoch"]
    assert stopped_at < 30
    # The same command continues without a gap or a repeat (for two more epochs: enough to see it).
    result = run_script("train.py", *cli_args(cfg), "--epochs", str(stopped_at + 2), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in latest(cfg)["history"]["epochs"]] == list(range(1, stopped_at + 3))


def test_extending_a_finished_run_follows_the_new_lr_schedule(synthetic_split, tmp_path):
    """1 epoch (lr decayed to 0 at its end), then continued to 3 epochs: the new schedule's lr."""
    folder = synthetic_split(n=2, size=40).parent
    synthetic_split(n=1, size=40, name="val")
    cfg = run_config(tmp_path, folder, epochs=1, lr_decay_epochs=1)
    train.train(cfg)
    train.train(dataclasses.replace(cfg, epochs=3))
    history = latest(cfg)["history"]["epochs"]
    expected = [cfg.lr * lr_factor(e, 3, 1) for e in (1, 2)]  # epochs 2 and 3 of the new run
    assert [row["lr"] for row in history[1:]] == pytest.approx(expected)
    assert history[1]["lr"] > 0
