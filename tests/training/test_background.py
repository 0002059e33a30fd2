"""The background writer (background.py): its order, its errors, its copies, and when latest.pt
is due (the runs that use it, killed at each of its writes: test_resume.py); and the run's
control around it (run_control.py): the lock file's life, and moving an old run aside."""

import os
import threading

import pytest
import torch

from training import run_control
from training.background import BackgroundWriter, LatestSchedule, cpu_copy
from utils import OutputError


def test_jobs_run_in_order_and_all_are_done_when_the_block_ends():
    done = []
    with BackgroundWriter() as writer:
        for i in range(5):
            writer.submit(lambda i=i: done.append(i))
    assert done == [0, 1, 2, 3, 4]


def test_a_failed_job_drops_the_jobs_behind_it_and_its_error_comes_at_the_next_wait():
    """latest.pt, given last, is then never written after a failed snapshot; the error is raised
    in the training thread, once, and the writer goes on afterwards."""
    done, release = [], threading.Event()

    def fail() -> None:
        raise OutputError("cannot write best.pt: disk full")

    writer = BackgroundWriter()
    writer.submit(release.wait)  # the jobs below are all queued before any runs
    writer.submit(fail)
    writer.submit(lambda: done.append("latest.pt"))
    release.set()
    with pytest.raises(OutputError, match="cannot write best.pt"):
        writer.wait()
    assert done == []
    with writer:
        writer.submit(lambda: done.append("next"))
    assert done == ["next"]


def test_a_write_error_is_raised_when_the_block_ends():
    def fail() -> None:
        raise OutputError("cannot write history.csv: read-only file system")

    with pytest.raises(OutputError, match="history.csv"):
        with BackgroundWriter() as writer:
            writer.submit(fail)


def test_the_run_s_own_error_wins_and_the_copies_are_still_written():
    done = []
    with pytest.raises(ValueError, match="the run's error"):
        with BackgroundWriter() as writer:
            writer.submit(lambda: done.append("epoch_001.pt"))
            raise ValueError("the run's error")
    assert done == ["epoch_001.pt"]


def test_copies_do_not_change_with_the_state():
    weight, moments = torch.ones(3), {"exp_avg": torch.zeros(2)}
    state = {"generator": {"w": weight}, "opt": {"state": [moments]}, "history": {"epochs": [{"epoch": 1}]}}
    copy = cpu_copy(state)
    weight.add_(1)
    moments["exp_avg"].add_(1)
    state["history"]["epochs"].append({"epoch": 2})
    state["history"]["epochs"][0]["epoch"] = 7
    assert torch.equal(copy["generator"]["w"], torch.ones(3))
    assert torch.equal(copy["opt"]["state"][0]["exp_avg"], torch.zeros(2))
    assert copy["history"] == {"epochs": [{"epoch": 1}]}


@pytest.mark.parametrize(
    "every_s,have_one,due",
    [(0, True, True), (3600, False, True), (3600, True, False)],
)
def test_latest_is_due_every_epoch_with_0_at_a_run_without_one_and_else_after_every_s(every_s, have_one, due):
    schedule = LatestSchedule(every_s, have_one)
    assert schedule.due() == due
    schedule.written()
    assert schedule.due() == (every_s == 0)


# ---------------------------------------------------------------------------------------------
# The run's lock (run_control.run_lock)
# ---------------------------------------------------------------------------------------------


def lock_file(tmp_path):
    return tmp_path / "ck" / ".run.lock"


def test_the_lock_file_is_there_while_the_run_holds_it_and_gone_after(tmp_path):
    checkpoints = tmp_path / "ck" / "run"
    with run_control.run_lock(checkpoints):
        assert lock_file(tmp_path).read_text().startswith(f"process {os.getpid()} ")
        with pytest.raises(run_control.RunLockError, match=f"being trained by process {os.getpid()}"):
            with run_control.run_lock(checkpoints):
                pass
        assert lock_file(tmp_path).exists(), "a refused second holder leaves the holder's file alone"
    assert not lock_file(tmp_path).exists()


def test_the_lock_file_is_removed_after_a_failed_start_and_left_by_a_killed_one_is_reused(tmp_path):
    lock_file(tmp_path).parent.mkdir(parents=True)
    lock_file(tmp_path).write_text("process 1 (since a kill -9)\n")  # unlocked: its process is gone
    with pytest.raises(OSError, match="offline"):
        with run_control.run_lock(tmp_path / "ck" / "run"):
            raise OSError("offline: the data cannot be downloaded")
    assert not lock_file(tmp_path).exists()


def test_a_lock_taken_on_a_file_just_removed_by_its_holder_is_taken_again_on_the_new_one(
    tmp_path, monkeypatch
):
    """The race of a release: this process opened the file, its holder then removed it and let go,
    and the lock this process then takes is on a file no longer named: it must open the name
    again, or two processes (the other on a new file of that name) would both hold the run."""
    real_acquire, removed = run_control._acquire, []

    def acquire(handle, checkpoints):
        if not removed:  # the previous holder's release, between this open and this lock
            removed.append(os.fstat(handle.fileno()).st_ino)
            lock_file(tmp_path).unlink()
            lock_file(tmp_path).write_text("process 2 (a newcomer)\n")
        real_acquire(handle, checkpoints)

    monkeypatch.setattr(run_control, "_acquire", acquire)
    with run_control.run_lock(tmp_path / "ck" / "run"):
        held = lock_file(tmp_path)
        assert os.stat(held).st_ino != removed[0] and held.read_text().startswith(f"process {os.getpid()} ")
    assert not lock_file(tmp_path).exists()


def test_the_lock_file_is_not_removed_once_it_is_no_longer_this_processs(tmp_path):
    with run_control.run_lock(tmp_path / "ck" / "run"):
        lock_file(tmp_path).unlink()
        lock_file(tmp_path).write_text("another file under the name\n")
    assert lock_file(tmp_path).read_text() == "another file under the name\n"


# ---------------------------------------------------------------------------------------------
# Moving an old run aside
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_bytes,text",
    [(80, "80 bytes"), (12_345, "12 kB"), (686_000_000, "686 MB"), (5_490_000_000, "5.5 GB")],
)
def test_sizes_read_as_a_person_says_them(n_bytes, text):
    assert run_control.size_text(n_bytes) == text


def test_a_run_moved_aside_is_said_with_its_size_and_left_to_the_user(tmp_path):
    old = tmp_path / "ck" / "run"
    (old / "sub").mkdir(parents=True)
    (old / "latest.pt").write_bytes(b"x" * 3000)
    (old / "sub" / "a.png").write_bytes(b"x" * 2000)
    (old / "link").symlink_to(old / "latest.pt")  # counted as the link it is, not its target
    (moved,) = run_control.move_aside(old, tmp_path / "res" / "run")  # no results folder: one move
    assert not old.exists() and moved.name.startswith("run.old-")
    assert run_control.folder_size(moved) == 5000 + len(str(old / "latest.pt"))
    line = run_control.aside_line(moved, "--resume false")
    assert line.startswith(f"--resume false: the previous run's files in {old} are now in {moved} (5 kB); ")
    assert line.endswith("nothing deletes them: remove that folder when you no longer need it")
