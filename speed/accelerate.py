"""Speed, put on from outside: everything that makes the paper's networks train and generate
faster without changing what they compute. train.py, predict.py and demo.py build the stock
networks and then call ``accelerate``, which says what it applied; benchmark.py's baseline is the
same networks without that call.

- Small maps as matrix products, and bf16 weight copies that Adam writes (CPU; fast_layers.py,
  adam_copies.py): the layers are replaced by twins sharing their Parameter objects, so the
  parameters, the state_dict keys and the optimizers stay the same.
- channels_last activations (CUDA, and bf16 on the CPU, where the convolutions run fastest in NHWC):
  a forward pre-hook on each network puts its inputs in that layout. On the CPU the weights with
  bf16 copies are put in channels_last too (as ``module.to(memory_format=...)`` does), so the
  copies, their gradients, the fp32 weights and Adam's moments share one layout; on CUDA the
  weights stay NCHW.
- Norm gradients in the layout of the norm's input (the CPU). Where the U-Net's skip connection
  joins a level's output to its input (torch.cat), autograd hands the level's last BatchNorm a
  channel slice of the joined gradient; in channels_last that slice is dense in neither layout, and
  BatchNorm's CPU backward then takes a slow strided path. A forward hook on each BatchNorm gives
  its output a gradient hook that makes the gradient dense first (a copy of one activation).
- Freed memory kept for reuse (the CPU). A training step allocates and frees some 100 MB of large
  tensors. glibc returns large blocks to the kernel on free and gets fresh, zeroed pages on the next
  allocation: tens of thousands of page faults per step. ``keep_freed_memory`` raises glibc's mmap
  and trim thresholds once, so freed blocks stay in the heap and are reused.
- The whole training step as one CUDA graph (``--cuda_graphs auto|true``, ``GraphedStep`` below).

CUDA graphs. At batch 1 the step is launch-bound on a GPU: some 600 small kernels (forward,
backward and the two fused Adam updates) whose launches cost more than their arithmetic. A CUDA
graph records them once and replays them with one launch. What it takes (PyTorch's "whole network
capture"):

- a few eager warm-up steps on a side stream first (cuDNN picks its algorithms, Adam creates its
  state), then one capture of the step on fixed input buffers; every later step copies its batch
  into those buffers and replays;
- Adam must allow capture (``capturable``, switched on only while capturing: the fused kernel
  already keeps its step counts on the GPU, so replays compute the right bias corrections). The
  learning rate is a number baked into the graph, so the graph is captured again whenever the lr
  schedule changes it (once per epoch in the decay phase) or the batch shape changes;
- dropout draws from PyTorch's graph-safe generator, so each replay gets new masks;
- not with fp16 (GradScaler decides on the host whether to skip a step) nor under torchrun.

Any failure to capture prints one line and the run goes on with eager steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from speed.adam_copies import AdamCopyWriter, compile_adam_with_copy
from speed.matmul_layers import attach_compute_copies, is_channels_last, use_matmul_layers
from utils import first_line

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@dataclasses.dataclass
class Acceleration:
    """What accelerate() applied."""

    matmul_layers: int = 0  # convolutions computed as matrix products on small CPU maps
    compute_copies: int = 0  # weights with a bf16 compute copy
    fused_adam: bool = False  # Adam writes those copies in one compiled loop
    channels_last: bool = False  # activations in NHWC
    dense_norm_gradients: int = 0  # BatchNorm layers whose output gradient is made dense first
    keep_freed_memory: bool = False  # glibc keeps freed blocks for reuse

    def describe(self) -> str:
        parts = [
            f"{self.matmul_layers} small-map matmul convolutions" if self.matmul_layers else "",
            f"bf16 copies of {self.compute_copies} weights" if self.compute_copies else "",
            "fused Adam" if self.fused_adam else "",
            "channels_last" if self.channels_last else "",
            f"dense gradients for {self.dense_norm_gradients} BatchNorms"
            if self.dense_norm_gradients
            else "",
            "freed memory kept" if self.keep_freed_memory else "",
        ]
        return ", ".join(p for p in parts if p) or "nothing"


def accelerate(
    networks: Sequence[tuple[nn.Module, torch.optim.Optimizer | None]],
    device: torch.device,
    dtype: torch.dtype,
    processes: int = 1,
) -> Acceleration:
    """Make each (network, its Adam optimizer or None) fast on `device` computing in `dtype`.

    Call it after the optimizers are built and before any DDP wrapper. Compute copies only in one
    process: under DDP the gradients must arrive on the parameters, where DDP averages them."""
    done = Acceleration()
    done.channels_last = device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16)
    if device.type == "cpu":
        done.keep_freed_memory = keep_freed_memory()
        with_copies = dtype == torch.bfloat16 and processes == 1
        # Compiled once for all optimizers (a failure warns once, and Adam's own step takes over).
        kernel = compile_adam_with_copy() if with_copies and any(opt for _, opt in networks) else None
        done.fused_adam = kernel is not None
        for net, optimizer in networks:
            done.matmul_layers += use_matmul_layers(net, done.channels_last)
            if with_copies and done.channels_last:
                # The weights in the layout the layers compute in: their copies, gradients and Adam's
                # moments then share it (checkpoints keep the standard layout: save_checkpoint).
                net.to(memory_format=torch.channels_last)
            copies = attach_compute_copies(net, dtype) if with_copies else {}
            done.compute_copies += len(copies)
            if optimizer is not None and copies:
                AdamCopyWriter(optimizer, copies, kernel)
            for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
                norm.register_forward_hook(dense_output_gradient)
                done.dense_norm_gradients += 1
    if done.channels_last:
        for net, _ in networks:
            net.register_forward_pre_hook(channels_last_inputs)
    return done


def channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: the network's (N, C, H, W) inputs in channels_last (NHWC)."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
        for a in args
    )


def dense_output_gradient(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    """A forward hook: the gradient that reaches this layer's backward is dense in the layout of
    its input (see above). A no-op copy-free check where it already is."""
    if not output.requires_grad:
        return
    layout = torch.channels_last if is_channels_last(args[0]) else torch.contiguous_format
    output.register_hook(lambda grad: grad.contiguous(memory_format=layout))


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of unmapping them (see above); once per
    process, Linux/glibc only (elsewhere nothing changes). Returns whether it is in effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Blocks up to 1 GiB come from the heap, and up to 2 GiB free at its top is kept.
        mmap = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        return bool(mmap) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl, say): leave the allocator alone
        return False


WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's examples use 3; DDP would need 11)


class GraphedStep:
    """train_step's body, captured and replayed; `eager(state, real_A, real_B)` is the step itself."""

    def __init__(self, eager: Callable) -> None:
        self.eager = eager
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.losses: torch.Tensor | None = None
        self.warm = 0
        self.failed = False

    @staticmethod
    def usable(state) -> bool:
        return (
            state.device.type == "cuda"
            and state.dtype != torch.float16
            and state.world.size == 1
            and torch.cuda.is_available()
        )

    def __call__(self, state, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(state, real_A, real_B)
        key = (
            tuple(real_A.shape),
            tuple(real_B.shape),
            real_A.dtype,
            state.opt_G.param_groups[0]["lr"],
            state.opt_D.param_groups[0]["lr"],
        )
        if self.graph is None or key != self.key:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                return self._side_stream_step(state, real_A, real_B)
            try:
                self._capture(state, real_A, real_B, key)
            except Exception as err:  # a capture failure is not a training failure
                self._give_up(state, err)
                return self.eager(state, real_A, real_B)
        self.inputs[0].copy_(real_A, non_blocking=True)
        self.inputs[1].copy_(real_B, non_blocking=True)
        self.graph.replay()
        return self.losses.clone()

    def _side_stream_step(self, state, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
        side = torch.cuda.Stream(device=state.device)
        side.wait_stream(torch.cuda.current_stream(state.device))
        with torch.cuda.stream(side):
            losses = self.eager(state, real_A, real_B)
        torch.cuda.current_stream(state.device).wait_stream(side)
        return losses

    def _capture(self, state, real_A: torch.Tensor, real_B: torch.Tensor, key: tuple) -> None:
        self.graph = self.inputs = self.losses = None  # the previous graph's memory goes back first
        torch.cuda.synchronize(state.device)
        inputs = (real_A.clone(), real_B.clone())
        graph = torch.cuda.CUDAGraph()
        optimizers = (state.opt_D, state.opt_G)
        saved = [[group.get("capturable", False) for group in opt.param_groups] for opt in optimizers]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph's memory
            for group in opt.param_groups:
                group["capturable"] = True
        try:
            with torch.cuda.graph(graph):
                losses = self.eager(state, *inputs)
        finally:
            for opt, flags in zip(optimizers, saved):
                for group, flag in zip(opt.param_groups, flags):
                    group["capturable"] = flag
        self.graph, self.inputs, self.losses, self.key = graph, inputs, losses, key

    def _give_up(self, state, err: Exception) -> None:
        self.failed, self.graph, self.inputs, self.losses = True, None, None, None
        print(
            f"--cuda_graphs: capturing the training step failed ({type(err).__name__}: "
            f"{first_line(err)}); training goes on without CUDA graphs",
            file=sys.stderr,
        )
        torch.cuda.synchronize(state.device)
        for opt in (state.opt_D, state.opt_G):
            opt.zero_grad(set_to_none=True)
