"""The whole training step as one CUDA graph (``--cuda_graphs auto|true``): GraphedStep.

At batch 1 the step is launch-bound on a GPU: some 600 small kernels (forward,
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

import sys
from typing import Callable

import torch

from utils import first_line

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
