"""Train Pix2Pix: ``python train.py [--field value ...]`` (fields in config.py).

Per iteration (Isola et al. 2017, section 3): the generator G translates real_A into fake_B; the
discriminator D learns to call (real_A, real_B) real and (real_A, fake_B) fake; then G learns to
make D call (real_A, fake_B) real while staying close to real_B in L1:

    loss_D = 0.5 * (BCE(D(real_A, real_B), 1) + BCE(D(real_A, fake_B), 0))
    loss_G = BCE(D(real_A, fake_B), 1) + lambda_l1 * |fake_B - real_B|_1

Every epoch it writes, under results/<name>/: samples/epoch_NNN.png, loss.png, history.csv; and
under checkpoints/<name>/: latest.pt (plus epoch_NNN.pt every save_every epochs), one dict that
holds everything needed to continue the run or to rebuild the generator.

Under ``torchrun --nproc_per_node N train.py ...`` the same script trains with
DistributedDataParallel (see "Several processes" below): each process takes a shard of every
epoch, gradients and BatchNorm statistics are shared, and rank 0 alone writes files and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from config import DATASETS, Config, ConfigError, generator_depth, parse_or_exit, size_multiple
from dataset import AlignedDataset, DatasetError, PairedDataset, PairedFoldersDataset
from discriminator import PatchDiscriminator
from distributed import (DistributedError, World, data_parallel, in_turns, mean_over_ranks, on_main,
                         process_group, unwrap, world_from_env)
from download import ensure_dataset
from generator import UNetGenerator, translate
from metrics import MissingPackageError, evaluate, inception_weights_path
from utils import (CheckpointError, OutputError, autocast, check_state_dict, init_weights, load_checkpoint,
                   plot_curves, resolve_device, resolve_precision, rng_state, save_checkpoint,
                   save_sample_grid, seed_everything, set_requires_grad, set_rng_state, sync_batchnorm,
                   write_csv, write_gallery, write_text)

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")
VAL_NAMES = ("val_L1", "val_PSNR", "val_SSIM")  # history columns of the validation pass
FID_NAMES = ("val_FID", "val_KID")
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}
# Fields that fix the shape of the networks or the meaning of the data: a run cannot continue
# from a checkpoint made with other values.
ARCHITECTURE_FIELDS = ("direction", "image_size", "ngf", "ndf", "n_layers_D", "norm",
                       "dataset", "input_nc", "output_nc", "num_downs")


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def build_generator(cfg: Config) -> UNetGenerator:
    return UNetGenerator(cfg.input_nc, cfg.output_nc, cfg.ngf, generator_depth(cfg), cfg.norm, cfg.dropout)


def build_discriminator(cfg: Config) -> PatchDiscriminator:
    # It judges the input and an output stacked along the channels.
    return PatchDiscriminator(cfg.input_nc + cfg.output_nc, cfg.ndf, cfg.n_layers_D, cfg.norm)


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """The paper's schedule: constant lr, then a linear decay towards 0 over the last epochs."""
    constant = max(epochs - decay_epochs, 0)
    return 1.0 - max(0, epoch + 1 - constant) / float(epochs - constant + 1)


def build_optimizers(cfg: Config, G: nn.Module, D: nn.Module):
    """Adam for each network, and a LambdaLR per optimizer stepped once per epoch."""
    # fused: one kernel per step for all parameters instead of several passes over 57 M of them.
    opts = [torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
            for net in (G, D)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: lr_factor(e, cfg.epochs, cfg.lr_decay_epochs)) for opt in opts]
    return opts, scheds


def data_split(root: Path, preferred: str) -> Path:
    """The folder of split `preferred`, else the first of val/test/train that exists."""
    for split in (preferred, "val", "test", "train"):
        if (root / split).is_dir():
            return root / split
    raise DatasetError(f"{root}: no train/, val/ or test/ folder with images")


def make_dataset(cfg: Config, folder: Path, train: bool, max_images: int = 0) -> PairedDataset:
    """The pairs of one split folder, in the config's layout, preprocessing and channels.

    train=True: random crops and flips for training; train=False: the deterministic items of
    sample grids, validation and prediction (any height and width with crop, none, scale_width).
    """
    kind = PairedFoldersDataset if cfg.data_layout == "paired_folders" else AlignedDataset
    return kind(folder, cfg.direction, cfg.load_size, cfg.image_size, train=train, flip=cfg.flip,
                seed=cfg.seed, max_images=max_images, preprocess=cfg.preprocess, input_nc=cfg.input_nc,
                output_nc=cfg.output_nc, multiple=size_multiple(cfg))


def prepare_data_root(cfg: Config) -> Path:
    """data_root, downloaded first when it is the missing folder of a set of the pix2pix family."""
    info = DATASETS[cfg.dataset]
    return ensure_dataset(cfg.data_root, cfg.dataset, cfg.download_url, info.splits, cfg.download_sha256,
                          missing_hint=info.note)


def check_batchable(cfg: Config, train_set: PairedDataset) -> None:
    """Batches stack their items, so batch_size > 1 needs training items of one size."""
    sizes = train_set.sizes() if train_set.preprocess == "none" else {}
    if cfg.batch_size > 1 and len(sizes) > 1:
        (h1, w1), (h2, w2) = list(sizes)[:2]
        raise DatasetError(f"--batch_size {cfg.batch_size} with --preprocess none needs training images of one "
                           f"size, but {sizes[(h1, w1)]} is {w1}x{h1} and {sizes[(h2, w2)]} is {w2}x{h2}; use "
                           f"--batch_size 1 or --preprocess crop")


def build_data(cfg: Config) -> tuple[PairedDataset, PairedDataset]:
    """The training set (random jitter) and the validation set (evaluation preprocessing).

    The first num_samples validation images are also the fixed rows of every sample grid.
    """
    root = prepare_data_root(cfg)
    if not (root / "train").is_dir():
        raise DatasetError(f"{root / 'train'}: no such folder (data_root must hold train/ and val/)")
    train_set = make_dataset(cfg, root / "train", train=True, max_images=cfg.max_images)
    check_batchable(cfg, train_set)
    val_set = make_dataset(cfg, data_split(root, "val"), train=False, max_images=cfg.max_images)
    return train_set, val_set


def make_loader(train_set: PairedDataset, cfg: Config, device: torch.device,
                world: World | None = None) -> DataLoader:
    """Batches in the main process: items are slices of a tensor cache, so workers would only cost."""
    world = world or World()
    # A fresh, seeded permutation every epoch, the same in every process, of which each process
    # takes every world.size-th index from its rank on: distinct images, and the same number of
    # batches everywhere (the shortest shards are padded with repeats). No rank offset is needed
    # for the augmentation: the crop and flip of an item are drawn from (seed, epoch, index), so
    # distinct indices already get their own draws, the same ones a single process gives them.
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.seed)
    return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=False,
                      pin_memory=device.type == "cuda")


def gather_rng_states(state: dict) -> None:
    """Collect every process's RNG state for the next checkpoint (a collective), so that dropout
    goes on exactly after a resume with the same number of processes."""
    if state["world"].size > 1:
        # As torch.save bytes: all_gather_object's own pickling of tensors fails to load in torch 2.14.
        buffer = io.BytesIO()
        torch.save(rng_state(), buffer)
        blobs: list = [None] * state["world"].size
        dist.all_gather_object(blobs, buffer.getvalue())
        state["rng_ranks"] = [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]


# ---------------------------------------------------------------------------------------------
# One iteration: the named GAN steps of the official code
# ---------------------------------------------------------------------------------------------

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


def train_step(G, D, opt_G, opt_D, real_A, real_B, lambda_l1, amp, scaler) -> torch.Tensor:
    """One D update then one G update; returns the losses (G_GAN, G_L1, D_real, D_fake), detached.

    G and D may be DistributedDataParallel wrappers: their backward averages the gradients over
    the processes.
    """
    with amp:
        fake_B = G(real_A)  # (N, output_nc, H, W)
    opt_D.zero_grad(set_to_none=True)
    loss_D_real, loss_D_fake = backward_D(D, real_A, real_B, fake_B, amp, scaler)
    scaler.step(opt_D)
    # G's step needs gradients through D, not for D's weights, so D is frozen and called bare.
    # Through its DDP wrapper the forward would prepare a gradient reduction for D in a backward
    # that yields no D gradient at all (torch 2.14 then skips it, but that is DDP bookkeeping we
    # need not lean on). The bare D still passes G's gradients back, and its synchronised
    # BatchNorm still shares the batch statistics, since every process runs this same call.
    D_bare = unwrap(D)
    set_requires_grad(D_bare, False)
    opt_G.zero_grad(set_to_none=True)
    loss_G_GAN, loss_G_L1 = backward_G(D_bare, real_A, real_B, fake_B, lambda_l1, amp, scaler)
    set_requires_grad(D_bare, True)
    scaler.step(opt_G)
    scaler.update()
    return torch.stack([loss_G_GAN, loss_G_L1, loss_D_real, loss_D_fake]).detach()


# ---------------------------------------------------------------------------------------------
# Epochs
# ---------------------------------------------------------------------------------------------

class TrainingError(RuntimeError):
    """Training cannot go on (a loss became NaN or infinite); the message says where."""


def new_progress(device: torch.device) -> dict:
    """Where the current epoch stands: iterations done and loss sums, kept on the device."""
    zeros = torch.zeros(len(LOSS_NAMES), device=device)
    return {"iteration": 0, "total": zeros, "window": zeros.clone(), "in_window": 0}


def check_finite(sums: torch.Tensor, where: str) -> None:
    """Stop on the first loss whose sum is NaN or infinite (one bad step poisons the sum)."""
    for name, value in zip(LOSS_NAMES, sums.tolist()):
        if not math.isfinite(value):
            raise TrainingError(f"loss {name} became {value} {where}; stopped before saving it, the last "
                                f"checkpoint holds the last good state")


def log_window(state: dict, epoch: int, n_batches: int, bar: tqdm) -> None:
    """Read back the mean losses of the last few iterations (one host sync) and record a point."""
    p, steps = state["progress"], state["history"]["steps"]
    first = p["iteration"] - p["in_window"] + 1
    mean_over_ranks(p["window"], state["world"])  # the same in every process: all stop on a NaN together
    check_finite(p["window"], f"in epoch {epoch + 1}, iterations {first}-{p['iteration']}")
    means = (p["window"] / p["in_window"]).tolist()
    steps["epoch"].append(epoch + p["iteration"] / n_batches)
    for name, value in zip(LOSS_NAMES, means):
        steps[name].append(value)
    bar.set_postfix({name: f"{value:.3f}" for name, value in zip(LOSS_NAMES, means)})
    p["window"].zero_()
    p["in_window"] = 0


def train_one_epoch(state: dict, loader: DataLoader, epoch: int, run_dirs: dict) -> dict[str, float] | None:
    """Run (the rest of) one epoch; returns its loss means, or None when stopped by a signal.

    Losses stay on the device and are read back only every log_every iterations. With
    checkpoint_every, and when SIGINT/SIGTERM arrives, latest.pt is written mid-epoch.
    """
    cfg, G, D, p, world = state["cfg"], state["G_train"], state["D_train"], state["progress"], state["world"]
    G.train()
    D.train()
    n_batches = len(loader)  # the same in every process (DistributedSampler pads the shards)
    bar = tqdm(total=n_batches, initial=p["iteration"], desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               dynamic_ncols=True, disable=not world.is_main)
    # A resumed epoch skips the batches it already trained on (the order is fixed per epoch).
    for real_A, real_B in itertools.islice(loader, p["iteration"], None):
        real_A = real_A.to(state["device"], non_blocking=True)  # (N, input_nc, H, W) in [-1, 1]
        real_B = real_B.to(state["device"], non_blocking=True)
        losses = train_step(G, D, state["opt_G"], state["opt_D"], real_A, real_B, cfg.lambda_l1,
                            state["amp"], state["scaler"])
        p["total"] += losses
        p["window"] += losses
        p["in_window"] += 1
        p["iteration"] += 1
        bar.update()
        log_point = p["in_window"] == cfg.log_every or p["iteration"] == n_batches
        if log_point:
            log_window(state, epoch, n_batches, bar)
        if p["iteration"] == n_batches:
            break
        done = epoch * n_batches + p["iteration"]
        # Several processes agree on a signal only where they exchange the losses anyway, every
        # log_every iterations: all stop at the same iteration, with no extra wait per iteration.
        stop = agreed_stop(state) if log_point or world.size == 1 else False
        if stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            save_mid_epoch(state, epoch, run_dirs)
            if stop:
                bar.close()
                return None
    bar.close()
    mean_over_ranks(p["total"], world)  # epoch means over all processes' batches
    check_finite(p["total"], f"in epoch {epoch + 1}")
    means = dict(zip(LOSS_NAMES, (p["total"] / n_batches).tolist()))
    state["progress"] = new_progress(state["device"])
    return means


def agreed_stop(state: dict) -> bool:
    """Whether to stop now: in several processes, as soon as any one was asked to (a collective)."""
    if state["world"].size > 1:
        flag = torch.tensor([float(state["stop"])], device=state["device"])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        state["stop"] = bool(flag.item())
    return state["stop"]


def save_mid_epoch(state: dict, epoch: int, run_dirs: dict) -> None:
    """latest.pt within an epoch; every process calls it, rank 0 writes."""
    p, world = state["progress"], state["world"]
    # Each process's partial sums become their mean: the epoch mean is unchanged, and the saved
    # sums are those of all processes, which any number of processes can resume from.
    mean_over_ranks(p["total"], world)
    mean_over_ranks(p["window"], world)
    check_finite(p["total"], f"in epoch {epoch + 1}")
    gather_rng_states(state)
    checkpoint = checkpoint_dict(state, epoch)
    on_main(world, state["device"], lambda: save_checkpoint(checkpoint, run_dirs["checkpoints"] / "latest.pt"))


# ---------------------------------------------------------------------------------------------
# Looking at the generator: sample grids and validation
# ---------------------------------------------------------------------------------------------

def generate(state: dict, real_A: torch.Tensor) -> torch.Tensor:
    """fake_B for one (C, H, W) validation input, on the CPU, as configured (eval_mode, seed)."""
    cfg = state["cfg"]
    return translate(state["G"], real_A[None].to(state["device"]), cfg.eval_mode, cfg.seed, state["amp"])[0].cpu()


def save_samples(state: dict, val_set: PairedDataset, path: Path) -> None:
    """A grid of the first num_samples validation images: one row each, input | generated | target."""
    rows = []
    for index in range(min(state["cfg"].num_samples, len(val_set))):
        real_A, real_B = val_set[index]
        rows.append([real_A, generate(state, real_A), real_B])
    save_sample_grid(rows, path)


def validate(state: dict, val_set: PairedDataset) -> dict[str, float]:
    """Mean L1, PSNR and SSIM of the generator on the whole validation split (and FID/KID).

    One image at a time: with eval_mode false, BatchNorm normalises with the statistics of the
    batch, so a batch of one is what training and the paper's test use.
    """
    fakes, reals = [], []
    for index in tqdm(range(len(val_set)), desc="validation", leave=False, dynamic_ncols=True):
        real_A, real_B = val_set[index]
        fakes.append(generate(state, real_A))  # (C, H, W)
        reals.append(real_B)
    fake_B, real_B = torch.stack(fakes), torch.stack(reals)  # (N, C, H, W)
    _, means = evaluate(fake_B, real_B, state["cfg"].val_fid, state["device"])
    return {f"val_{name}": means[name] for name in ("L1", "PSNR", "SSIM", "FID", "KID") if name in means}


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def checkpoint_dict(state: dict, epoch: int) -> dict:
    """Everything needed to continue the run exactly, or to rebuild the generator from the file alone.

    Only tensors and plain data, so that it loads with torch.load(..., weights_only=True).
    """
    p = state["progress"]
    return {
        "generator": state["G"].state_dict(),
        "discriminator": state["D"].state_dict(),
        "opt_G": state["opt_G"].state_dict(),
        "opt_D": state["opt_D"].state_dict(),
        "sched_G": state["sched_G"].state_dict(),
        "sched_D": state["sched_D"].state_dict(),
        "scaler": state["scaler"].state_dict(),
        "epoch": epoch,  # epochs completed
        "progress": {"iteration": p["iteration"], "total": p["total"].tolist(),  # within the next epoch
                     "window": p["window"].tolist(), "in_window": p["in_window"]},
        "config": dataclasses.asdict(state["cfg"]),
        "history": state["history"],
        "rng": rng_state(),
        "world_size": state["world"].size,
        # every process's RNG state, gathered just before (gather_rng_states)
        **({"rng_ranks": state["rng_ranks"]} if state["world"].size > 1 else {}),
    }


def restore(state: dict, checkpoint: dict, path: Path) -> int:
    """Load a checkpoint into the run's state; returns the number of epochs already done."""
    # Checkpoints older than a field were made with its default (e.g. 3 input channels).
    saved = {**FIELD_DEFAULTS, **checkpoint.get("config", {})}
    changed = [f for f in ARCHITECTURE_FIELDS if saved.get(f) != getattr(state["cfg"], f)]
    if changed:
        detail = ", ".join(f"{f}={saved.get(f)!r} there, {getattr(state['cfg'], f)!r} now" for f in changed)
        raise ConfigError(f"{path} cannot continue with this config ({detail}); use another --name or "
                          f"--resume false to start over")
    check_state_dict(state["G"], checkpoint["generator"], "generator", path)
    check_state_dict(state["D"], checkpoint["discriminator"], "discriminator", path)
    for key, module in (("generator", "G"), ("discriminator", "D"), ("opt_G", "opt_G"),
                        ("opt_D", "opt_D"), ("sched_G", "sched_G"), ("sched_D", "sched_D"),
                        ("scaler", "scaler")):
        state[module].load_state_dict(checkpoint[key])
    # The optimizers saved the lr of the old schedule; a run continued with another --epochs or
    # --lr_decay_epochs must train its next epoch at the lr of the schedule it now follows.
    for opt, sched in ((state["opt_G"], state["sched_G"]), (state["opt_D"], state["sched_D"])):
        for group, base_lr, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * factor(sched.last_epoch)
    state["history"] = checkpoint["history"]
    p, device = checkpoint["progress"], state["device"]
    state["progress"] = {"iteration": p["iteration"], "total": torch.tensor(p["total"], device=device),
                         "window": torch.tensor(p["window"], device=device), "in_window": p["in_window"]}
    set_rng_state(checkpoint["rng"])
    restore_across_world_sizes(state, checkpoint, path)
    return int(checkpoint["epoch"])


def restore_across_world_sizes(state: dict, checkpoint: dict, path: Path) -> None:
    """What changes when a run continues with another number of processes (or another batch size).

    Each process takes its own saved RNG state when the number is the same, else a fresh stream
    of its own. A checkpoint from within an epoch whose batches are now cut differently restarts
    that epoch from its first batch: its iterations would not line up.
    """
    world, cfg, epoch = state["world"], state["cfg"], int(checkpoint["epoch"])
    saved_world = int(checkpoint.get("world_size", 1))
    if world.size > 1:
        ranks = checkpoint.get("rng_ranks", [])
        if len(ranks) == world.size:
            set_rng_state(ranks[world.rank])
        else:
            seed_everything(hash((cfg.seed, world.rank, epoch)) & 0xFFFFFFFF)
    saved_batch = checkpoint.get("config", {}).get("batch_size", cfg.batch_size)
    if state["progress"]["iteration"] and (saved_world, saved_batch) != (world.size, cfg.batch_size):
        if world.is_main:
            print(f"{path}: saved within epoch {epoch + 1} by {saved_world} process(es) of batch {saved_batch}; "
                  f"that epoch starts again with {world.size} of batch {cfg.batch_size}")
        state["progress"] = new_progress(state["device"])
        steps = state["history"]["steps"]
        keep = [i for i, at in enumerate(steps["epoch"]) if at <= epoch]  # drop the restarted epoch's points
        for key in steps:
            steps[key] = [steps[key][i] for i in keep]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def setup(cfg: Config, world: World | None = None, device: torch.device | None = None) -> dict:
    """Seed, pick device and precision, and build networks, optimizers and an empty history.

    In several processes (world.size > 1, device from join_process_group), the networks get
    synchronised BatchNorm (cfg.sync_bn) and DDP wrappers, state["G_train"] and state["D_train"],
    for the training step; state["G"] and state["D"] stay the bare networks, for everything else
    (generating, checkpoints without DDP's "module." prefix).
    """
    world = world or World()
    seed_everything(cfg.seed)  # the same initial weights in every process (DDP also copies rank 0's)
    # Adam's second moments and late gradients underflow into subnormal floats, which x86 CPUs
    # process up to 100x slower; flushing them to zero changes nothing measurable and saves ~25%.
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = device or resolve_device(cfg.device)
        dtype = resolve_precision(cfg.precision, device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    G, D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
    init_weights(G, cfg.init_gain)
    init_weights(D, cfg.init_gain)
    G_train, D_train = G, D
    if world.size > 1:
        if cfg.sync_bn:  # before the optimizers, though the parameters stay the same objects
            G, D = sync_batchnorm(G, device), sync_batchnorm(D, device)
        G_train, D_train = data_parallel(G, device), data_parallel(D, device)
        seed_everything(cfg.seed + world.rank)  # dropout noise differs between processes
    (opt_G, opt_D), (sched_G, sched_D) = build_optimizers(cfg, G, D)
    history = {"epochs": [], "steps": {"epoch": [], **{name: [] for name in LOSS_NAMES}}}
    return {"cfg": cfg, "device": device, "dtype": dtype, "amp": autocast(device, dtype),
            "scaler": torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
            "G": G, "D": D, "G_train": G_train, "D_train": D_train, "world": world,
            "opt_G": opt_G, "opt_D": opt_D, "sched_G": sched_G, "sched_D": sched_D,
            "history": history, "progress": new_progress(device), "stop": False}


def is_best(epochs: list[dict]) -> bool:
    """Whether the last epoch has the lowest val_L1 of the run so far."""
    scores = [row["val_L1"] for row in epochs if "val_L1" in row]
    return "val_L1" in epochs[-1] and epochs[-1]["val_L1"] == min(scores)


def write_epoch_outputs(state: dict, val_set: PairedDataset, epoch: int, run_dirs: dict) -> None:
    """The per-epoch files: sample grid, history.csv, loss and metric plots, the gallery, and the
    checkpoints latest.pt, best.pt (lowest val_L1) and epoch_NNN.pt. Validates first when due.

    Under torchrun rank 0 alone runs this (on_main), so nothing here may wait for the other
    processes: translate() normalises with rank 0's batch alone (local_norm_stats).
    """
    cfg, history, results = state["cfg"], state["history"], run_dirs["results"]
    if cfg.val_every and epoch % cfg.val_every == 0:
        history["epochs"][-1].update(validate(state, val_set))
    save_samples(state, val_set, results / "samples" / f"epoch_{epoch:03d}.png")
    write_csv(history["epochs"], results / "history.csv")
    plot_curves(history["epochs"], history["steps"], LOSS_NAMES, results / "loss.png")
    metric_names = VAL_NAMES + (FID_NAMES if cfg.val_fid else ())
    if any("val_L1" in row for row in history["epochs"]):
        plot_curves(history["epochs"], {}, metric_names, results / "metrics.png")
    write_gallery(history["epochs"], LOSS_NAMES, metric_names, results, title=f"Pix2Pix run {cfg.name}")
    checkpoint = checkpoint_dict(state, epoch)
    save_checkpoint(checkpoint, run_dirs["checkpoints"] / "latest.pt")
    if is_best(history["epochs"]):
        save_checkpoint(checkpoint, run_dirs["checkpoints"] / "best.pt")
    if cfg.save_every and epoch % cfg.save_every == 0:
        save_checkpoint(checkpoint, run_dirs["checkpoints"] / f"epoch_{epoch:03d}.pt")


def resume_point(state: dict, run_dirs: dict) -> int:
    """Continue resume_from, or latest.pt of this run when it exists; returns epochs already done."""
    cfg = state["cfg"]
    path = Path(cfg.resume_from) if cfg.resume_from else run_dirs["checkpoints"] / "latest.pt"
    if not cfg.resume_from and not (cfg.resume and path.exists()):
        return 0
    epoch = restore(state, load_checkpoint(path, state["device"]), path)
    if state["world"].is_main:
        print(f"resuming {path}: epoch {epoch + 1}, iteration {state['progress']['iteration']}")
    return epoch


def check_same_start(state: dict, epoch: int) -> None:
    """Every process must continue from the same point, or their collectives would not line up."""
    world, iteration = state["world"], state["progress"]["iteration"]
    if world.size == 1:
        return
    low = torch.tensor([epoch, iteration], dtype=torch.float64, device=state["device"])
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise DistributedError(f"rank {world.rank} would start at epoch {epoch + 1}, iteration {iteration}, "
                               f"but another process elsewhere: checkpoint_dir must be one folder that "
                               f"every machine sees")


@contextlib.contextmanager
def stop_on_signals(state: dict) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM ask to stop after the current iteration, with a checkpoint.

    Under torchrun a Ctrl-C usually reaches each process twice (from the terminal, then relayed
    by torchrun), so there repeats are ignored; torchrun kills its processes 30 s after a signal.
    """
    def ask_to_stop(signum, frame) -> None:
        world = state["world"]
        if world.is_main and not state["stop"]:
            when, again = (("after this iteration", " (again to abort)") if world.size == 1 else
                           (f"within {state['cfg'].log_every} iteration(s), all processes together", ""))
            tqdm.write(f"{signal.Signals(signum).name}: stopping {when}{again}")
        state["stop"] = True
        if world.size == 1:
            signal.signal(signum, previous[signum])  # a second signal acts at once

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(cfg: Config, world: World | None = None, device: torch.device | None = None) -> None:
    """The whole run; under torchrun, world and device come from process_group (main does it)."""
    world = world or World()
    if cfg.val_fid:
        inception_weights_path()  # a missing optional package fails now, not after the first epoch
    if world.size > 1:  # a download happens once, before every process reads the data
        in_turns(world, device, lambda: prepare_data_root(cfg))
    train_set, val_set = build_data(cfg)  # first, so that missing data fails before any work
    state = setup(cfg, world, device)
    run_dirs = {"results": Path(cfg.results_dir) / cfg.name, "checkpoints": Path(cfg.checkpoint_dir) / cfg.name}
    start_epoch = resume_point(state, run_dirs)
    check_same_start(state, start_epoch)
    on_main(world, state["device"], lambda: write_text(
        run_dirs["results"] / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"))
    loader = make_loader(train_set, cfg, state["device"], world)
    if world.is_main:
        batch = f"batch {cfg.batch_size}"
        if world.size > 1:
            batch = f"global batch {cfg.batch_size * world.size} = {cfg.batch_size} per process x {world.size} processes"
        print(f"training {cfg.name}: {len(train_set)} pairs, {cfg.direction}, {cfg.image_size} px, "
              f"{batch}, on {state['device']} in {str(state['dtype']).removeprefix('torch.')}")
    with stop_on_signals(state):
        for epoch in range(start_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            started = time.perf_counter()
            lr = state["opt_G"].param_groups[0]["lr"]
            means = train_one_epoch(state, loader, epoch, run_dirs)
            if means is None:
                break
            state["sched_G"].step()
            state["sched_D"].step()
            row = {"epoch": epoch + 1, **means, "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
            state["history"]["epochs"].append(row)
            gather_rng_states(state)
            # Rank 0 alone validates and writes; translate() needs no other process.
            on_main(world, state["device"], lambda: write_epoch_outputs(state, val_set, epoch + 1, run_dirs))
            if world.is_main:
                summary = "  ".join(f"{name} {row[name]:.4f}" for name in LOSS_NAMES + VAL_NAMES if name in row)
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  {summary}  lr {lr:.2e}  {row['seconds']:.1f}s")
            if agreed_stop(state):
                break
    if not world.is_main:
        return
    if state["stop"]:
        print(f"stopped; {run_dirs['checkpoints'] / 'latest.pt'} is saved: run the same command to resume")
    else:
        print(f"done: {run_dirs['results']} and {run_dirs['checkpoints']}")


def main() -> None:
    cfg = parse_or_exit(sys.argv[1:], description=__doc__)
    try:
        world = world_from_env()  # torchrun's RANK, LOCAL_RANK, WORLD_SIZE; else one process
        with process_group(cfg.device, world) as device:
            train(cfg, world, device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DatasetError, CheckpointError, OutputError, TrainingError, DistributedError,
            MissingPackageError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
