"""tools/long_run.sh: the whole procedure of a long run on a tiny one in a temporary RUN_DIR (started
and followed, stopped, its snapshots scored on the test split in both modes, the results page
written), and its one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_NETWORKS, cli_flags, require_fid, write_pair

SCRIPT = ROOT / "tools" / "long_run.sh"
REAL_RUN = Path.home() / "pix2pix-runs"  # the script's default RUN_DIR: never the one of a test
# What makes the run tiny and quick; the rest is the default recipe, as the script runs it.
TINY = cli_flags(
    **TINY_NETWORKS, num_samples=1, log_every=2, save_every=1, val_fid="false", tensorboard="false", threads=1
)


def long_run(action: str, run_dir: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """bash tools/long_run.sh ACTION RUN_DIR args, its output captured as text."""
    assert Path(run_dir).resolve() != REAL_RUN.resolve(), "a test names its own RUN_DIR"
    command = ["bash", str(SCRIPT), action, str(run_dir), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def training_pid(run_dir: Path) -> int | None:
    """The pid in RUN_DIR/train.pid while that process is still this run's (its command line names
    RUN_DIR: train.py's, or for a moment after `start` the script's copy that becomes it), not a
    reused pid."""
    try:
        pid = int((run_dir / "train.pid").read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return None
    return pid if str(run_dir).encode() in command else None


def stop_leftover(run_dir: Path) -> None:
    """Kill a training still running in RUN_DIR (a failed test's), with its process group: the
    script starts it under setsid, so its pid is the group's."""
    pid = training_pid(run_dir)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not yet in a group of its own
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while training_pid(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_until_stopped(run_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Wait for the training to end, then poll `status` until it says "not running"; its last
    answer. (`status` imports torch: polled all along, it would slow the nice 19 training.)"""
    deadline = time.monotonic() + timeout
    while training_pid(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    while True:
        status = long_run("status", run_dir)
        if status.stdout.startswith("not running"):
            return status
        assert time.monotonic() < deadline, f"still running after {timeout} s: {status.stdout}"
        time.sleep(0.5)


def make_data(root: Path) -> tuple[Path, Path]:
    """A data root of 4 train and 2 val pairs (40 px, B = 255 - A), and another of 3 test pairs
    (FID needs two or more), so that evaluate needs --data_root: (training root, test root)."""
    rng = np.random.default_rng(0)
    for folder, count in (
        (root / "data" / "train", 4),
        (root / "data" / "val", 2),
        (root / "test_root" / "test", 3),
    ):
        folder.mkdir(parents=True)
        for i in range(count):
            a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            write_pair(folder / f"{i + 1}.png", a, 255 - a)
    return root / "data", root / "test_root"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch tiny run started with `start` and waited for: (RUN_DIR, start's output, the last
    status, the test data root)."""
    base = tmp_path_factory.mktemp("long_run")
    data, test_root = make_data(base)
    run_dir = base / "run"
    try:
        started = long_run("start", run_dir, "--data_root", data, "--epochs", 2, *TINY)
        status = wait_until_stopped(run_dir)
        yield run_dir, started, status, test_root
    finally:
        stop_leftover(run_dir)


@pytest.fixture(scope="module")
def evaluated_run(finished_run):
    """finished_run with epoch 2 scored by `evaluate` (the test split from --data_root): (RUN_DIR,
    evaluate's output)."""
    require_fid()
    run_dir, _, _, test_root = finished_run
    return run_dir, long_run("evaluate", run_dir, 2, "--data_root", test_root)


@pytest.fixture
def run_dir(tmp_path):
    """A RUN_DIR of the test's own; a training left running in it is killed at the end."""
    yield tmp_path / "run"
    stop_leftover(tmp_path / "run")


def test_start_records_the_stretch_and_status_says_the_epoch(finished_run):
    run_dir, started, status, _ = finished_run
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(
        rf"started \(pid \d+\): tail -f {run_dir}/results/facades/train\.log\n", started.stdout
    )
    assert status.returncode == 0 and status.stdout == "not running\nlatest.pt: epoch 2\n"
    console = (run_dir / "console.log").read_text()
    assert "epoch 2/2" in console and "done:" in console and "Traceback" not in console
    checkpoints = run_dir / "checkpoints" / "facades"
    assert {p.name for p in checkpoints.glob("*.pt")} >= {"latest.pt", "epoch_001.pt", "epoch_002.pt"}
    # One stretch, from epoch 0, on this machine's CPU as lscpu names it.
    cpu = re.search(
        r"^Model name: *(.*)$", subprocess.run(["lscpu"], capture_output=True, text=True).stdout, re.M
    )
    line, end = (run_dir / "stretches.log").read_text().splitlines()
    found = re.fullmatch(
        r"start \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ epoch 0 cpu (.*) \| family \S* model \S* \| torch\.\w+", line
    )
    assert found, line
    assert found[1] == (cpu[1] if cpu else "")
    # It finished by itself: status recorded its end, at the time latest.pt was last saved.
    saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((checkpoints / "latest.pt").stat().st_mtime))
    assert end == f"end {saved} epoch 2"
    assert long_run("status", run_dir).returncode == 0
    assert len((run_dir / "stretches.log").read_text().splitlines()) == 2  # recorded once


@pytest.mark.slow  # FID: the Inception network on the CPU, twice
def test_evaluate_scores_both_modes_then_skips_them(evaluated_run):
    run_dir, done = evaluated_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["eval_mode false", "eval_mode true"]
    for mode, line in zip(("false", "true"), lines):
        out = run_dir / "eval" / f"epoch_002_eval_{mode}"
        report = json.loads((out / "metrics.json").read_text())
        assert report["epoch"] == 2 and report["images"] == 3 and report["eval_mode"] is (mode == "true")
        assert report["mean"]["FID"] > 0 and report["mean"]["FID_images"] == 3
        # The printed line is predict.py's metrics line, the same numbers as metrics.json.
        assert f"FID {report['mean']['FID']:.1f} over 3 images" in line and "(means of 3 images)" in line
        assert {"1.png", "2.png", "3.png", "index.html"} <= {p.name for p in out.iterdir()}
        assert line.split(": ", 1)[1] in (run_dir / "eval" / f"epoch_002_eval_{mode}.log").read_text()
    # Once scored, a mode is not scored again.
    stamps = [p.stat().st_mtime_ns for p in sorted((run_dir / "eval").glob("*/metrics.json"))]
    again = long_run("evaluate", run_dir, 2)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"eval_mode {mode}: {run_dir}/eval/epoch_002_eval_{mode}/metrics.json exists, skipped"
        for mode in ("false", "true")
    ]
    assert [p.stat().st_mtime_ns for p in sorted((run_dir / "eval").glob("*/metrics.json"))] == stamps


@pytest.mark.slow  # the evaluated_run it writes up
def test_page_lists_the_evaluated_epoch_in_both_modes(evaluated_run, tmp_path):
    run_dir, _ = evaluated_run
    committed = (ROOT / "docs" / "results.md").read_bytes()
    figures, output = tmp_path / "figures", tmp_path / "page" / "results.md"
    done = long_run("page", run_dir, "--figures", figures, "--output", output)
    assert done.returncode == 0, done.stderr
    assert (ROOT / "docs" / "results.md").read_bytes() == committed, "the options given win over the defaults"
    page = output.read_text()
    assert "**Finished: 2 epochs**" in page
    rows = [line for line in page.splitlines() if re.match(r"\| \d+ \| (paper|eval_mode)", line)]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| 2", "paper (eval_mode false)"],
        ["| 2", "eval_mode true"],
    ]
    assert {"fid_by_epoch.png", "test_examples.jpg", "grid_epoch_001.jpg"} <= {
        p.name for p in figures.iterdir()
    }
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
    assert links and all((output.parent / link).is_file() for link in links), links


def test_a_mode_that_fails_stops_with_predicts_error(finished_run):
    """Without --data_root, the run's own data root has no test split: predict.py's error line, and
    the other mode is not tried."""
    run_dir, _, _, _ = finished_run
    done = long_run("evaluate", run_dir, 1)
    log = run_dir / "eval" / "epoch_001_eval_false.log"
    assert done.returncode == 1 and done.stdout == ""
    error = log.read_text().splitlines()[-1]  # no such split folder (or no FID package)
    assert error.startswith("error: ") and done.stderr == f"eval_mode false: {error} (all of it in {log})\n"
    assert not (run_dir / "eval" / "epoch_001_eval_true.log").exists(), "the first failure stops it"


def test_a_missing_epoch_is_one_line(run_dir):
    done = long_run("evaluate", run_dir, 7)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {run_dir}/checkpoints/facades/epoch_007.pt: no such checkpoint file\n"
    assert not run_dir.exists(), "nothing is written"


@pytest.mark.parametrize("args", [("evaluate",), ("evaluate", "ten"), ("again",)])
def test_a_wrong_command_is_the_usage(run_dir, args):
    done = long_run(args[0], run_dir, *args[1:])
    assert done.returncode == 2 and done.stdout.startswith("usage: tools/long_run.sh start [RUN_DIR]")
    assert "evaluate RUN_DIR EPOCH [predict.py options...]" in done.stdout and not run_dir.exists()


@pytest.mark.slow  # a training process stopped as by Ctrl-C
def test_stop_saves_latest_pt_and_records_the_stop(synthetic_split, run_dir):
    data = synthetic_split(n=4, size=40).parent
    synthetic_split(n=2, size=40, name="val")
    started = long_run("start", run_dir, "--data_root", data, "--epochs", 1000, *TINY)
    assert started.returncode == 0, started.stderr
    console, deadline = run_dir / "console.log", time.monotonic() + 120
    while "epoch 1/1000" not in (console.read_text() if console.exists() else ""):  # it trains
        assert training_pid(run_dir) is not None, console.read_text()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.2)
    stopped = long_run("stop", run_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert "run the same command to resume" in stopped.stdout and "latest.pt" in stopped.stdout
    assert training_pid(run_dir) is None and not (run_dir / "train.pid").exists()
    status = long_run("status", run_dir)
    epoch = int(re.fullmatch(r"not running\nlatest\.pt: epoch (\d+)\n", status.stdout)[1])
    assert 1 <= epoch < 1000
    start, stop = (run_dir / "stretches.log").read_text().splitlines()
    assert start.startswith("start ") and " epoch 0 cpu " in start
    assert re.fullmatch(rf"stop \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ epoch {epoch}", stop), stop
    again = long_run("stop", run_dir)
    assert again.returncode == 1 and again.stdout == "not running\n"


def test_a_pid_file_naming_another_process_is_not_the_run(run_dir):
    """A run that ended by itself leaves train.pid; once its pid belongs to another process, that
    process is neither reported as the run nor sent Ctrl-C."""
    run_dir.mkdir()
    (run_dir / "train.pid").write_text(f"{os.getpid()}\n")  # this test's own process: alive
    status = long_run("status", run_dir)
    assert status.stdout.splitlines()[0] == "not running"
    stopped = long_run("stop", run_dir)
    assert stopped.returncode == 1 and stopped.stdout == "not running\n"  # and this process lives on


def test_evaluate_beside_the_training_says_to_stop_it_first(run_dir):
    """While the run trains, evaluate says first that stopping it scores faster, then scores as
    usual (here: an unreadable snapshot, predict.py's error line)."""
    snapshots = run_dir / "checkpoints" / "facades"
    snapshots.mkdir(parents=True)
    (snapshots / "epoch_001.pt").write_bytes(b"not a checkpoint")
    # A stand-in whose command line reads like the run's train.py.
    run_args = ["train.py", "--checkpoint_dir", f"{run_dir}/checkpoints"]
    stand_in = subprocess.Popen(["python", "-c", "import time; time.sleep(120)", *run_args])
    try:
        (run_dir / "train.pid").write_text(f"{stand_in.pid}\n")
        done = long_run("evaluate", run_dir, 1)
    finally:
        stand_in.kill()
        stand_in.wait()
    note, error = done.stderr.splitlines()
    assert note == (
        f"note: the run is training (pid {stand_in.pid}): scoring beside it takes several times longer; "
        f"for the quickest score, tools/long_run.sh stop {run_dir} first and start it again after"
    )
    assert done.returncode == 1 and error.startswith("eval_mode false: error: ") and "epoch_001.pt" in error


def test_a_stretch_that_saved_nothing_gets_no_end(run_dir):
    # Its process gone before latest.pt was first written: no time to end at, so the stretch stays open.
    run_dir.mkdir()
    record = "start 2026-12-06T01:00:00Z epoch 0 cpu AMD EPYC | family 25 model 17 | torch.bfloat16\n"
    (run_dir / "stretches.log").write_text(record)
    status = long_run("status", run_dir)
    assert status.returncode == 0 and status.stdout == "not running\nlatest.pt: epoch 0\n"
    assert (run_dir / "stretches.log").read_text() == record
