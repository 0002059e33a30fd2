"""The state of a run at its start: seed and threads, device and precision, the paper's networks
with their initialisation, Adam with the paper's lr schedule, the speed layer (``--speedups``)
and, under torchrun, synchronised BatchNorm and DDP wrappers."""

from __future__ import annotations

import sys

import torch
from torch import nn

from config import Config, generator_depth
from discriminator import PatchDiscriminator
from generator import UNetGenerator
from layers import init_weights
from speed import GraphedStep, accelerate
from training import distributed as ddp
from training.settings import ConfigError
from training.state import History, Progress, RunState
from training.step import eager_step
from utils import resolve_device, resolve_precision, seed_everything


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


def setup(cfg: Config, world: ddp.World | None = None, device: torch.device | None = None) -> RunState:
    """Seed, pick device and precision, build the networks and optimizers, and make them fast
    unless cfg.speedups is false: the state of a run at its start. Under torchrun the networks get
    synchronised BatchNorm (cfg.sync_bn) and DDP wrappers for the training step (state.G_train,
    state.D_train); state.G and state.D stay the bare networks."""
    world = world or ddp.World()
    seed_and_threads(cfg)
    device, dtype = device_and_precision(cfg, device)
    G, D = build_networks(cfg, device, world)
    (opt_G, opt_D), (sched_G, sched_D) = build_optimizers(cfg, G, D)
    applied = accelerate([(G, opt_G), (D, opt_D)], device, dtype, world.size) if cfg.speedups else None
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
        # Fixed shapes: cuDNN times its algorithms once, then reuses the best.
        torch.backends.cudnn.benchmark = True
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
    true also saying where it cannot. Off with --speedups false (the graph is a speed-up)."""
    if cfg.cuda_graphs == "false" or not cfg.speedups:
        return None
    if GraphedStep.usable(state):
        return GraphedStep(eager_step)  # train_step replays it
    if cfg.cuda_graphs == "true" and state.world.is_main:
        print(
            "--cuda_graphs true: needs CUDA, bf16 or fp32 and one process; training without CUDA graphs",
            file=sys.stderr,
        )
    return None
