"""Several processes: torchrun and DistributedDataParallel, for train.py.

`torchrun --nproc_per_node N train.py` starts N copies of train.py and tells each its place in
RANK, LOCAL_RANK and WORLD_SIZE. This module turns those into a `World`, joins the process group
(nccl between GPUs, gloo between CPU processes) and offers the few agreements the training loop
needs: run something in rank 0 alone while the others wait (`on_main`), or in turns
(`in_turns`, for downloads), average a tensor over the processes, and wrap a network in DDP.
It also holds what several processes change in the networks: BatchNorm whose statistics span
every process's batch (`sync_batchnorm`). Work that rank 0 does alone generates through
evaluation/generate.py's per-image view of the generator, whose BatchNorm never synchronises.
A plain `python train.py` is a World of one process, for which every function here is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import re
import sys
import time
from typing import Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils import first_line


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in a torchrun launch; rank 0 of 1 for a plain ``python train.py``."""

    rank: int = 0  # 0 .. size-1 over all machines; rank 0 writes the files
    local_rank: int = 0  # index among the processes of this machine: picks its GPU
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DistributedError(RuntimeError):
    """The processes of a launch cannot form a group or work together; the message says why."""


def world_from_env(env: Mapping[str, str] = os.environ) -> World:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them; without them, a single process."""
    if "WORLD_SIZE" not in env:
        return World()
    try:
        world = World(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))
    except (KeyError, ValueError):
        raise DistributedError(
            "WORLD_SIZE is set but RANK and LOCAL_RANK are not both integers; "
            "start several processes with torchrun, which sets all three"
        ) from None
    if not (world.size >= 1 and 0 <= world.rank < world.size and world.local_rank >= 0):
        raise DistributedError(
            f"RANK {world.rank}, LOCAL_RANK {world.local_rank}, WORLD_SIZE {world.size}: impossible values"
        )
    return world


def rank_device(name: str, world: World) -> torch.device:
    """The device of this process in a launch: the GPU of its LOCAL_RANK (cuda:LOCAL_RANK), or the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise DistributedError(
            f"--device {name}: under torchrun every process takes the GPU of its LOCAL_RANK; "
            f"use --device cuda, auto or cpu"
        )
    if not torch.cuda.is_available():
        raise DistributedError(
            "--device cuda: CUDA is not available on this machine, so the processes cannot "
            "form an nccl group; use --device cpu (gloo)"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {world.local_rank}, but this machine has {torch.cuda.device_count()} "
            f"GPUs: start at most that many processes per machine (--nproc_per_node)"
        )
    return torch.device("cuda", world.local_rank)


def join_process_group(device_name: str, world: World) -> torch.device:
    """Join the group of a torchrun launch: nccl between GPUs, gloo between CPU processes."""
    device = rank_device(device_name, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or not dist.is_backend_available(backend):
        raise DistributedError(
            f"this PyTorch build has no {backend} backend, which --device {device_name} needs"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        # device_id binds nccl to this process's GPU at once, so a broken GPU setup fails here.
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    except Exception as err:  # rendezvous, network and backend failures come as many types
        reason = first_line(err) or type(err).__name__
        raise DistributedError(
            f"rank {world.rank} cannot form the {backend} process group of {world.size} processes ({reason})"
        ) from None
    return device


@contextlib.contextmanager
def process_group(device_name: str, world: World) -> Iterator[torch.device | None]:
    """Under torchrun, be in the group for the whole run and leave it at the end, also after an error.

    Yields this process's device, or None for a single process (the caller then resolves it).
    """
    if world.size == 1:
        yield None
        return
    device = join_process_group(device_name, world)
    try:
        yield device
        if device.type == "cpu":
            settle_gloo(device)  # only after a run that ended together: a collective needs all
    except RuntimeError as err:
        if isinstance(err, DistributedError) or not lost_peer(err):
            raise
        raise DistributedError(
            f"rank {world.rank} lost contact with another process of the launch ({peer_reason(err)}); "
            f"it stopped or its machine did (its own output says why): run the same command to resume "
            f"from the last checkpoint"
        ) from None
    finally:
        dist.destroy_process_group()


SETTLE_TIMEOUT_S = 5.0  # the most a process waits for gloo to let go of the last collective


def settle_gloo(device: torch.device, timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
    """One last all-reduce, then wait until gloo's worker thread has let go of its tensor.

    DistributedDataParallel keeps the gloo process group alive in C++ after
    destroy_process_group, so its worker threads outlive the run. A worker that is still
    releasing a collective's tensor when the interpreter shuts down needs the GIL of an
    interpreter that is going away, and the process aborts ("terminate called without an active
    exception") after a run that succeeded. The worker lets go a moment after the collective
    returns; waiting for that (while the GIL is free) leaves no such work behind.
    True once let go, False after `timeout_s`.
    """
    return released_after(dist.all_reduce, torch.zeros(1, device=device), timeout_s)


def released_after(use: Callable[[torch.Tensor], object], tensor: torch.Tensor, timeout_s: float) -> bool:
    """Call `use(tensor)`, then wait until whatever it handed the tensor to has let go of it: the
    tensor's C++ use count back to 1 and its Python reference count back to what it was (C++ keeps
    one Python reference while it holds the tensor and returns it under the GIL, the last thing a
    releasing thread needs the interpreter for). Sleeping frees the GIL for that thread.
    False if something still holds it after `timeout_s`."""
    alone = sys.getrefcount(tensor)
    use(tensor)
    # Tensor._use_count is torch's own, not promised: tests/training/test_ddp.py checks it.
    deadline = time.monotonic() + timeout_s
    while tensor._use_count() > 1 or sys.getrefcount(tensor) > alone:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# What gloo and NCCL say when a collective finds that another process is gone or does not answer.
PEER_LOST_MARKS = ("gloo/transport", "ProcessGroupGloo", "ProcessGroupNCCL", "NCCL communicator", "by peer")


def lost_peer(err: BaseException) -> bool:
    """Whether `err`, raised in a collective (an all-reduce, DDP's gradient reduction, synchronised
    BatchNorm), says that another process of the group is gone: torch's DistError types, or the
    plain RuntimeError that gloo raises. Any other RuntimeError is a bug to show in full."""
    return isinstance(err, dist.DistError) or any(mark in str(err) for mark in PEER_LOST_MARKS)


def peer_reason(err: BaseException) -> str:
    """gloo's message without its source location and its advice: "Read error [127.0.0.1]:55526:
    Connection reset by peer"."""
    text = first_line(err) or type(err).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically")[0].rstrip(".")


def all_agree(world: World, device: torch.device | None, ok: bool) -> bool:
    """True when `ok` holds in every process (a collective: every process must call it)."""
    if world.size == 1:
        return ok
    flag = torch.tensor([float(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def on_main(world: World, device: torch.device | None, work: Callable[[], object]) -> None:
    """Run `work` (writing files) in rank 0 alone while the others wait; if it fails, all stop.

    Waiting here keeps the others from racing ahead of rank 0's writes, and a failure in rank 0
    stops every process with an error instead of leaving them blocked in the next collective.
    """
    if world.size == 1:
        work()
        return
    run_and_agree(
        world, device, world.is_main, work, "rank 0 failed (its error line says why); every process stops"
    )


def run_and_agree(
    world: World, device: torch.device | None, mine: bool, work: Callable[[], object], others_failed: str
) -> None:
    """Run `work` where `mine` is true, then let every process learn whether it failed anywhere."""
    error = None
    if mine:
        try:
            work()
        except Exception as err:  # re-raised below, after telling the others
            error = err
    if not all_agree(world, device, error is None):
        raise error if error is not None else DistributedError(others_failed)


def in_turns(world: World, device: torch.device | None, work: Callable[[], object]) -> None:
    """Run `work` (e.g. a download) in rank 0 first, then in the first process of every other
    machine, then in the rest, so that a shared disk or each machine's own disk gets it once;
    if it fails anywhere, every process stops."""
    if world.size == 1:
        work()
        return
    for turn in (world.rank == 0, world.rank != 0 and world.local_rank == 0, world.local_rank != 0):
        run_and_agree(
            world, device, turn, work, "another process could not prepare the data (its error line says why)"
        )


def mean_over_ranks(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """In place: every process's tensor becomes the mean over all processes (one process: unchanged)."""
    if world.size > 1:
        dist.all_reduce(tensor)
        tensor /= world.size
    return tensor


def data_parallel(net: nn.Module, device: torch.device) -> DistributedDataParallel:
    """Average the gradients over the processes after every backward.

    forward_sync_buffers False: the BatchNorm running averages are not re-broadcast from rank 0
    before every forward. With sync_bn every process computes the same ones anyway; without it
    each process keeps the averages of its own batches, and rank 0's are saved.
    """
    return DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )


def any_rank(world: World, device: torch.device | None, flag: bool) -> bool:
    """True when `flag` holds in at least one process (a collective: every process must call it)."""
    return not all_agree(world, device, not flag)


def check_same_start(world: World, device: torch.device | None, epoch: int, iteration: int) -> None:
    """Every process must continue from the same point, or their collectives would not line up."""
    if world.size == 1:
        return
    low = torch.tensor([epoch, iteration], dtype=torch.float64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise DistributedError(
            f"rank {world.rank} would start at epoch {epoch + 1}, iteration {iteration}, "
            f"but another process elsewhere: checkpoint_dir must be one folder that "
            f"every machine sees"
        )


def gather_objects(world: World, obj: object) -> list:
    """Every process's `obj` (tensors and plain data), in rank order (a collective)."""
    # As torch.save bytes: all_gather_object's own pickling of tensors fails to load in torch 2.14.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    blobs: list = [None] * world.size
    dist.all_gather_object(blobs, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]


# ---------------------------------------------------------------------------------------------
# BatchNorm across processes
# ---------------------------------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """Sum a tensor over all processes of the group.

    Every process's loss depends on the sum (through the shared batch statistics), so the gradient
    of the sum on each process is the sum of every process's gradient with respect to it.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batches of all processes together.

    torch.nn.SyncBatchNorm runs only on GPUs (its kernels are CUDA ones), so CPU processes (gloo)
    use this one: two small all-reduces per layer (sum and count, then squared deviations from the
    global mean: the two-pass variance, which does not cancel like E[x^2] - E[x]^2). Outside
    training, or in a single process, it is plain BatchNorm2d; its state_dict is the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        xf = x.float()  # statistics in fp32, also under autocast
        dims = (0, 2, 3)  # per channel, over the batch and the pixels
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        sums = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))  # (C + 1,)
        n = sums[-1]
        if n.item() <= 1:  # the same n in every process, so all raise together
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        mean = (sums[:-1] / n)[None, :, None, None]  # (1, C, 1, 1)
        centred = xf - mean
        var = (_SumOverRanks.apply(centred.square().sum(dims)) / n)[None, :, None, None]  # biased, as BN
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.flatten().detach(), var.flatten().detach(), n.detach())
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """As BatchNorm2d does: exponential (or cumulative) averages, with the unbiased variance."""
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * n / (n - 1), alpha=factor)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Turn every BatchNorm2d of `module` into a synchronised one that keeps its parameters and buffers.

    torch's SyncBatchNorm (fused CUDA kernels) on GPUs, SyncBatchNorm2d elsewhere. The parameters
    stay the same objects, and the state_dict keys stay the same, so checkpoints load either way.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = SyncBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            for key, tensor in itertools.chain(
                child.named_parameters(recurse=False), child.named_buffers(recurse=False)
            ):
                setattr(synced, key, tensor)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module
