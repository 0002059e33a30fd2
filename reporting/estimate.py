"""How long a run takes: the line said before its first step (`announce`), and the estimate made
while it trains (`RunEstimate`), refined at every iteration and every epoch's end.

A run's time is its steps plus its epochs' ends. The first steps of a process are slower than the
rest (kernels chosen and compiled, caches and the allocator filling), so the speed of the steps is
measured only once they have settled, over a rolling window that forgets the warm-up. An epoch's
end (validation, the report, handing checkpoints to the background writer, waiting for it) is
measured as it happens, and the last epoch's end also scores the whole val split and waits for its
files: both are added from what the earlier ends took. A process's first end waits for its own
files (train.py), so their writing time is known from the first epoch's line on; the files of
later ends are written while the next epoch trains, and the steps they slow are in the speed.
"""

from __future__ import annotations

import collections
import statistics
import time
from typing import Callable

import torch

from config import Config
from utils import cpu_has_fast_bf16

WARM_UP_ITERATIONS = 10  # never measured: the slow first steps of a process
SETTLE_BLOCK = 10  # the speed has settled when the medians of two such blocks of steps agree
SETTLE_TOLERANCE = 0.2  # ... within this fraction
SETTLE_BY = 100  # measured steps after which the speed counts as settled whatever it does
WINDOW = 200  # the rolling window of step durations the speed is the mean of
RECENT = 10  # epoch ends whose mean is the cost of the ends to come


def duration(seconds: float) -> str:
    """A time span as a person reads it: 45 s, 2.5 min, 12 min, 3.4 h, 2.1 days."""
    if seconds < 89.5:
        return f"{seconds:.0f} s"
    if seconds < 597:  # below ten minutes a whole minute is too coarse
        return f"{seconds / 60:.1f} min"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def recent_mean(values: list[float]) -> float | None:
    """The mean of the last RECENT values, leaving out the first one (a process's first
    validation and first writes are slower) once there are others; None for no values."""
    if not values:
        return None
    kept = values[1:] if len(values) > 1 else values
    return statistics.fmean(kept[-RECENT:])


class RunEstimate:
    """The time a run still takes, from what this process has measured so far.

    The caller says when things happen (`epoch_started`, `step`, `steps_ended`, `validated`,
    `wrote`, `waited_for_writes`); the clock (time.perf_counter unless given, a fake one in
    tests) times them.

    - Steps: the first `warm_up` steps are left out; the speed has settled once the medians of the
      last two blocks of `block` steps agree within `tolerance` (or after `settle_by` measured
      steps, or at the end of the process's first epoch), and what came before the last block is
      then forgotten. The speed is the mean step time over the last `window` steps.
    - An epoch's end: from its last step to the next epoch's first, measured for each end; its
      validation part (less the wait for the background writer), per validated pair.
    - The last epoch's end: the whole val split instead of the subset (the pairs more, at the
      measured seconds per pair), and the wait for its files (as long as an epoch's writes take).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        warm_up: int = WARM_UP_ITERATIONS,
        block: int = SETTLE_BLOCK,
        tolerance: float = SETTLE_TOLERANCE,
        settle_by: int = SETTLE_BY,
        window: int = WINDOW,
    ) -> None:
        self.clock, self.warm_up, self.block = clock, warm_up, block
        self.tolerance, self.settle_by = tolerance, settle_by
        self.durations: collections.deque[float] = collections.deque(maxlen=window)
        self.steps = 0  # steps this process has trained
        self.all_seconds = 0.0  # their time, warm-up included: the speed until any is measured
        self.settled = False
        self.last: float | None = None  # when the last step (or the epoch) began
        self.end_began: float | None = None  # when the current epoch's end began
        self.ends: list[float] = []  # seconds of each whole epoch's end
        self.validation_s: float | None = None  # the validation of the current end
        self.per_pair: list[float] = []  # validation seconds per pair, of each end that validated
        self.writes: list[float] = []  # background writing seconds of each epoch's files
        self.end_waited = 0.0  # seconds the current end waited for its own files

    # --- What happens ---

    def epoch_started(self) -> None:
        """An epoch's steps begin; the end before it, if any, is over."""
        now = self.clock()
        if self.end_began is not None:
            self.ends.append(now - self.end_began - self.end_waited)
            self.end_began, self.end_waited = None, 0.0
        self.validation_s = None
        self.last = now

    def step(self) -> bool:
        """After each step; True once: at the step where the speed has settled."""
        now = self.clock()
        began, self.last = self.last, now
        if began is None:  # no epoch_started: nothing to time this step from
            return False
        self.steps += 1
        self.all_seconds += now - began
        if self.steps <= self.warm_up:
            return False
        self.durations.append(now - began)
        if self.settled or not self._has_settled():
            return False
        self.settled = True
        return True

    def steps_ended(self) -> bool:
        """An epoch's steps are done and its end begins. True once, when this settles the speed:
        at the end of the first epoch that measured steps, however few (a short epoch)."""
        self.end_began = self.clock()
        if self.settled or not self.durations:
            return False
        self.settled = True
        return True

    def validated(self, pairs: int, waited_s: float = 0.0) -> None:
        """The end's validation is done: `pairs` scored (0: none this epoch), `waited_s` of its
        time spent waiting for the background writer (not validation)."""
        if self.end_began is None:
            return
        self.validation_s = max(self.clock() - self.end_began - waited_s, 0.0)
        if pairs > 0:
            self.per_pair.append(self.validation_s / pairs)

    def wrote(self, seconds: float) -> None:
        """The background writer spent `seconds` on one epoch's files."""
        self.writes.append(seconds)

    def waited_for_writes(self, seconds: float) -> None:
        """The current end waited `seconds` for its own files (a process's first end does): time
        counted in `writes`, so left out of the end's own."""
        self.end_waited += seconds

    def _has_settled(self) -> bool:
        measured = list(self.durations)
        if len(measured) >= self.settle_by:
            self._forget_before(self.block)
            return True
        if len(measured) < 2 * self.block:
            return False
        later = statistics.median(measured[-self.block :])
        earlier = statistics.median(measured[-2 * self.block : -self.block])
        if abs(later - earlier) > self.tolerance * later:
            return False
        # The earlier block may still hold a few slow steps (its median is a steady one); the
        # later block, after them, holds none.
        self._forget_before(self.block)
        return True

    def _forget_before(self, kept: int) -> None:
        while len(self.durations) > kept:
            self.durations.popleft()

    # --- What it says ---

    @property
    def seconds_per_iteration(self) -> float | None:
        """The steady step time: the window's mean; until a step is measured, the mean of all steps
        (warm-up included); None before any step."""
        if self.durations:
            return statistics.fmean(self.durations)
        return self.all_seconds / self.steps if self.steps else None

    @property
    def end_seconds(self) -> float | None:
        """What an epoch's end takes: the mean of the recent whole ends; before the first has
        ended, the validation of the current one; None before either."""
        return recent_mean(self.ends) if self.ends else self.validation_s

    @property
    def ends_known(self) -> bool:
        return self.end_seconds is not None

    def remaining(self, iterations: int, ends: int, whole_split_extra_pairs: int = 0) -> float | None:
        """Seconds to the end of the run: `iterations` steps, `ends` epoch ends, and, where the last
        epoch's end is still to come, `whole_split_extra_pairs` pairs it validates beyond an
        epoch's subset and the wait for its files. None before any step is timed."""
        per_iteration = self.seconds_per_iteration
        if per_iteration is None:
            return None
        seconds = per_iteration * iterations + (self.end_seconds or 0.0) * ends
        if ends > 0:  # the last end is to come
            seconds += (recent_mean(self.per_pair) or 0.0) * whole_split_extra_pairs
            seconds += recent_mean(self.writes) or 0.0
        return seconds


# ---------------------------------------------------------------------------------------------
# Before the first step
# ---------------------------------------------------------------------------------------------

# Seconds of one step of the default networks (256 px, batch 1) on 2-core CPUs, as measured in
# the README's table; a machine with more cores is faster.
CPU_STEP_SECONDS = {
    "native bf16": 0.33,  # AVX512-BF16 or AMX, in bf16
    "AVX-512": 0.6,  # in fp32
    "AVX2": 1.0,  # in fp32
}
# The settings a step's cost depends on: the table holds only for the defaults of these.
STEP_SHAPE = (
    "image_size",
    "batch_size",
    "ngf",
    "ndf",
    "n_layers_D",
    "num_downs",
    "norm",
    "input_nc",
    "output_nc",
)
FIRST_RUN = "python train.py --max_images 40 --epochs 2 --lr_decay_epochs 0 --name smoke"
FIRST_RUN_AFTER_S = 3600  # runs longer than this get the first run's command as well


def cpu_kind(device: torch.device, dtype: torch.dtype) -> str | None:
    """The CPU_STEP_SECONDS row of this device and precision; None for a GPU, or bf16 emulated."""
    if device.type != "cpu":
        return None
    if dtype == torch.bfloat16:
        return "native bf16" if cpu_has_fast_bf16() else None
    if dtype != torch.float32:
        return None
    return "AVX-512" if "AVX512" in torch.backends.cpu.get_cpu_capability() else "AVX2"


def table_step_seconds(cfg: Config, device: torch.device, dtype: torch.dtype, world_size: int = 1):
    """(seconds a step, the kind of CPU) from CPU_STEP_SECONDS where it applies to this run: one
    process on a CPU of a kind in the table, training the default networks; else None."""
    defaults = Config()
    kind = cpu_kind(device, dtype)
    same_step = all(getattr(cfg, name, None) == getattr(defaults, name, None) for name in STEP_SHAPE)
    if kind is None or world_size != 1 or not same_step:
        return None
    return CPU_STEP_SECONDS[kind], kind


def announce(
    cfg: Config,
    n_batches: int,
    done: int,
    device: torch.device,
    dtype: torch.dtype,
    world_size: int = 1,
) -> str:
    """The line before a run's first step: what it will do, and roughly how long on this kind of
    machine (from CPU_STEP_SECONDS, where it applies), saying that basis; the time measured here
    follows once the steps have settled. A long run that starts afresh also gets the command of a
    first short run. `done`: the iterations trained already (a resumed run)."""
    total = cfg.epochs * n_batches
    left = total - done
    steps = f"{total} steps" if done == 0 else f"{left} of its {total} steps still to go"
    what = f"the run: {cfg.epochs} epochs of {n_batches} iterations, {steps}, {validations(cfg)}"
    known = table_step_seconds(cfg, device, dtype, world_size)
    if known is None:
        return f"{what}; how long is measured here after the first steps"
    seconds, kind = known
    line = (
        f"{what}; roughly {duration(seconds * left)} of steps on a 2-core CPU with {kind} "
        f"(about {seconds} s a step there, more cores are faster; the time measured here follows "
        f"after the first steps)"
    )
    if done == 0 and seconds * left > FIRST_RUN_AFTER_S:
        line += f"; a first run of 80 steps to try things: {FIRST_RUN}"
    return line


def validations(cfg: Config) -> str:
    if not cfg.val_every:
        return "no validation"
    if cfg.val_every == 1:
        return "a validation after each epoch"
    return f"a validation every {cfg.val_every} epochs and after the last"
