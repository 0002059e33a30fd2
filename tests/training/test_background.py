"""The background writer (background.py): its order, its errors, its copies, and when latest.pt
is due. (The runs that use it, killed at each of its writes: test_resume.py.)"""

import threading

import pytest
import torch

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
