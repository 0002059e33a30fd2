"""The time a run takes (reporting/estimate.py): the arithmetic of RunEstimate on a fake clock,
the line before the first step, and the lines a run says with them. Nothing here is timed."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from conftest import tiny_run

import train
from config import Config
from reporting import estimate
from reporting import reporter as report
from reporting.estimate import RunEstimate, announce


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class SimulatedRun:
    """A run as the clock sees it: slow first steps, steady ones after, and epoch ends of a
    validation (seconds per pair), the rest of the end, and, after the last epoch, the whole split
    and the wait for the last files."""

    epochs: int = 4
    iterations: int = 50
    slow_steps: int = 20
    slow_s: float = 1.0  # 3x the steady step: the warm-up that made early estimates high
    step_s: float = 0.3
    subset_pairs: int = 20
    split_pairs: int = 100
    per_pair_s: float = 0.03
    rest_of_end_s: float = 1.5  # report, copies for the writer, waiting for it
    writes_s: float = 2.0  # the writer's time on one epoch's files

    def step_seconds(self, step: int) -> float:
        return self.slow_s if step <= self.slow_steps else self.step_s

    def end_seconds(self, last: bool) -> float:
        if last:
            return self.split_pairs * self.per_pair_s + self.rest_of_end_s + self.writes_s
        return self.subset_pairs * self.per_pair_s + self.rest_of_end_s

    def total_after(self, epoch: int) -> float:
        """The true seconds from the validation of epoch `epoch` (1-based) to the end of the run."""
        rest_of_this_end = self.rest_of_end_s + (self.writes_s if epoch == self.epochs else 0.0)
        later = range(epoch + 1, self.epochs + 1)
        return rest_of_this_end + sum(
            self.iterations * self.step_s + self.end_seconds(e == self.epochs) for e in later
        )


def play(run: SimulatedRun, until_epoch: int) -> tuple[RunEstimate, FakeClock, list[int]]:
    """Feed a RunEstimate the run's events up to the validation of epoch `until_epoch`; returns
    it, the clock and the steps at which it said the speed had settled."""
    clock, settled_at, step = FakeClock(), [], 0
    est = RunEstimate(clock=clock)
    for epoch in range(1, until_epoch + 1):
        est.epoch_started()
        for _ in range(run.iterations):
            step += 1
            clock.advance(run.step_seconds(step))
            if est.step():
                settled_at.append(step)
        est.steps_ended()
        last = epoch == run.epochs
        pairs = run.split_pairs if last else run.subset_pairs
        clock.advance(pairs * run.per_pair_s)
        est.validated(pairs)
        if epoch == 1:  # the first end waits for its own files before its line
            clock.advance(run.writes_s)
            est.waited_for_writes(run.writes_s)
            est.wrote(run.writes_s)
        elif epoch > 2:
            est.wrote(run.writes_s)  # the previous epoch's files, written meanwhile
        if epoch < until_epoch:
            clock.advance(run.rest_of_end_s)
    return est, clock, settled_at


def remaining_at_epoch_line(est: RunEstimate, run: SimulatedRun, epoch: int) -> float:
    """What the reporter asks at the line of epoch `epoch`: the epochs to come, whole."""
    left = run.epochs - epoch
    return est.remaining(left * run.iterations, left, run.split_pairs - run.subset_pairs)


def test_durations_read_as_a_person_says_them():
    assert [estimate.duration(s) for s in (45, 89.6, 148, 599, 600, 5000, 5400, 200000)] == [
        "45 s",
        "1.5 min",
        "2.5 min",
        "10 min",
        "10 min",
        "83 min",
        "1.5 h",
        "2.3 days",
    ]


def test_the_warm_up_is_left_out_and_forgotten_once_the_speed_settles():
    run = SimulatedRun()
    est, _, settled_at = play(run, until_epoch=1)
    # Steps 11-20 are measured; at step 36 the medians of steps 17-26 (4 slow ones) and 27-36
    # agree: settled, with what came before step 27 forgotten.
    assert settled_at == [36]
    assert est.seconds_per_iteration == pytest.approx(run.step_s)


def test_the_remaining_time_at_each_epoch_line_is_the_true_one():
    """Steps at the steady speed, each end as measured, and the last end's whole split and
    final writes: with steady parts the estimate is exact, from the second epoch line on."""
    run = SimulatedRun()
    for epoch in range(2, run.epochs):
        est, _, _ = play(run, until_epoch=epoch)
        assert remaining_at_epoch_line(est, run, epoch) == pytest.approx(
            run.total_after(epoch) - run.rest_of_end_s, rel=1e-9
        ), epoch


def test_the_first_epoch_line_counts_its_validation_for_each_end_to_come():
    """Before any end is whole, an end is taken to cost its validation: the estimate is then
    low by the rest of each end, and within 20 % of the truth here. The first end's files are
    written before its line, so the last end's writes are counted from the first line on."""
    run = SimulatedRun()
    est, _, _ = play(run, until_epoch=1)
    assert est.end_seconds == pytest.approx(run.subset_pairs * run.per_pair_s)
    assert est.writes == [run.writes_s]
    estimated, true = remaining_at_epoch_line(est, run, 1), run.total_after(1) - run.rest_of_end_s
    assert estimated < true and estimated == pytest.approx(true, rel=0.2)


def test_a_slow_first_end_is_left_out_once_others_are_measured():
    clock = FakeClock()
    est = RunEstimate(clock=clock)
    for end_s in (10.0, 3.0, 4.0):
        est.epoch_started()
        est.steps_ended()
        clock.advance(end_s)
    est.epoch_started()
    assert est.ends == [10.0, 3.0, 4.0] and est.end_seconds == pytest.approx(3.5)


def test_a_first_end_that_waits_for_its_own_files_is_measured_without_the_wait():
    clock = FakeClock()
    est = RunEstimate(clock=clock)
    est.epoch_started()
    clock.advance(0.5)
    est.step()
    est.steps_ended()
    clock.advance(2.0)  # validation, report, copies for the writer
    clock.advance(5.0)
    est.waited_for_writes(5.0)
    est.wrote(5.0)
    est.epoch_started()
    assert est.ends == [pytest.approx(2.0)] and est.writes == [5.0]
    assert est.remaining(0, 1) == pytest.approx(2.0 + 5.0)  # a last end: its work and its files


def test_the_wait_for_the_writer_is_not_validation():
    clock = FakeClock()
    est = RunEstimate(clock=clock)
    est.epoch_started()
    est.steps_ended()
    clock.advance(5.0)
    est.validated(pairs=10, waited_s=3.0)
    assert est.validation_s == pytest.approx(2.0) and est.per_pair == [pytest.approx(0.2)]
    est.validated(pairs=0)  # an epoch without validation: no seconds per pair from it
    assert len(est.per_pair) == 1


def test_a_short_epoch_settles_the_speed_at_its_end_and_nothing_is_known_before_a_step():
    clock = FakeClock()
    est = RunEstimate(clock=clock, warm_up=2)
    assert est.remaining(100, 2) is None and est.seconds_per_iteration is None
    est.epoch_started()
    for seconds in (2.0, 1.0, 0.5, 0.5):
        clock.advance(seconds)
        assert not est.step()
    assert est.steps_ended()  # the speed counts as settled with what was measured
    assert not est.steps_ended()  # once
    assert est.seconds_per_iteration == pytest.approx(0.5)
    assert est.remaining(10, 0) == pytest.approx(5.0)  # no end left: no end, no whole split


def test_before_any_step_is_measured_the_warm_up_steps_give_the_speed():
    clock = FakeClock()
    est = RunEstimate(clock=clock)
    est.epoch_started()
    for _ in range(4):
        clock.advance(2.0)
        est.step()
    assert est.seconds_per_iteration == pytest.approx(2.0)


def test_a_speed_that_never_settles_counts_as_settled_after_settle_by_steps():
    clock = FakeClock()
    est = RunEstimate(clock=clock, warm_up=0, block=5, settle_by=30)
    est.epoch_started()
    settled = []
    for step in range(1, 41):
        clock.advance(1.0 if step % 2 else 3.0)  # alternating: medians of blocks of 5 differ
        if est.step():
            settled.append(step)
    assert settled == [30] and est.seconds_per_iteration == pytest.approx(2.0, rel=0.1)


# ---------------------------------------------------------------------------------------------
# Before the first step
# ---------------------------------------------------------------------------------------------


def test_the_announcement_of_the_recipe_on_a_native_bf16_cpu_says_its_basis(monkeypatch):
    monkeypatch.setattr(estimate, "cpu_has_fast_bf16", lambda: True)
    line = announce(Config(), 400, 0, torch.device("cpu"), torch.bfloat16)
    assert line.startswith(
        "the run: 200 epochs of 400 iterations, 80000 steps, a validation after each epoch;"
    )
    assert "roughly 7.3 h of steps on a 2-core CPU with native bf16 (about 0.33 s a step there" in line
    assert line.endswith(f"a first run of 80 steps to try things: {estimate.FIRST_RUN}")


def test_the_announcement_guesses_nothing_it_has_no_figure_for(monkeypatch):
    monkeypatch.setattr(estimate, "cpu_has_fast_bf16", lambda: False)
    measured = "how long is measured here after the first steps"
    tiny = Config(image_size=32, ngf=8, ndf=8, epochs=2, val_every=0)
    assert announce(tiny, 4, 0, torch.device("cpu"), torch.float32) == (
        f"the run: 2 epochs of 4 iterations, 8 steps, no validation; {measured}"
    )
    for device, dtype in (("cuda", torch.bfloat16), ("cpu", torch.bfloat16)):  # a GPU; emulated bf16
        assert announce(Config(), 400, 0, torch.device(device), dtype).endswith(measured)
    assert announce(Config(), 400, 0, torch.device("cpu"), torch.float32, world_size=2).endswith(measured)


def test_a_resumed_run_is_announced_with_the_steps_to_go_and_no_first_run(monkeypatch):
    monkeypatch.setattr(estimate.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    line = announce(Config(val_every=5), 400, 60000, torch.device("cpu"), torch.float32)
    assert "20000 of its 80000 steps still to go, a validation every 5 epochs and after the last" in line
    assert "roughly 5.6 h of steps on a 2-core CPU with AVX2" in line and "first run" not in line


# ---------------------------------------------------------------------------------------------
# In a run
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    return tiny_run(synthetic_split, tmp_path, tensorboard="false")


def test_a_run_announces_itself_and_says_its_settled_speed_once(tiny, monkeypatch, capsys):
    # Settles at its third step whatever the steps take: the line's wiring, not its numbers.
    settle_at_once = functools.partial(RunEstimate, warm_up=1, block=1, tolerance=1e9)
    monkeypatch.setattr(report, "RunEstimate", settle_at_once)
    train.train(tiny)
    lines = capsys.readouterr().out.splitlines()
    announced = [i for i, line in enumerate(lines) if line.startswith("the run: 2 epochs of 4 iterations")]
    speed = [i for i, line in enumerate(lines) if line.startswith("at ") and "s per iteration here" in line]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2"))
    assert len(announced) == 1 and len(speed) == 1 and announced[0] < speed[0] < first_epoch
    assert "s per iteration here, the run's 8 iterations take about" in lines[speed[0]]
    assert "(the steady speed, after 3 steps; the epoch lines add" in lines[speed[0]]
    assert ", about " in lines[first_epoch] and lines[first_epoch].endswith(" left")
    assert not lines[first_epoch + 1 :][-1].endswith(" left")  # nothing is left after the last epoch
