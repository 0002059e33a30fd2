"""`torchrun` with 2 CPU processes (gloo) on real facades images: one set of outputs, the same step
as one process with the double batch, interchangeable checkpoints, and launch errors."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script, start_script, wait_for
from PIL import Image

import train
from config import Config
from reporting.figures import HEADER_HEIGHT
from training import distributed
from training.setup import setup
from training.state import LOSS_NAMES

# Two images, no random crop (load_size == image_size), no flip, no dropout, constant lr: one epoch
# is then one optimisation step on both images, whether 2 processes x batch 1 or 1 x batch 2.
# (Runs of 2 epochs, so that epoch_001.pt holds the lr of epoch 2 and not the end of the schedule.)
TINY = [
    "--max_images",
    "2",
    "--image_size",
    "32",
    "--load_size",
    "32",
    "--flip",
    "false",
    "--dropout",
    "0",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--lr_decay_epochs",
    "0",
    "--save_every",
    "1",
    "--num_samples",
    "1",
    "--precision",
    "fp32",
    "--log_every",
    "1",
    "--sync_bn",
    "true",
]
pytestmark = pytest.mark.slow  # torchrun launches of several processes

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict:
    """This environment without any launcher variables that would make train.py join a group."""
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}, **extra}


def torchrun(processes: int, *options: str) -> list:
    """`python -m torch.distributed.run` with --standalone (a free port), `processes` processes and
    `options`, launching train.py: the command line up to train.py's own arguments."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", processes, *options]
    return [*launcher, ROOT / "train.py"]


def signal_rank_1(cwd, command: list, when: Path, signum: int) -> subprocess.CompletedProcess:
    """Start python `command` (torchrun of train.py), send `signum` to rank 1 alone once the file
    `when` exists, and wait for the launcher to end."""
    launcher = start_script(*command, cwd=cwd, env=clean_env())
    try:
        wait_for(when, launcher)
        os.kill(rank_pid(launcher.pid, 1), signum)
        out, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err)


def run_train(cwd, *args, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """train.py as a user starts it: plain python, or torchrun with --standalone (a free port)."""
    launcher = ["train.py"] if processes == 1 else torchrun(processes)
    # The timeout turns a hang (a collective that one process never joins) into a failure.
    return run_script(*launcher, *args, cwd=cwd, timeout=240, env=env or clean_env())


def files_under(folder) -> list[str]:
    """The files under folder; TensorBoard event files, named by time, host and pid, as one name
    (so two lists are equal when each run wrote as many)."""
    return sorted(
        re.sub(r"tfevents\..*", "tfevents.*", str(p.relative_to(folder)))
        for p in folder.rglob("*")
        if p.is_file()
    )


@pytest.fixture(scope="module")
def runs(facades, tmp_path_factory):
    """Two epochs (one step each) with 2 processes x batch 1, and with 1 process x batch 2; each
    stopped after epoch 1 once, its full latest.pt kept as epoch1_full.pt for `resumed`."""
    cwd = tmp_path_factory.mktemp("ddp")
    common = ["--data_root", str(facades), *TINY]
    for name, batch, processes in (("two", "1", 2), ("one", "2", 1)):
        first = run_train(
            cwd, *common, "--epochs", "1", "--name", name, "--batch_size", batch, processes=processes
        )
        assert first.returncode == 0, first.stderr[-3000:]
        shutil.copy(cwd / "checkpoints" / name / "latest.pt", cwd / f"{name}_epoch1_full.pt")
    common.extend(["--epochs", "2"])
    two = run_train(cwd, *common, "--name", "two", "--batch_size", "1", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_train(cwd, *common, "--name", "one", "--batch_size", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    return {"cwd": cwd, "two": two, "one": one}


def checkpoint(cwd, name: str, file: str = "epoch_001.pt") -> dict:
    return torch.load(cwd / "checkpoints" / name / file, weights_only=True)


def assert_same_weights(a: dict, b: dict, start: dict, lr: float) -> None:
    """The weights and BatchNorm averages of a and b agree far closer than the step they took from `start`.

    Adam's first steps move every weight by about lr whatever the gradient's size, so a gradient
    that is ~0 up to rounding can move a few weights by a fraction of lr differently; the whole
    update must still agree to 1e-3 of its size (measured: ~1e-4; without synchronised
    BatchNorm it is off by more than its own size).
    """
    for net in ("generator", "discriminator"):
        assert set(a[net]) == set(b[net]) and not any(key.startswith("module.") for key in a[net])
        for averages in (False, True):  # parameters, then BatchNorm's running averages
            keys = [k for k in a[net] if a[net][k].is_floating_point() and ("running_" in k) == averages]
            step = torch.cat([(b[net][k] - start[net][k]).flatten() for k in keys])
            apart = torch.cat([(a[net][k] - b[net][k]).flatten() for k in keys])
            assert step.norm() > 0, f"{net} did not move"
            assert apart.norm() < 1e-3 * step.norm(), (
                f"{net}: {apart.norm():.3g} apart, step {step.norm():.3g}"
            )
            if not averages:
                assert apart.abs().max() < 0.5 * lr, f"{net}: a weight is {apart.abs().max():.3g} apart"
        for key in a[net]:
            if not a[net][key].is_floating_point():  # BatchNorm's num_batches_tracked
                assert torch.equal(a[net][key], b[net][key]), key


def initial_weights(saved: dict) -> dict:
    """The weights before the first step: setup() seeds and initialises them the same everywhere."""
    state = setup(Config(**saved["config"]))
    return {"generator": state.G.state_dict(), "discriminator": state.D.state_dict()}


def losses(saved: dict) -> list[list[float]]:
    return [[row[name] for name in LOSS_NAMES] for row in saved["history"]["epochs"]]


def test_torchrun_leaves_exactly_one_set_of_outputs(runs):
    two, one, cwd = runs["two"], runs["one"], runs["cwd"]
    assert "batch 2, on cpu" in one.stdout and "global batch" not in one.stdout
    # Rank 0 alone prints: one start line with the global batch, one line per epoch.
    assert two.stdout.count("training two:") == 1
    assert "global batch 2 = 1 per process x 2 processes" in two.stdout
    assert two.stdout.count("resuming") == 1 and two.stdout.count("epoch 2/2  G_GAN") == 1
    assert two.stdout.count("done:") == 1
    # The same files as a single-process run, written once, with no temporary leftovers.
    for folder, expected in (("results", "samples/epoch_001.png"), ("checkpoints", "latest.pt")):
        written = files_under(cwd / folder / "two")
        assert expected in written and written == files_under(cwd / folder / "one")
        assert not [name for name in written if name.endswith(".tmp")]
    # One event file per process that trained the run (the first run and its resume): rank 0's.
    assert files_under(cwd / "results" / "two").count("tensorboard/events.out.tfevents.*") == 2
    saved = checkpoint(cwd, "two", "latest.pt")
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2 and saved["epoch"] == 2


def test_two_processes_take_the_step_of_one_process_with_the_double_batch(runs):
    two, one = checkpoint(runs["cwd"], "two"), checkpoint(runs["cwd"], "one")
    assert_same_weights(two, one, initial_weights(one), Config().lr)
    # The epoch's loss means are those over both processes' images.
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    # The sample grid (generated by rank 0 alone, BatchNorm in train mode) shows the same images.
    grids = [
        np.asarray(Image.open(runs["cwd"] / "results" / name / "samples" / "epoch_001.png"), dtype=int)[
            HEADER_HEIGHT:
        ]
        for name in ("two", "one")
    ]  # below the header, which names the run
    assert np.abs(grids[0] - grids[1]).max() <= 1


@pytest.fixture(scope="module")
def resumed(runs, facades):
    """Each epoch-1 checkpoint continued with the other process count.

    The 2-process one continues in 1 process for one more epoch. The 1-process one continues
    under torchrun for many epochs until SIGTERM reaches rank 1 alone (as when a scheduler or a
    person signals one process): rank 0 only learns of it when the processes agree to stop.
    """
    cwd = runs["cwd"]
    common = ["--data_root", str(facades), *TINY]
    single = run_train(
        cwd,
        *common,
        "--epochs",
        "2",
        "--name",
        "two_then_one",
        "--batch_size",
        "2",
        "--resume_from",
        str(cwd / "two_epoch1_full.pt"),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    command = [
        *torchrun(2),
        *common,
        *("--epochs", "500", "--name", "one_then_two", "--batch_size", "1"),
        *("--resume_from", str(cwd / "one_epoch1_full.pt")),
    ]
    double = signal_rank_1(
        cwd, command, cwd / "checkpoints" / "one_then_two" / "epoch_002.pt", signal.SIGTERM
    )
    return {"single": single, "double": double}


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The process id of one rank among torchrun's children (Linux /proc)."""
    for stat in sorted(Path("/proc").glob("[0-9]*/stat")):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no rank {rank} under process {launcher_pid}")


def test_checkpoints_resume_across_process_counts(runs, resumed):
    """The 2-process checkpoint continues in 1 process, the 1-process one under torchrun, alike."""
    single, double = resumed["single"], resumed["double"]
    assert double.returncode == 0, double.stderr[-3000:]
    assert "resuming" in single.stdout and "resuming" in double.stdout
    a, b = (checkpoint(runs["cwd"], name, "epoch_002.pt") for name in ("two_then_one", "one_then_two"))
    for saved in (a, b):
        assert [row["epoch"] for row in saved["history"]["epochs"]] == [1, 2]
    # Both took their second step from (nearly) the same weights, on the same two images: the step
    # that the uninterrupted 1-process run took.
    straight = checkpoint(runs["cwd"], "one", "epoch_002.pt")
    for resumed_run in (a, b):
        assert_same_weights(resumed_run, straight, checkpoint(runs["cwd"], "one"), Config().lr)
        np.testing.assert_allclose(losses(resumed_run), losses(straight), rtol=1e-4)


def test_a_signal_to_one_process_stops_all_with_a_checkpoint(runs, resumed):
    double = resumed["double"]
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("stopped;") == 1 and "run the same command to resume" in double.stdout
    saved = checkpoint(runs["cwd"], "one_then_two", "latest.pt")
    assert 2 <= saved["epoch"] < 500 and saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2


@pytest.mark.parametrize("device,backend", [("cpu", "gloo"), ("cuda", "nccl")])
def test_a_group_that_cannot_form_is_one_error_line(monkeypatch, capsys, device, backend):
    """RANK/WORLD_SIZE without a rendezvous address; --device cuda on a machine without a GPU."""
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "--device", device])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code in (1, 2) and len(errors) == 1 and backend in errors[0], errors
    assert not torch.distributed.is_initialized()


def test_launch_settings_are_checked(monkeypatch):
    with pytest.raises(distributed.DistributedError, match="RANK and LOCAL_RANK"):
        distributed.world_from_env({"WORLD_SIZE": "2"})
    assert distributed.world_from_env({}) == distributed.World()
    two = distributed.World(rank=1, local_rank=1, size=2)
    with pytest.raises(distributed.DistributedError, match="--device cuda:0: under torchrun"):
        distributed.rank_device("cuda:0", two)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device("auto", two) == torch.device("cpu")
    with pytest.raises(distributed.DistributedError, match="CUDA is not available"):
        distributed.rank_device("cuda", two)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(distributed.DistributedError, match="LOCAL_RANK 1, but this machine has 1 GPUs"):
        distributed.rank_device("cuda", two)
    assert distributed.rank_device("auto", distributed.World(rank=3, local_rank=0, size=4)) == torch.device(
        "cuda", 0
    )


def test_a_lost_process_is_one_error_line_per_rank(facades, tmp_path):
    """kill -9 of rank 1 in the middle of a run: rank 0 stops with one line saying it lost the other
    process, not a traceback of gloo (each rank's stderr as torchrun --redirects keeps it)."""
    # torchrun's agent stops the other workers 0.1 s after one dies (its --monitor-interval); a
    # longer interval lets rank 0 reach its next collective (steps of 0.1 s) and say what it found.
    options = ("--log-dir", str(tmp_path / "logs"), "--redirects", "3", "--monitor-interval", "5")
    command = [
        *torchrun(2, *options),
        *("--data_root", str(facades), *TINY, "--epochs", "500", "--name", "lost"),
    ]
    lost = signal_rank_1(
        tmp_path, command, tmp_path / "checkpoints" / "lost" / "epoch_002.pt", signal.SIGKILL
    )
    assert lost.returncode != 0
    (log,) = (tmp_path / "logs").rglob("attempt_0/0/stderr.log")
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    (line,) = [line for line in text.splitlines() if "error: " in line]
    assert "rank 0 lost contact with another process" in line and "resume" in line, line


def test_released_after_waits_until_nothing_else_holds_the_tensor():
    """The wait of settle_gloo, with an autograd graph that saves the tensor standing for gloo's
    worker thread: released once the graph is dropped (in another thread), not before."""
    weight = torch.ones(1, requires_grad=True)
    graph = []
    keep = graph.append  # the graph of `tensor * weight` holds `tensor` until it is dropped
    assert not distributed.released_after(lambda tensor: keep(tensor * weight), torch.zeros(1), 0.05)
    graph.clear()
    threading.Timer(0.05, graph.clear).start()
    assert distributed.released_after(lambda tensor: keep(tensor * weight), torch.zeros(1), 5)
    assert not graph
    assert distributed.released_after(lambda tensor: tensor + 1, torch.zeros(1), 0)


# The end of a torchrun run in miniature: DDP keeps gloo's threads alive past destroy_process_group,
# and the process exits right after its last all-reduce. Without settle_gloo about 2 launches in 5
# end with a process aborted ("terminate called without an active exception", on 2 cores).
SETTLE_SCRIPT = """
import torch, torch.distributed as dist
from torch import nn
from training import distributed
dist.init_process_group("gloo")
net = distributed.data_parallel(nn.Linear(3, 3), torch.device("cpu"))
for _ in range(3):
    dist.all_reduce(torch.ones(1))
print(distributed.settle_gloo(torch.device("cpu")))
dist.destroy_process_group()
"""


def test_processes_that_settle_gloo_exit_cleanly_after_their_last_all_reduce(tmp_path):
    script = tmp_path / "last_all_reduce.py"
    script.write_text(SETTLE_SCRIPT)
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script]
    for attempt in range(5):
        done = run_script(*launch, cwd=tmp_path, timeout=120, env=clean_env(PYTHONPATH=str(ROOT)))
        assert done.returncode == 0 and done.stdout.count("True") == 2, (
            attempt,
            done.stderr[-2000:],
        )
