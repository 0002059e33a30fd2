"""Train Pix2Pix: ``python train.py [--field value ...]`` (fields in config.py, or --help).

Per iteration (Isola et al. 2017, section 3): the generator G translates real_A into fake_B; the
discriminator D learns to call (real_A, real_B) real and (real_A, fake_B) fake; then G learns to
make D call (real_A, fake_B) real while staying close to real_B in L1:

    loss_D = 0.5 * (BCE(D(real_A, real_B), 1) + BCE(D(real_A, fake_B), 0))
    loss_G = BCE(D(real_A, fake_B), 1) + lambda_l1 * |fake_B - real_B|_1

At the end of every epoch: validate (L1, PSNR, SSIM of val_images pairs of the val split, and of
the whole split after the last epoch: validation.py), report (results/<name>/: sample grid,
history.csv, plots, index.html) and checkpoint (best.pt, epoch_NNN.pt, latest.pt at most every
latest_every_s s), written from copies by a background thread (background.py).
Running the same command again continues the run.
Under ``torchrun --nproc_per_node N train.py`` the same script trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from config import Config, ConfigError, architecture_defaults, generator_depth
from dataset import PairedDataset
from discriminator import PatchDiscriminator
from evaluation.metrics import MissingPackageError, inception_weights_path
from files.images import DatasetError
from generator import UNetGenerator
from layers import init_weights, set_requires_grad
from reporting.reporter import Reporter, check_tensorboard
from reporting.runlog import RunLog
from speed.accelerate import GraphedStep, accelerate
from training import checkpoint as ckpt
from training import distributed as ddp
from training import preflight, run_control
from training.background import BackgroundWriter, LatestSchedule, cpu_copy
from training.checkpoint import CheckpointError
from training.cli import parse_args
from training.guards import TrainingError, check_losses, check_networks
from training.loader import build_data, make_loader, prepare_data_root
from training.state import LOSS_NAMES, History, Progress, RunDirs, RunState
from training.validation import validate_epoch
from utils import OutputError, exit_on_errors, resolve_device, resolve_precision, seed_everything

# --- Networks and optimizers ---


def generator_kwargs(cfg: Config) -> dict:
    """UNetGenerator's constructor arguments; checkpoints store them, so no config rebuilds it."""
    return {
        "in_channels": cfg.input_nc,
        "out_channels": cfg.output_nc,
        "ngf": cfg.ngf,
        "num_downs": generator_depth(cfg),
        "norm": cfg.norm,
        "dropout": cfg.dropout,
    }


def build_discriminator(cfg: Config) -> PatchDiscriminator:
    # It judges the input and an output stacked along the channels.
    return PatchDiscriminator(cfg.input_nc + cfg.output_nc, cfg.ndf, cfg.n_layers_D, cfg.norm)


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """The paper's schedule: constant lr, then a linear decay towards 0 over the last epochs."""
    constant = max(epochs - decay_epochs, 0)
    return 1.0 - max(0, epoch + 1 - constant) / float(epochs - constant + 1)


def build_optimizers(cfg: Config, G: nn.Module, D: nn.Module) -> tuple[list, list]:
    """Adam for each network, and a LambdaLR per optimizer stepped once per epoch."""
    # fused: one kernel per step for all parameters instead of several passes over 57 M of them.
    opts = [
        torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
        for net in (G, D)
    ]
    scheds = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, cfg.epochs, cfg.lr_decay_epochs))
        for opt in opts
    ]
    return opts, scheds


# --- One iteration: the named GAN steps of the official code ---


def gan_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """BCE between every patch logit and the label 1 (real) or 0 (fake), in fp32."""
    logits = logits.float()
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def backward_D(D, real_A, real_B, fake_B, amp, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """D learns real pairs -> 1 and generated pairs -> 0; halved so D learns slower than G."""
    with amp:
        loss_D_fake = gan_loss(D(real_A, fake_B.detach()), False)  # detach: no gradient into G
        loss_D_real = gan_loss(D(real_A, real_B), True)
    scaler.scale(0.5 * (loss_D_fake + loss_D_real)).backward()
    return loss_D_real, loss_D_fake


def backward_G(D, real_A, real_B, fake_B, lambda_l1, amp, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """G learns to fool D on its output while staying close to the target in L1."""
    with amp:
        loss_G_GAN = gan_loss(D(real_A, fake_B), True)
    loss_G_L1 = F.l1_loss(fake_B.float(), real_B)
    scaler.scale(loss_G_GAN + lambda_l1 * loss_G_L1).backward()
    return loss_G_GAN, loss_G_L1


def train_step(state: RunState, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """One D update then one G update; returns the losses (G_GAN, G_L1, D_real, D_fake), detached.

    With --cuda_graphs auto or true (setup gives the state a GraphedStep) the same step is captured
    once as a CUDA graph and replayed (speedups.py)."""
    step = state.graphed_step or eager_step
    return step(state, real_A, real_B)


def eager_step(state: RunState, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """train_step's work, op by op."""
    amp, scaler = state.amp, state.scaler
    with amp:
        fake_B = state.G_train(real_A)  # (N, output_nc, H, W)
    state.opt_D.zero_grad(set_to_none=True)
    loss_D_real, loss_D_fake = backward_D(state.D_train, real_A, real_B, fake_B, amp, scaler)
    scaler.step(state.opt_D)
    # G's step needs gradients through D, not for D's weights: D is frozen and called bare (its
    # DDP wrapper would prepare a gradient reduction for a backward that yields no D gradient).
    set_requires_grad(state.D, False)
    state.opt_G.zero_grad(set_to_none=True)
    loss_G_GAN, loss_G_L1 = backward_G(state.D, real_A, real_B, fake_B, state.cfg.lambda_l1, amp, scaler)
    set_requires_grad(state.D, True)
    scaler.step(state.opt_G)
    scaler.update()
    return torch.stack([loss_G_GAN, loss_G_L1, loss_D_real, loss_D_fake]).detach()


# --- The run ---


def setup(
    cfg: Config, world: ddp.World | None = None, device: torch.device | None = None, fast: bool = True
) -> RunState:
    """Seed, pick device and precision, build the networks and optimizers, make them fast (unless
    `fast` is false: benchmark.py's baseline): the state of a run at its start. Under torchrun the
    networks get synchronised BatchNorm (cfg.sync_bn) and DDP wrappers for the training step
    (state.G_train, state.D_train); state.G and state.D stay the bare networks."""
    world = world or ddp.World()
    seed_and_threads(cfg)
    device, dtype = device_and_precision(cfg, device)
    G, D = build_networks(cfg, device, world)
    (opt_G, opt_D), (sched_G, sched_D) = build_optimizers(cfg, G, D)
    applied = accelerate([(G, opt_G), (D, opt_D)], device, dtype, world.size) if fast else None
    G_train, D_train = G, D
    if world.size > 1:
        G_train, D_train = ddp.data_parallel(G, device), ddp.data_parallel(D, device)
        seed_everything(cfg.seed + world.rank)  # dropout noise differs between processes
    state = RunState(
        cfg=cfg,
        world=world,
        device=device,
        dtype=dtype,
        G=G,
        D=D,
        G_train=G_train,
        D_train=D_train,
        opt_G=opt_G,
        opt_D=opt_D,
        sched_G=sched_G,
        sched_D=sched_D,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        generator_kwargs=generator_kwargs(cfg),
        history=History(),
        progress=Progress.start(device),
        acceleration=applied,
    )
    state.graphed_step = cuda_graphs(cfg, state)
    return state


def seed_and_threads(cfg: Config) -> None:
    """The same initial weights in every process (DDP also copies rank 0's), and the CPU threads."""
    seed_everything(cfg.seed)
    # Adam's second moments and late gradients underflow into subnormal floats, which x86 CPUs
    # process many times slower; flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def device_and_precision(cfg: Config, device: torch.device | None) -> tuple[torch.device, torch.dtype]:
    try:
        device = device or resolve_device(cfg.device)
        dtype = resolve_precision(cfg.precision, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # fixed shapes: cuDNN times its algorithms once, then reuses the best
        )
    return device, dtype


def build_networks(cfg: Config, device: torch.device, world: ddp.World) -> tuple[nn.Module, nn.Module]:
    """G and D with the paper's initialisation; synchronised BatchNorm under torchrun (sync_bn)."""
    G, D = UNetGenerator(**generator_kwargs(cfg)).to(device), build_discriminator(cfg).to(device)
    init_weights(G, cfg.init_gain)
    init_weights(D, cfg.init_gain)
    if world.size > 1 and cfg.sync_bn:  # the parameters stay the same objects
        G, D = ddp.sync_batchnorm(G, device), ddp.sync_batchnorm(D, device)
    return G, D


def cuda_graphs(cfg: Config, state: RunState) -> GraphedStep | None:
    """The training step as a replayed CUDA graph: with --cuda_graphs auto where that works, with
    true also saying where it cannot."""
    if cfg.cuda_graphs == "false":
        return None
    if GraphedStep.usable(state):
        return GraphedStep(eager_step)  # train_step replays it
    if cfg.cuda_graphs == "true" and state.world.is_main:
        print(
            "--cuda_graphs true: needs CUDA, bf16 or fp32 and one process; training without CUDA graphs",
            file=sys.stderr,
        )
    return None


def log_point(state: RunState, n_batches: int, report: Reporter) -> None:
    """Read back the mean losses of the last few iterations (one host sync) and record a point."""
    p = state.progress
    ddp.mean_over_ranks(p.window, state.world)  # the same in every process: all stop on a NaN together
    iterations = f"in epoch {state.epoch + 1}, iterations {p.iteration - p.in_window + 1}-{p.iteration}"
    check_losses(LOSS_NAMES, p.window, p.in_window, iterations)
    means = dict(zip(LOSS_NAMES, (p.window / p.in_window).tolist()))
    state.history.add_point(state.epoch + p.iteration / n_batches, means)
    report.losses(state, means)
    p.window.zero_()
    p.in_window = 0


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
                save_latest(state, dirs, f"in epoch {state.epoch + 1}", writer)
                if stop:
                    state.stop = True
                    return None
    ddp.mean_over_ranks(p.total, state.world)  # epoch means over all processes' batches
    check_losses(LOSS_NAMES, p.total, n_batches, f"in epoch {state.epoch + 1}")
    return dict(zip(LOSS_NAMES, (p.total / n_batches).tolist()))


def save_latest(state: RunState, dirs: RunDirs, where: str, writer: BackgroundWriter) -> None:
    """latest.pt within an epoch, unless a loss, a weight or a BatchNorm statistic is no longer a
    usable number; once the writes given before are done (one copy of the state waits at most)."""
    check_losses(LOSS_NAMES, state.progress.total, state.progress.iteration, where)
    check_networks({"generator": state.G, "discriminator": state.D}, where)
    ddp.on_main(state.world, state.device, writer.wait)
    ckpt.save_latest(state, dirs.latest, writer)


def end_of_epoch(
    state: RunState, val_set: PairedDataset, report: Reporter, dirs: RunDirs, writer: BackgroundWriter
) -> None:
    """Validate, then give the writer the report and the snapshots, as copies taken now; rank 0
    alone (on_main). latest.pt, the commit point, is given to the writer after them (train)."""
    samples = validate_epoch(state, val_set)
    writer.wait()  # until the previous epoch's files are written; a failed write stops the run here
    report.epoch(state, val_set, samples, writer)
    save_snapshots(state, dirs, writer)


def save_snapshots(state: RunState, dirs: RunDirs, writer: BackgroundWriter) -> None:
    """epoch_NNN.pt every save_every epochs and best.pt at the lowest val_L1 so far: one copy."""
    paths = [dirs.checkpoints / "best.pt"] if state.history.is_best(state.history.epochs[-1]) else []
    if state.cfg.save_every and state.epoch % state.cfg.save_every == 0:
        paths.insert(0, dirs.checkpoints / f"epoch_{state.epoch:03d}.pt")
    snapshot = cpu_copy(ckpt.snapshot(state)) if paths else None
    for path in paths:
        writer.submit(functools.partial(ckpt.save_checkpoint, snapshot, path))


def train(cfg: Config, world: ddp.World | None = None, device: torch.device | None = None) -> None:
    """The whole run; under torchrun, world and device come from process_group (main does it)."""
    world = world or ddp.World()
    preflight.check_run(cfg, world, device)  # every setting and path, before any work
    if cfg.val_fid:
        inception_weights_path()  # a missing optional package fails now, not after the first epoch
    check_tensorboard(cfg)  # so does --tensorboard true without the package
    dirs = RunDirs.of(cfg)
    lock = run_control.run_lock(dirs.checkpoints) if world.is_main else contextlib.nullcontext()
    with lock, RunLog(world.is_main) as log:  # what is printed from here on also goes to train.log
        ddp.in_turns(world, device, lambda: prepare_data_root(cfg))  # a download happens once
        train_set, val_set = build_data(cfg)  # first, so that bad data fails before any work
        state = setup(cfg, world, device)
        if world.is_main:
            run_control.remove_stale_temporaries(dirs.checkpoints, dirs.results, dirs.results / "samples")
        ckpt.resume_or_start(state, dirs, architecture_defaults())
        if state.epoch >= cfg.epochs:
            if world.is_main:
                log.open(dirs.results / "train.log")
                print(
                    f"{cfg.name} has finished {state.epoch}/{cfg.epochs} epochs ({dirs.latest}); "
                    f"raise --epochs to continue it"
                )
            return
        loader = make_loader(train_set, cfg, state.device, world)
        ckpt.fit_epoch_to_loader(state, len(loader))
        ddp.check_same_start(world, state.device, state.epoch, state.progress.iteration)
        report = Reporter(state, dirs.results, len(train_set), log, len(val_set))
        schedule = LatestSchedule(cfg.latest_every_s, have_one=dirs.latest.exists())
        # The writer flushes before the report closes, with the signals still caught.
        with report, run_control.stop_on_signals(state, report.print), BackgroundWriter() as writer:
            while state.epoch < cfg.epochs:
                loader.sampler.set_epoch(state.epoch)
                train_set.set_epoch(state.epoch)
                started, lr = time.perf_counter(), state.opt_G.param_groups[0]["lr"]
                means = train_one_epoch(state, loader, report, dirs, writer)
                if means is None:
                    break
                for sched in (state.sched_G, state.sched_D):
                    sched.step()
                state.epoch += 1
                state.progress = Progress.start(state.device)
                seconds = round(time.perf_counter() - started, 2)
                state.history.epochs.append({"epoch": state.epoch, **means, "lr": lr, "seconds": seconds})
                check_networks({"generator": state.G, "discriminator": state.D}, f"after epoch {state.epoch}")
                ddp.on_main(world, state.device, lambda: end_of_epoch(state, val_set, report, dirs, writer))
                # Only agreed flags may end the loop or write latest.pt: a signal or a clock seen by
                # one process alone would leave the others waiting in a collective. So the loop
                # reads the agreed `stop`, never state.stop, which a signal may set meanwhile.
                stop = ddp.any_rank(world, state.device, state.stop)
                state.stop = state.stop or stop
                if stop or state.epoch == cfg.epochs or ddp.any_rank(world, state.device, schedule.due()):
                    ckpt.save_latest(state, dirs.latest, writer)  # after the epoch's other files
                    schedule.written()
                if stop:
                    break
            ddp.on_main(world, state.device, writer.wait)  # every file is written before the last line
            report.finish(state, dirs)


def main() -> None:
    with exit_on_errors(
        (ConfigError,),
        (
            DatasetError,
            CheckpointError,
            run_control.RunLockError,
            OutputError,
            TrainingError,
            ddp.DistributedError,
            MissingPackageError,
            MemoryError,
        ),
    ):
        cfg = parse_args(sys.argv[1:], description=__doc__)
        world = ddp.world_from_env()  # torchrun's RANK, LOCAL_RANK, WORLD_SIZE; else one process
        with ddp.process_group(cfg.device, world) as device:
            train(cfg, world, device)


if __name__ == "__main__":
    main()
