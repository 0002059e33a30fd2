"""What train.py does for speed beyond the layers: keeping freed memory for reuse on the CPU, and
the whole training step as one CUDA graph on a GPU.

Freed memory (the CPU). A training step allocates and frees some 100 MB of large tensors
(activations, weight gradients). glibc's malloc returns large blocks to the kernel on free and
gets fresh pages on the next allocation: some 25,000 page faults per step, each page zeroed by the
kernel, 5-10 % of the step. ``keep_freed_memory`` raises glibc's mmap and trim thresholds once, so
freed blocks stay in the heap and are reused (peak memory grows by some 20 MB).

CUDA graphs (``--cuda_graphs true``).

At batch 1 the step is launch-bound on a GPU: some 600 small kernels (forward, backward and the
two fused Adam updates) whose launches cost more than their arithmetic. A CUDA graph records them
once and replays them with one launch. What it takes (PyTorch's "whole network capture"):

- a few eager warm-up steps on a side stream first (cuDNN picks its algorithms, Adam creates its
  state), then one capture of the step on fixed input buffers; every later step copies its batch
  into those buffers and replays;
- Adam must allow capture (``capturable``, switched on only while capturing: the fused kernel
  already keeps its step counts on the GPU, so replays compute the right bias corrections). The
  learning rate is a number baked into the graph, so the graph is captured again whenever the lr
  schedule changes it (once per epoch in the decay phase) or the batch shape changes;
- dropout draws from PyTorch's graph-safe generator, so each replay gets new masks;
- not with fp16 (GradScaler decides on the host whether to skip a step) nor under torchrun.

Any failure to capture prints one warning line and the run goes on with eager steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import warnings
from typing import Callable

import torch

from utils import first_line

TUNE_MALLOC = True  # benchmark.py's baseline turns it off: plain PyTorch
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of unmapping them (see above); once per
    process, Linux/glibc only (elsewhere nothing changes). Returns whether it is in effect."""
    global _malloc_tuned
    if _malloc_tuned or not TUNE_MALLOC or not sys.platform.startswith("linux"):
        return _malloc_tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Blocks up to 1 GiB come from the heap, and up to 2 GiB free at its top is kept.
        _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        )
    except (OSError, AttributeError):  # not glibc (musl, say): leave the allocator alone
        _malloc_tuned = False
    return _malloc_tuned


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
        warnings.warn(
            f"--cuda_graphs: capturing the training step failed ({type(err).__name__}: "
            f"{first_line(err)}); training goes on without CUDA graphs",
            stacklevel=3,
        )
        torch.cuda.synchronize(state.device)
        for opt in (state.opt_D, state.opt_G):
            opt.zero_grad(set_to_none=True)
