"""Adam that also writes the bf16 compute copies of the weights it updates (matmul_layers.py).

accelerate() attaches it to a torch.optim.Adam through the optimizer's own step hooks:
before Adam's step it updates each weight whose bf16 copy received a gradient, from that gradient,
in one compiled loop that reads the weight, both moments and the gradient once and writes the
weight, both moments and the new copy once; the weights left with a .grad of their own go through
Adam's step as always. The optimizer's state and state_dict stay exactly torch.optim.Adam's, so
checkpoints do not depend on whether a run was accelerated.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable

import torch
from torch import nn

from speed.matmul_layers import ComputeCopy, in_layout_of
from utils import first_line


def adam_with_copy(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    copy: torch.Tensor,
    step_size: torch.Tensor,
    bias_correction2_sqrt: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """One Adam update (torch's fused Adam arithmetic, weight decay 0) of flat fp32 param and
    moments from a low-precision gradient, also writing the low-precision copy of the result."""
    g = grad.float()
    m = exp_avg * beta1 + g * (1 - beta1)
    v = exp_avg_sq * beta2 + g * g * (1 - beta2)
    p = param - step_size * m / (v.sqrt() / bias_correction2_sqrt + eps)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(p)
    copy.copy_(p)


def compile_adam_with_copy() -> Callable | None:
    """adam_with_copy compiled into one loop (torch.compile), or None with a one-line warning when
    the compiler stack fails (no C++ compiler, say): the caller then takes Adam's own step."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" notes
    try:
        # dynamic_threads: a parallel loop whatever the probe's size. Without it Inductor sizes the
        # loop by the 8-element probe below and compiles it serial, so the update of the 57 M
        # weights, bound by memory traffic, ran on one core only.
        options = {"cpp.dynamic_threads": True}  # torch_internals.INDUCTOR_DYNAMIC_THREADS
        kernel = torch.compile(adam_with_copy, dynamic=True, fullgraph=True, options=options)
        probe = [torch.zeros(8) for _ in range(4)]
        half = probe[1].bfloat16()
        kernel(
            probe[0],
            half,
            probe[2],
            probe[3],
            half.clone(),
            torch.tensor(0.1),
            torch.tensor(1.0),
            0.5,
            0.999,
            1e-8,
        )
        return kernel
    except Exception as err:  # any failure of the compiler stack: the plain route works
        warnings.warn(
            f"the fused bf16 Adam step could not be compiled ({type(err).__name__}: "
            f"{first_line(err)}); using the slower plain step",
            stacklevel=2,
        )
        return None


def one_dense_layout(*tensors: torch.Tensor) -> bool:
    """Whether the tensors are dense (no gaps, no overlaps) in one and the same memory layout, so
    that an elementwise update may run over their memory in order."""
    first = tensors[0]
    dense = first.is_contiguous() or first.is_contiguous(memory_format=torch.channels_last)
    return dense and all(t.shape == first.shape and t.stride() == first.stride() for t in tensors)


def in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a flat view, in the order they lie in memory (NCHW or
    channels_last alike)."""
    return tensor.as_strided((tensor.numel(),), (1,))


def moments_in_weight_layout(optimizer: torch.optim.Optimizer) -> None:
    """After Adam's load_state_dict: its moments in their weights' layout. A checkpoint holds them
    in the standard layout, the weights of a channels_last network are channels_last, and torch's
    own fused Adam would combine the two element by element in memory order, i.e. wrongly."""
    for p, state in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state.get(key)
            if isinstance(moment, torch.Tensor):
                state[key] = in_layout_of(moment, p)


class AdamCopyWriter:
    """Makes one torch.optim.Adam update its weights from their compute copies' gradients."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        copies: dict[nn.Parameter, ComputeCopy],
        kernel: Callable | None,
    ) -> None:
        self.copies, self.kernel = copies, kernel
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.step_copies(opt))
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.refresh_copies())
        optimizer.register_load_state_dict_post_hook(moments_in_weight_layout)

    def refresh_copies(self) -> None:
        """After Adam's step: rewrite the copies whose weights Adam's own step updated (torch's
        fused Adam does not bump the version counter, so ComputeCopy.current() would not notice)."""
        for copy in self.copies.values():
            if copy.version is None:
                copy.version = -1
                copy.current()

    def step_copies(self, optimizer: torch.optim.Optimizer) -> None:
        """Before Adam's step: update each weight whose copy has a gradient, as Adam would, and
        consume that gradient; the weights left with .grad go through Adam's own step."""
        for group in optimizer.param_groups:
            fused = self.kernel is not None and not (
                group["weight_decay"] or group["amsgrad"] or group["maximize"]
            )
            for p in group["params"]:
                copy = self.copies.get(p)
                grad = copy.take_grad() if copy is not None else None
                if grad is None:
                    continue
                state = optimizer.state[p]
                moments = [state.get(k, p) for k in ("exp_avg", "exp_avg_sq")]
                if not fused or not one_dense_layout(p, grad, *moments):
                    p.grad = grad.float()  # Adam's own step takes it; refresh_copies rewrites the copy
                    copy.version = None
                    continue
                self._fused_update(p, grad, state, group, copy)

    def _fused_update(
        self, p: nn.Parameter, grad: torch.Tensor, state: dict, group: dict, copy: ComputeCopy
    ) -> None:
        if not state:  # as torch.optim.Adam initialises it, so state_dicts are interchangeable
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        step_size = torch.tensor(group["lr"] / (1 - beta1**step))
        bias_correction2_sqrt = torch.tensor(math.sqrt(1 - beta2**step))
        with torch.no_grad():
            self.kernel(
                in_memory_order(p),
                in_memory_order(grad),
                in_memory_order(state["exp_avg"]),
                in_memory_order(state["exp_avg_sq"]),
                in_memory_order(copy.tensor.detach()),
                step_size,
                bias_correction2_sqrt,
                beta1,
                beta2,
                group["eps"],
            )
        copy.written()
