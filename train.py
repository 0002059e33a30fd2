"""Train Pix2Pix: ``python train.py [--field value ...]`` (fields in config.py, or --help).

Pix2Pix (Isola et al. 2017) learns a generator G that translates an image x = real_A of one
domain (a facade's label map) into fake_B = G(x) of the other (its photo), against a
discriminator D that judges (input, output) pairs patch by patch. Per iteration
(training/step.py), D's step then G's:

    loss_D = 0.5 * (BCE(D(real_A, real_B), 1) + BCE(D(real_A, fake_B), 0))      backward_D
    loss_G = BCE(D(real_A, fake_B), 1) + lambda_l1 * |fake_B - real_B|_1        backward_G

Adam (lr 2e-4, betas 0.5 and 0.999) for each network, the lr constant for the first epochs and
then decaying linearly to 0 over the last lr_decay_epochs (training/setup.py).

At the end of every epoch: validate (L1, PSNR, SSIM of val_images pairs of the val split, and of
the whole split after the last epoch), report (results/<name>/: sample grid, history.csv, plots,
index.html) and checkpoint (best.pt, epoch_NNN.pt, latest.pt at most every latest_every_s s),
written from copies by a background thread while the next epoch trains.
Running the same command again continues the run, exactly (docs/recovery.md).
Under ``torchrun --nproc_per_node N train.py`` the same script trains with DistributedDataParallel.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import TYPE_CHECKING

from reporting.reporter import Reporter
from reporting.runlog import RunLog
from training import distributed as ddp
from training import session
from training.cli import parse_args
from training.guards import check_networks, loss_means
from training.step import train_step
from training.validation import validate_epoch

if TYPE_CHECKING:  # names of the type hints only
    from torch.utils.data import DataLoader

    from config import Config
    from training.background import BackgroundWriter
    from training.state import RunDirs, RunState

# --- One epoch ---


def train_one_epoch(
    state: RunState, loader: DataLoader, report: Reporter, dirs: RunDirs, writer: BackgroundWriter
) -> dict | None:
    """Run (the rest of) one epoch; returns its loss means, or None when stopped by a signal.

    Losses stay on the device and are read back only every log_every iterations. With
    checkpoint_every, and when SIGINT/SIGTERM arrives, latest.pt is written mid-epoch.
    """
    cfg, p = state.cfg, state.progress
    state.G_train.train()
    state.D_train.train()
    n_batches = len(loader)  # the same in every process (DistributedSampler pads the shards)
    p.batches = n_batches
    with report.progress(state, n_batches):
        # A resumed epoch skips the batches it already trained on (the order is fixed per epoch).
        for real_A, real_B in itertools.islice(loader, p.iteration, None):
            losses = train_step(
                state,
                real_A.to(state.device, non_blocking=True),  # (N, C, H, W) in [-1, 1]
                real_B.to(state.device, non_blocking=True),
            )
            p.total += losses
            p.window += losses
            p.in_window += 1
            p.iteration += 1
            report.update(state)
            logged = p.in_window == cfg.log_every or p.iteration == n_batches
            if logged:
                log_point(state, n_batches, report)
            if p.iteration == n_batches:
                break
            # Several processes agree on a signal only where they exchange the losses anyway.
            stop = (
                ddp.any_rank(state.world, state.device, state.stop)
                if logged or state.world.size == 1
                else False
            )
            done = state.epoch * n_batches + p.iteration
            if stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                session.save_latest_in_epoch(state, dirs, f"in epoch {state.epoch + 1}", writer)
                if stop:
                    state.stop = True
                    return None
    ddp.mean_over_ranks(p.total, state.world)  # epoch means over all processes' batches
    return loss_means(p.total, n_batches, f"in epoch {state.epoch + 1}")


def log_point(state: RunState, n_batches: int, report: Reporter) -> None:
    """Read back the mean losses of the last few iterations (one host sync) and record a point."""
    p = state.progress
    ddp.mean_over_ranks(p.window, state.world)  # the same in every process: all stop on a NaN together
    iterations = f"in epoch {state.epoch + 1}, iterations {p.iteration - p.in_window + 1}-{p.iteration}"
    means = loss_means(p.window, p.in_window, iterations)
    state.history.add_point(state.epoch + p.iteration / n_batches, means)
    report.losses(state, means)
    p.window.zero_()
    p.in_window = 0


def end_of_epoch(state: RunState, run: session.Run, report: Reporter, writer: BackgroundWriter) -> None:
    """Validate, then give the writer the report and the snapshots, as copies taken now; rank 0
    alone (on_main). latest.pt, the commit point, is given to the writer after them, and the
    epoch's line said after that (train)."""
    samples = validate_epoch(state, run.val_set)
    writer.wait()  # until the previous epoch's files are written; a failed write stops the run here
    report.epoch(state, run.val_set, samples, writer)
    session.save_snapshots(state, run.dirs, writer)


# --- The run ---


def train(cfg: Config, world: ddp.World | None = None, device=None) -> None:
    """The whole run; under torchrun, world and device come from process_group (main does it)."""
    world = world or ddp.World()
    # What is printed from here on also goes to train.log.
    with RunLog(world.is_main) as log, session.opened(cfg, world, device, log.open) as run:
        if run is None:  # it has trained its epochs already
            return
        state, dirs = run.state, run.dirs
        report = Reporter(state, dirs.results, len(run.train_set), log, len(run.val_set))
        with report, session.running(state, report.print) as writer:
            while state.epoch < cfg.epochs:
                run.loader.sampler.set_epoch(state.epoch)
                run.train_set.set_epoch(state.epoch)
                started, lr = time.perf_counter(), state.opt_G.param_groups[0]["lr"]
                means = train_one_epoch(state, run.loader, report, dirs, writer)
                if means is None:
                    break
                for sched in (state.sched_G, state.sched_D):
                    sched.step()
                state.next_epoch()
                seconds = round(time.perf_counter() - started, 2)
                state.history.epochs.append({"epoch": state.epoch, **means, "lr": lr, "seconds": seconds})
                check_networks({"generator": state.G, "discriminator": state.D}, f"after epoch {state.epoch}")
                ddp.on_main(world, state.device, lambda: end_of_epoch(state, run, report, writer))
                # Only agreed flags may end the loop or write latest.pt: a signal or a clock seen by
                # one process alone would leave the others waiting in a collective. So the loop
                # reads the agreed `stop`, never state.stop, which a signal may set meanwhile.
                stop = ddp.any_rank(world, state.device, state.stop)
                state.stop = state.stop or stop
                if stop or state.epoch == cfg.epochs or ddp.any_rank(world, state.device, run.schedule.due()):
                    session.save_latest_after_epoch(state, dirs, writer)  # after the epoch's other files
                    run.schedule.written()
                ddp.on_main(world, state.device, lambda: report.epoch_line(state, writer))
                if stop:
                    break
            ddp.on_main(world, state.device, writer.wait)  # every file is written before the last line
            report.finish(state, dirs)


def main() -> None:
    with session.run_errors():
        cfg = parse_args(sys.argv[1:], description=__doc__)
        world = ddp.world_from_env()  # torchrun's RANK, LOCAL_RANK, WORLD_SIZE; else one process
        with ddp.process_group(cfg.device, world) as device:
            train(cfg, world, device)


if __name__ == "__main__":
    main()
