"""What a training run reports as it goes: the console (progress bar or plain lines, the estimated
time of the run), TensorBoard event files (written by reporting/tensorboard.py), and each epoch's
pictures and pages (drawn by reporting/figures.py). What it records of itself, train.log and
config.json, is reporting/runlog.py's."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

import torch

from evaluation.generate import translate_pairs
from evaluation.metrics import MissingPackageError
from files.writing import write_text
from reporting.estimate import RunEstimate, announce, duration
from reporting.figures import plot_curves, save_sample_grid, write_csv, write_gallery
from reporting.runlog import RunLog, run_record
from reporting.tensorboard import TensorBoardLog
from training.background import BackgroundWriter, cpu_copy
from training.preflight import TENSORBOARD_HINT, check_tensorboard
from training.run_control import size_text
from training.state import RunDirs
from training.validation import sample_indices, subset

# ---------------------------------------------------------------------------------------------
# The run's reporter: console, files
# ---------------------------------------------------------------------------------------------

VAL_NAMES = ("val_L1", "val_PSNR", "val_SSIM")  # history columns of the validation pass
FID_NAMES = ("val_FID", "val_KID")
PLAIN_PROGRESS_SECONDS = 30.0  # without a terminal: a progress line at most this often


class Reporter:
    """What a training run shows and writes besides checkpoints: the console (a progress bar on
    a terminal, else a plain progress line now and then; one line per epoch), train.log (through
    `log`, a RunLog), results/<name>/ (config.json, samples/epoch_NNN.png, history.csv, loss.png,
    metrics.png, index.html) and results/<name>/tensorboard/. Under torchrun only rank 0
    reports; elsewhere every method does nothing."""

    def __init__(
        self, state, folder: Path, n_pairs: int, log: RunLog | None = None, val_pairs: int | None = None
    ) -> None:
        self.folder, self.active = Path(folder), state.world.is_main
        self.loss_names = state.history.loss_names
        self.val_pairs = val_pairs  # the val split's size, for the last line
        self.log = log or RunLog(active=False)
        self.bar, self.tensorboard, self.n_batches = None, None, 0
        # Where the progress goes: the real stderr, past the log (its frames are no lines).
        self.console = self.log.console_err if self.log.active else sys.stderr
        self.last_line = self.epoch_started = 0.0
        self.epoch_start_iteration = 0
        self.estimate = RunEstimate()  # the time the run still takes, as this process measures it
        # The background writer (known from the first epoch's end on), and its wait and busy
        # seconds when the current epoch's steps ended and at the last epoch's report.
        self.writer: BackgroundWriter | None = None
        self.waited_mark: float | None = None
        self.busy_mark: float | None = None
        self.epochs_reported = 0  # epoch ends this process has reported
        self.epoch_summary: str | None = None  # the last epoch's line, until epoch_line says it
        self.announced = False  # the line before the first step is said
        self.sizes_said = False  # the line of the checkpoints' sizes is said
        self.tensorboard_asked = False  # once per process: a run without it does not ask each epoch
        if self.active:
            self._start(state, n_pairs, val_pairs)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _start(self, state, n_pairs: int, val_pairs: int | None) -> None:
        cfg, world = state.cfg, state.world
        self.record = run_record(state, n_pairs, val_pairs)
        write_text(self.folder / "config.json", json.dumps(self.record, indent=2) + "\n")
        self.log.open(self.folder / "train.log")
        batch = f"batch {cfg.batch_size}"
        if world.size > 1:
            per_process = f"{cfg.batch_size} per process x {world.size} processes"
            batch = f"global batch {cfg.batch_size * world.size} = {per_process}"
        self.print(
            f"training {cfg.name}: {n_pairs} pairs, {cfg.direction}, {cfg.image_size} px, {batch}, "
            f"on {state.device} in {str(state.dtype).removeprefix('torch.')}"
        )
        scored = len(subset(cfg, val_pairs)) if cfg.val_every and val_pairs else val_pairs
        if scored != val_pairs:
            self.print(
                f"validation scores {scored} of the {val_pairs} val pairs (val_images), "
                f"all of them after the last epoch"
            )
        if cfg.lr_decay_epochs > cfg.epochs:  # train.lr_factor decays over all epochs then
            self.print(
                f"lr_decay_epochs {cfg.lr_decay_epochs} is more than epochs {cfg.epochs}: the lr decays "
                f"linearly over all {cfg.epochs} epochs, as with lr_decay_epochs {cfg.epochs}"
            )

    def _open_tensorboard(self, state) -> None:
        """The event writer, once the steps per epoch are known (the first epoch's progress)."""
        if not check_tensorboard(state.cfg.tensorboard):
            if state.cfg.tensorboard == "auto":
                self.print(
                    f"no TensorBoard logs: the tensorboard package is not installed ({TENSORBOARD_HINT})"
                )
            return
        try:
            self.tensorboard = TensorBoardLog(
                self.folder / "tensorboard", self.step(state), json.dumps(self.record, indent=2)
            )
        except ImportError as err:  # installed but broken (e.g. a protobuf it cannot use)
            if state.cfg.tensorboard == "true":
                raise MissingPackageError(
                    f"--tensorboard: cannot load the tensorboard package ({err}): {TENSORBOARD_HINT}"
                ) from None
            self.print(
                f"warning: no TensorBoard logs, the tensorboard package fails to load ({err})", sys.stderr
            )

    def step(self, state) -> int:
        """The global step: iterations done in the whole run."""
        return state.epoch * self.n_batches + state.progress.iteration

    @contextlib.contextmanager
    def progress(self, state, n_batches: int) -> Iterator["Reporter"]:
        """A context for one epoch's progress: `with report.progress(...): report.update()`."""
        from tqdm import tqdm

        self.n_batches = n_batches
        if self.active and not self.tensorboard_asked:
            self.tensorboard_asked = True
            self._open_tensorboard(state)
        if self.active and not self.announced:
            self.announced = True
            self.print(
                announce(state.cfg, n_batches, self.step(state), state.device, state.dtype, state.world.size)
            )
        self.epoch_started = self.last_line = time.perf_counter()
        self.epoch_start_iteration = state.progress.iteration
        self.estimate.epoch_started()
        # A bar only on a terminal: in a file, its redrawn frames would be one long line.
        if self.active and self.console.isatty():
            self.bar = tqdm(
                total=n_batches,
                initial=state.progress.iteration,
                leave=False,
                dynamic_ncols=True,
                desc=f"epoch {state.epoch + 1}/{state.cfg.epochs}",
                file=self.console,
            )
        try:
            yield self
            if self.estimate.steps_ended() and not state.stop:  # an epoch too short to settle in
                self.say_estimate(state)
        finally:
            self.waited_mark = self.writer.waited_s if self.writer is not None else None
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def update(self, state) -> None:
        """After each iteration: the bar, and once, when the speed has settled, what the whole run
        will take."""
        if self.bar is not None:
            self.bar.update()
        if self.estimate.step():
            self.say_estimate(state)

    def say_estimate(self, state) -> None:
        """The line of what the whole run takes at the settled speed of this machine's steps."""
        per_iteration = self.estimate.seconds_per_iteration
        total = state.cfg.epochs * self.n_batches
        steps = (
            f"at {per_iteration:.2f} s per iteration here, the run's {total} iterations take about "
            f"{duration(per_iteration * total)} of training steps"
        )
        basis = f"the steady speed, after {self.estimate.steps} steps"
        if self.estimate.ends_known:
            left = duration(self.time_left(state))
            self.print(
                f"{steps} ({basis}); with each epoch's validation and checkpoints as measured, {left} to go"
            )
        else:
            to_go = duration(per_iteration * self.iterations_left(state))
            self.print(
                f"{steps}, {to_go} of them still to go ({basis}; the epoch lines add each epoch's "
                f"validation and checkpoints as measured)"
            )

    def iterations_left(self, state) -> int:
        return (state.cfg.epochs - state.epoch) * self.n_batches - state.progress.iteration

    def time_left(self, state) -> float | None:
        """Seconds to the end of the run: the steps and epoch ends to come, and the last epoch's
        whole-split validation and final writes (RunEstimate.remaining)."""
        cfg = state.cfg
        extra = 0
        if cfg.val_every and self.val_pairs:
            extra = self.val_pairs - len(subset(cfg, self.val_pairs))
        return self.estimate.remaining(self.iterations_left(state), cfg.epochs - state.epoch, extra)

    def losses(self, state, means: dict[str, float]) -> None:
        """The mean losses of the last log_every iterations."""
        if not self.active:
            return
        if self.tensorboard is not None:
            self.tensorboard.scalars(
                {f"loss/{name}": value for name, value in means.items()}, self.step(state)
            )
        if self.bar is not None:
            self.bar.set_postfix({name: f"{value:.3f}" for name, value in means.items()})
            return
        now = time.perf_counter()
        if now - self.last_line >= PLAIN_PROGRESS_SECONDS:
            self.last_line = now
            self.print(self.progress_line(state, means, now), sys.stderr)

    def progress_line(self, state, means: dict[str, float], now: float) -> str:
        """One line of progress for a log file: where, the losses, the speed and the time left."""
        done = state.progress.iteration - self.epoch_start_iteration
        per_iteration = self.estimate.seconds_per_iteration or (now - self.epoch_started) / max(done, 1)
        left = per_iteration * (self.n_batches - state.progress.iteration)
        run_left = self.time_left(state) or per_iteration * self.iterations_left(state)
        losses = "  ".join(f"{name} {value:.3f}" for name, value in means.items())
        return (
            f"epoch {state.epoch + 1}/{state.cfg.epochs}  "
            f"iteration {state.progress.iteration}/{self.n_batches}"
            f"  {losses}  {per_iteration:.2f} s/it, {left:.0f} s left in this epoch, "
            f"about {duration(run_left)} in the run"
        )

    def epoch(
        self, state, val_set, samples: list | None = None, writer: BackgroundWriter | None = None
    ) -> None:
        """Everything an epoch shows: the sample grid (of `samples`, validation's first rows, or
        made here), history.csv, the plots, index.html, TensorBoard's epoch values, and a line.
        `writer` writes the files from copies taken here, which the next steps cannot change."""
        if not self.active:
            return
        cfg, row = state.cfg, state.history.epochs[-1]
        self.measure_end(state, row, writer)
        copies = cpu_copy(samples or sample_rows(state, val_set)), cpu_copy(state.history.to_dict())
        write = functools.partial(self.write_epoch, cfg, state.epoch, *copies, self.step(state))
        write() if writer is None else writer.submit(write)
        summary = "  ".join(f"{name} {row[name]:.4f}" for name in self.loss_names + VAL_NAMES if name in row)
        self.epoch_summary = (
            f"epoch {state.epoch}/{cfg.epochs}  {summary}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
        )

    def epoch_line(self, state, writer: BackgroundWriter | None = None) -> None:
        """The epoch's line, once all its files are handed to `writer` (latest.pt last), with the
        time the run still takes. A process's first epoch end waits for its files first: they are
        the run's first checkpoints on disk, and how long they took to write is what the estimate
        adds for the files of the last epoch (later ones are written while the next epoch trains)."""
        if not self.active or self.epoch_summary is None:
            return
        if writer is not None and self.epochs_reported == 1 and self.busy_mark is not None:
            waited = writer.waited_s
            writer.wait()
            self.estimate.waited_for_writes(writer.waited_s - waited)
            self.estimate.wrote(writer.busy_s - self.busy_mark)
            self.busy_mark = writer.busy_s
        self.print(self.epoch_summary + self.run_left(state))
        self.epoch_summary = None
        self.say_sizes(state.cfg)  # once, from the first end whose checkpoints are on disk

    def measure_end(self, state, row: dict, writer: BackgroundWriter | None) -> None:
        """Give the estimate this epoch end's validation (its pairs, less the wait for the writer)
        and the writer's time on the previous epoch's files (all written: train.py waited)."""
        self.epochs_reported += 1
        pairs = 0
        if "val_L1" in row and self.val_pairs:
            whole = state.epoch >= state.cfg.epochs  # the last epoch scores the whole split
            pairs = self.val_pairs if whole else len(subset(state.cfg, self.val_pairs))
        waited = 0.0
        if writer is not None and self.waited_mark is not None:
            waited = writer.waited_s - self.waited_mark
        self.estimate.validated(pairs, waited)
        if writer is not None:
            # The previous end's files (none left to measure after a first end that waited for its own).
            if self.busy_mark is not None and writer.busy_s > self.busy_mark:
                self.estimate.wrote(writer.busy_s - self.busy_mark)
            self.busy_mark, self.writer = writer.busy_s, writer

    def write_epoch(self, cfg, epoch: int, rows: list, history: dict, step: int) -> None:
        """An epoch's files and TensorBoard values, from `history` (History.to_dict) at its end."""
        epochs, row = history["epochs"], history["epochs"][-1]
        grid = save_sample_grid(
            rows, self.folder / "samples" / f"epoch_{epoch:03d}.png", title=f"{cfg.name}, epoch {epoch}"
        )
        write_csv(epochs, self.folder / "history.csv")
        plot_curves(epochs, history["steps"], self.loss_names, self.folder / "loss.png", epoch_means=True)
        metric_names = VAL_NAMES + (FID_NAMES if cfg.val_fid else ())
        if any("val_L1" in r for r in epochs):
            plot_curves(epochs, {}, metric_names, self.folder / "metrics.png")
        write_gallery(epochs, self.loss_names, metric_names, self.folder, title=f"Pix2Pix run {cfg.name}")
        if self.tensorboard is not None:
            values = {f"val/{name.removeprefix('val_')}": row[name] for name in metric_names if name in row}
            values.update(
                {"train/lr": row["lr"], "train/epoch_seconds": row["seconds"], "train/epoch": epoch}
            )
            self.tensorboard.scalars(values, step)
            self.tensorboard.image("samples", grid, step)
            self.tensorboard.flush()  # an epoch's curves are visible at once, not after flush_secs

    def run_left(self, state) -> str:
        """', about 3.2 h left': the epochs to come (RunEstimate: their steps at the settled speed,
        their ends as measured, the last one's whole-split validation); '' after the last epoch."""
        left = self.time_left(state)
        if left is None or state.epoch >= state.cfg.epochs:
            return ""
        return f", about {duration(left)} left"

    def say_sizes(self, cfg) -> None:
        """Once: the sizes of the checkpoints this run writes, and what its folder grows to."""
        if self.sizes_said or not self.active:
            return
        line = checkpoint_sizes(RunDirs.of(cfg).checkpoints, cfg.epochs, cfg.save_every)
        if line:
            self.sizes_said = True
            self.print(line)

    def print(self, line: str, file: TextIO | None = None) -> None:
        """A line on stdout (or `file`), and so in train.log; on a terminal, above the bar."""
        from tqdm import tqdm

        if not self.active:
            return
        with tqdm.external_write_mode(file=self.console):  # clears the bar, redraws it after
            print(line, file=file or sys.stdout, flush=True)

    def finish(self, state, dirs: RunDirs) -> None:
        if self.epochs_reported:  # every file is written by now
            self.say_sizes(state.cfg)
        if state.stop:
            self.print(f"stopped; {dirs.latest} is saved: run the same command to resume")
        else:
            row = state.history.epochs[-1] if state.history.epochs else {}
            self.print(f"done: {dirs.results} and {dirs.checkpoints}{whole_split(row, self.val_pairs)}")


def checkpoint_sizes(folder: Path, epochs: int, save_every: int) -> str | None:
    """'checkpoints in checkpoints/facades: latest.pt 686 MB, best.pt 229 MB, epoch_010.pt 229 MB
    (one every 10 epochs: about 5.5 GB by the end of the run)', measured from the files there;
    None where none is written yet."""
    snapshots = sorted(folder.glob("epoch_*.pt"))
    files = [path for path in (folder / "latest.pt", folder / "best.pt") if path.is_file()]
    files += snapshots[-1:]
    if not files:
        return None
    sizes = {path.name: path.stat().st_size for path in files}
    line = f"checkpoints in {folder}: " + ", ".join(f"{name} {size_text(n)}" for name, n in sizes.items())
    snapshot = sizes.get(snapshots[-1].name) if snapshots else sizes.get("best.pt")  # one kind of file
    if save_every and snapshot:
        end = sizes.get("latest.pt", 0) + sizes.get("best.pt", 0) + snapshot * (epochs // save_every)
        every = "every epoch" if save_every == 1 else f"every {save_every} epochs"
        line += f" (epoch_NNN.pt {every}: about {size_text(end)} by the end of the run)"
    return line


def whole_split(row: dict[str, float], n_pairs: int | None) -> str:
    """'; the whole val split (100 pairs): L1 ...' from the last epoch's row, which validation
    always scores whole: its val_all_* figures, or its val_* ones where the subset is the split."""
    prefix = "val_all_" if "val_all_L1" in row else "val_" if "val_L1" in row else ""
    if not prefix:
        return ""
    return (
        f"; the whole val split ({n_pairs} pairs): L1 {row[prefix + 'L1']:.4f}  "
        f"PSNR {row[prefix + 'PSNR']:.2f} dB  SSIM {row[prefix + 'SSIM']:.4f}"
    )


def sample_rows(state, val_set) -> list[list[torch.Tensor]]:
    """The sample grid's validation pairs (validation.sample_indices) as rows [input, generated,
    target], for an epoch that did not validate."""
    cfg = state.cfg
    pairs = (val_set[i] for i in sample_indices(cfg, len(val_set)))
    triples = translate_pairs(state.G, pairs, cfg.eval_mode, cfg.seed, state.amp, state.device)
    return [list(row) for row in triples]
