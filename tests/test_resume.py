"""Never lose a run: exact resume, signals, kills, failed writes, NaN losses, safe loading."""

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
import utils
from config import Config, ConfigError
from conftest import ROOT
from utils import CheckpointError, OutputError


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    """A tiny config on 4 synthetic training pairs, writing under tmp_path."""
    root = synthetic_split(n=4, size=40).parent
    synthetic_split(n=2, size=40, name="val")
    return Config(data_root=str(root), image_size=32, load_size=36, ngf=8, ndf=8, precision="fp32",
                  epochs=2, num_samples=2, log_every=2, checkpoint_dir=str(tmp_path / "ck"),
                  results_dir=str(tmp_path / "res"), name="run")


def latest(cfg: Config) -> dict:
    return torch.load(os.path.join(cfg.checkpoint_dir, cfg.name, "latest.pt"), weights_only=True)


def without_seconds(history: dict) -> dict:
    return {**history, "epochs": [{k: v for k, v in row.items() if k != "seconds"} for row in history["epochs"]]}


def assert_same_run(a: dict, b: dict) -> None:
    assert without_seconds(a["history"]) == without_seconds(b["history"])
    for key, tensor in a["generator"].items():
        assert torch.equal(tensor, b["generator"][key]), key


def test_resume_after_an_epoch_is_exact(tiny, monkeypatch):
    straight = dataclasses.replace(tiny, name="straight")
    train.train(straight)
    write = train.write_epoch_outputs

    def stop_after_first_epoch(state, sample_set, epoch, run_dirs):
        write(state, sample_set, epoch, run_dirs)
        raise KeyboardInterrupt  # the process ends here
    monkeypatch.setattr(train, "write_epoch_outputs", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny)
    assert latest(tiny)["epoch"] == 1
    monkeypatch.setattr(train, "write_epoch_outputs", write)
    train.train(tiny)
    assert_same_run(latest(straight), latest(tiny))


def test_resume_mid_epoch_is_exact(tiny, monkeypatch):
    straight = dataclasses.replace(tiny, name="straight")
    train.train(straight)
    cfg = dataclasses.replace(tiny, checkpoint_every=3)
    save, saves = train.save_checkpoint, []

    def stop_after_mid_epoch_save(state, path):
        save(state, path)
        saves.append(state["progress"]["iteration"])
        if state["epoch"] == 1 and state["progress"]["iteration"] == 2:  # iteration 6 of 8
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", stop_after_mid_epoch_save)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg)
    assert saves[0] == 3, "a mid-epoch checkpoint after iteration 3"
    monkeypatch.setattr(train, "save_checkpoint", save)
    train.train(cfg)
    assert_same_run(latest(straight), latest(cfg))


def test_changed_architecture_is_refused(tiny):
    train.train(dataclasses.replace(tiny, epochs=1))
    with pytest.raises(ConfigError, match=r"ngf=8 there, 16 now"):
        train.train(dataclasses.replace(tiny, ngf=16))
    # --resume false is the explicit way to start over
    train.train(dataclasses.replace(tiny, ngf=16, epochs=1, resume=False))
    assert latest(tiny)["config"]["ngf"] == 16


def test_shape_mismatch_names_the_parameter(tiny, tmp_path):
    train.train(dataclasses.replace(tiny, epochs=1))
    checkpoint = latest(tiny)
    checkpoint["generator"]["down.1.1.weight"] = torch.zeros(3, 3, 4, 4)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"generator parameter down\.1\.1\.weight has shape \(3, 3, 4, 4\) "
                                              r"in the checkpoint but \(16, 8, 4, 4\)"):
        train.train(dataclasses.replace(tiny, resume_from=str(tmp_path / "bad.pt")))


def test_failed_write_keeps_the_previous_checkpoint(tiny, monkeypatch):
    train.train(dataclasses.replace(tiny, epochs=1))
    before = latest(tiny)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputError, match=r"cannot write .*latest\.pt: .*No space left"):
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
    with pytest.raises(train.TrainingError, match=r"loss G_GAN became nan in epoch 2, iterations 3-4"):
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
        utils.load_checkpoint(tmp_path / "evil.pt")
    result = run_train(tiny, "--resume_from", str(tmp_path / "evil.pt"), cwd=tmp_path)
    assert result.returncode == 1 and "not a loadable checkpoint" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [(None, "no such checkpoint file"),
                                             (b"hello", "not a loadable checkpoint")])
def test_bad_checkpoint_path_is_one_line(tmp_path, tiny, content, message):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    result = run_train(tiny, "--resume_from", str(path), cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0] and str(path) in errors[0]


def cli_args(cfg: Config) -> list[str]:
    return [f"--{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)]


def run_train(cfg: Config, *extra, cwd, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *cli_args(cfg), *extra], cwd=cwd,
                          capture_output=True, text=True, timeout=240, **kwargs)


def start_train(cfg: Config, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *cli_args(cfg)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_exits_0(tiny, tmp_path, signum):
    cfg = dataclasses.replace(tiny, epochs=30)
    proc = start_train(cfg, tmp_path)
    wait_for(os.path.join(cfg.checkpoint_dir, "run", "latest.pt"))
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "run the same command to resume" in out
    stopped = latest(cfg)
    assert stopped["epoch"] < 30
    # The same command continues without a gap or a repeat.
    result = run_train(cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in latest(cfg)["history"]["epochs"]] == list(range(1, 31))


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tiny, tmp_path):
    cfg = dataclasses.replace(tiny, epochs=12, checkpoint_every=1)
    path = os.path.join(cfg.checkpoint_dir, "run", "latest.pt")
    for delay in (0.0, 0.3, 0.7):
        proc = start_train(cfg, tmp_path)
        wait_for(path)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        utils.load_checkpoint(path)  # loadable whenever the kill came
    result = run_train(cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert [row["epoch"] for row in latest(cfg)["history"]["epochs"]] == list(range(1, 13))


def test_extending_a_finished_run_follows_the_new_lr_schedule(synthetic_split, tmp_path):
    """1 epoch (lr decayed to 0 at its end), then continued to 3 epochs: the new schedule's lr."""
    folder = synthetic_split(n=2, size=40).parent
    synthetic_split(n=1, size=40, name="val")
    cfg = Config(data_root=str(folder), image_size=32, load_size=36, ngf=8, ndf=8, precision="fp32",
                 num_samples=1, epochs=1, lr_decay_epochs=1, checkpoint_dir=str(tmp_path / "ck"),
                 results_dir=str(tmp_path / "res"), name="run")
    train.train(cfg)
    train.train(dataclasses.replace(cfg, epochs=3))
    history = torch.load(tmp_path / "ck" / "run" / "latest.pt", weights_only=True)["history"]["epochs"]
    expected = [cfg.lr * train.lr_factor(e, 3, 1) for e in (1, 2)]  # epochs 2 and 3 of the new run
    assert [row["lr"] for row in history[1:]] == pytest.approx(expected)
    assert history[1]["lr"] > 0
