"""Speed, put on from outside: everything that makes the paper's networks train and generate
faster without changing what they compute. Training, predict.py and demo.py build the stock
networks and then call ``accelerate``, which says what it applied; benchmark.py's baseline is the
same networks without that call (``--speedups false``).

- Small maps as matrix products, and bf16 weight copies that Adam writes (CPU; matmul_layers.py,
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
- The whole training step as one CUDA graph (``--cuda_graphs auto|true``: cuda_graphs.GraphedStep).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import sys
from typing import Sequence

import torch
from torch import nn

from speed.adam_copies import AdamCopyWriter, compile_adam_with_copy
from speed.matmul_layers import attach_compute_copies, is_channels_last, use_matmul_layers

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
