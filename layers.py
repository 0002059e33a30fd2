"""Building blocks of the two networks: normalisation, initialisation, convolutions that are fast
on the CPU, their bf16 compute copies and the memory layout they run fastest in, plus the small
switches the training loop flips on a network (frozen weights, frozen BatchNorm statistics)."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from utils import first_line


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm (the paper's choice) or InstanceNorm, with learned scale and shift for both."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The paper's initialisation: conv weights ~ N(0, gain), norm scales ~ N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


# oneDNN, PyTorch's CPU convolution library, is tuned for large feature maps. On the U-Net's inner
# levels at batch 1 (16x16 pixels and less, 512-1024 channels) its forward+backward runs 1.3-3x slower than
# the same arithmetic as one matrix product, in fp32 and in bf16 alike (docs/performance.md).
# These two subclasses keep the parameters, state_dict and results of nn.Conv2d /
# nn.ConvTranspose2d and only take that route for small maps on the CPU; everywhere else they are
# the stock layers. They also use the weight's compute copy when it has one (see below).
SMALL_MAP_PIXELS = 16 * 16


def _small_cpu_map(x: torch.Tensor) -> bool:
    """Small enough for the matrix product: the batch's pixels (the product's other dimension) at
    most SMALL_MAP_PIXELS. A batch of 16 (validation) takes it only for maps up to 4x4."""
    # Exported graphs (ONNX, TorchScript) get the stock layers: they run elsewhere, at any size.
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return x.device.type == "cpu" and x.shape[0] * x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS


def _compute_weight(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weight as this call computes with it: under CPU autocast to a low-precision dtype, the
    module's compute copy (kept by the optimizer, see attach_compute_copies) or else a cast of the
    parameter itself (a contiguous cast, cached by autocast within its region) rather than the
    strided cast of a reshaped view that the matrix products below would otherwise get."""
    weight = module.weight
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or weight.dtype != torch.float32:
        return weight
    copy = module.__dict__.get("compute_copy")
    if copy is not None and copy.dtype == torch.get_autocast_dtype("cpu"):
        return copy.current()
    return weight.to(torch.get_autocast_dtype("cpu"))


def same_format(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The matrix-product result in the input's memory format (channels_last in, channels_last out).
    A 1x1 map is contiguous in both formats: its result takes the layout its dtype computes
    fastest in, else the U-Net's decoder would run in NCHW from its 1x1 bottleneck on."""
    if x.dim() != 4:
        return out
    if x.shape[-2:] == (1, 1):
        channels_last = channels_last_pays(out.device, out.dtype)
    else:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed as unfold + matmul for small CPU feature maps at batch 1 (groups=1,
    dilation=1). For batches oneDNN is faster: unfold of a batch, and a batched product that
    repeats the weight per image, cost more than they save (docs/performance.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _compute_weight(self, x)
        if (
            x.shape[0] != 1
            or not _small_cpu_map(x)
            or self.groups != 1
            or self.dilation != (1, 1)
            or self.padding_mode != "zeros"
        ):
            return self._conv_forward(x, weight, self.bias)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        cols = F.unfold(
            x.to(weight.dtype), self.kernel_size, padding=self.padding, stride=self.stride
        )  # (N, C_in*kh*kw, L)
        out = torch.matmul(weight.flatten(1), cols)  # (N, C_out, L)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None]
        return same_format(out.view(n, -1, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1), x)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as matmul + fold for small CPU feature maps (groups=1, dilation=1)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        weight = _compute_weight(self, x)
        if (
            not _small_cpu_map(x)
            or output_size is not None
            or self.groups != 1
            or self.dilation != (1, 1)
            or self.output_padding != (0, 0)
        ):
            if weight is self.weight:
                return super().forward(x, output_size)
            output_padding = self._output_padding(
                x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
            )
            return F.conv_transpose2d(
                x, weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
            )
        n, c_in, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # Every input pixel spreads a (C_out, kh, kw) patch; fold sums the overlapping patches.
        x = x.to(weight.dtype)
        if n == 1:
            cols = torch.matmul(weight.flatten(1).t(), x.reshape(n, c_in, h * w))  # (N, C_out*kh*kw, h*w)
        else:  # one product for the whole batch: pixels as rows (a view of channels_last input)
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in)
            cols = (rows @ weight.flatten(1)).view(n, h * w, -1).transpose(1, 2)  # (N, C_out*kh*kw, h*w)
        size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        out = F.fold(
            cols, size, self.kernel_size, padding=self.padding, stride=self.stride
        )  # (N, C_out, H, W)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None, None]
        return same_format(out, x)


CHANNELS_LAST = True  # benchmark.py's baseline turns it off: plain PyTorch


def channels_last_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether activations should be channels_last (NHWC): on CUDA, and for bf16 on the CPU, where
    oneDNN's AMX/AVX-512 bf16 convolutions work in NHWC and NCHW costs a reorder per layer; fp32
    on the CPU runs faster in NCHW (docs/performance.md). Only activations: the weights stay NCHW
    (Adam's state must have its weight's layout; checkpoints move between devices)."""
    return CHANNELS_LAST and (device.type == "cuda" or dtype == torch.bfloat16)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The dtype the convolutions compute in here: autocast's, or float32 outside autocast."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def compute_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A (N, C, H, W) network input in the memory format its convolutions run fastest in, for
    computing in `dtype` (default: as autocast says here)."""
    if x.dim() == 4 and channels_last_pays(x.device, dtype or autocast_dtype(x.device)):
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------------------------------------
# Compute copies: bf16 weights that the optimizer writes, instead of autocast casting them
# ---------------------------------------------------------------------------------------------
# Under CPU autocast every forward casts each fp32 weight to bf16, and every backward turns the
# bf16 weight gradient back into fp32 for Adam: two extra passes over the 57 M weights per step,
# where the U-Net's inner layers are bound by memory traffic, not arithmetic. Instead, each
# convolution keeps a bf16 copy of its weight (not a parameter: the fp32 weights stay the
# parameters, the state_dict and the checkpoints); forward and backward use the copy, so its
# gradient arrives in bf16, and the optimizer updates the fp32 weight from that gradient and
# writes the new bf16 copy in the same pass (one compiled kernel). The arithmetic is autocast's:
# the copy is the same rounding of the same fp32 weight, the gradient the same bf16 numbers.


class ComputeCopy:
    """The low-precision copy of one fp32 parameter; current() refreshes it if the parameter was
    changed by anything else than the optimizer (loading a checkpoint, init_weights)."""

    def __init__(self, param: nn.Parameter, dtype: torch.dtype) -> None:
        self.param, self.dtype = param, dtype
        self.tensor = torch.empty_like(param, dtype=dtype).requires_grad_(param.requires_grad)
        self.version: int | None = -1  # the parameter's version counter when the copy was last written

    def current(self) -> torch.Tensor:
        if self.version != self.param._version:
            with torch.no_grad():
                self.tensor.copy_(self.param)
            self.version = self.param._version
        return self.tensor


def _adam_with_copy(
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


class _FusedUpdate:
    """_adam_with_copy compiled into one loop (torch.compile: one C++ kernel reading param, both
    moments and the gradient once and writing param, moments and copy once), compiled on first
    use. If compiling fails (no C++ compiler, say) it says so in one line and returns None, and
    the caller takes the plain route."""

    def __init__(self) -> None:
        self.kernel, self.failed = None, False

    def get(self):
        if self.kernel is None and not self.failed:
            import logging
            import warnings

            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" notes
            try:
                # dynamic_threads: a parallel loop whatever the probe's size. Without it Inductor sizes
                # the loop by the 8-element probe below and compiles it serial, so the update of the
                # 57 M weights, bound by memory traffic, ran on one core only.
                kernel = torch.compile(
                    _adam_with_copy, dynamic=True, fullgraph=True, options={"cpp.dynamic_threads": True}
                )
                probe = [torch.zeros(8) for _ in range(4)]
                kernel(
                    probe[0],
                    probe[1].bfloat16(),
                    probe[2],
                    probe[3],
                    probe[1].bfloat16(),
                    torch.tensor(0.1),
                    torch.tensor(1.0),
                    0.5,
                    0.999,
                    1e-8,
                )
                self.kernel = kernel
            except Exception as err:  # any failure of the compiler stack: the plain route works
                self.failed = True
                warnings.warn(
                    f"the fused bf16 Adam step could not be compiled ({type(err).__name__}: "
                    f"{first_line(err)}); using the slower plain step",
                    stacklevel=2,
                )
        return self.kernel


FUSED_UPDATE = _FusedUpdate()


def attach_compute_copies(
    module: nn.Module, optimizer: torch.optim.Optimizer | None, dtype: torch.dtype
) -> int:
    """Give every Conv2d/ConvTranspose2d of `module` a `dtype` compute copy of its weight, which
    the layers use under CPU autocast to `dtype`, and make `optimizer` (a torch.optim.Adam of
    those parameters, weight decay 0; None for inference) update those weights from their
    copies' gradients.

    The optimizer's state and state_dict stay those of torch.optim.Adam. Returns the number of
    weights that got a copy."""
    copies: dict[torch.Tensor, ComputeCopy] = {}
    for m in module.modules():
        if (
            isinstance(m, (Conv2d, ConvTranspose2d))
            and m.weight.dtype == torch.float32
            and "compute_copy" not in m.__dict__
        ):
            m.compute_copy = ComputeCopy(m.weight, dtype)  # a plain attribute: not in the state_dict
            copies[m.weight] = m.compute_copy
    if copies and optimizer is not None:
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: _step_copies(opt, copies))
        optimizer.register_step_post_hook(lambda opt, args, kwargs: _refresh_copies(copies))
    return len(copies)


def _refresh_copies(copies: dict[torch.Tensor, ComputeCopy]) -> None:
    """After optimizer.step(): rewrite the copies whose weights Adam's own step updated (torch's
    fused Adam does not bump the version counter, so current() would not notice)."""
    for copy in copies.values():
        if copy.version is None:
            copy.version = -1
            copy.current()


def _step_copies(optimizer: torch.optim.Optimizer, copies: dict[torch.Tensor, ComputeCopy]) -> None:
    """Before optimizer.step(): update each weight whose copy has a gradient, as Adam would, and
    consume that gradient; the weights left with .grad go through Adam's own step."""
    kernel = FUSED_UPDATE.get()
    for group in optimizer.param_groups:
        fused_ok = kernel is not None and not (group["weight_decay"] or group["amsgrad"] or group["maximize"])
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            copy = copies.get(p)
            if copy is None or copy.tensor.grad is None:
                continue
            grad, copy.tensor.grad = copy.tensor.grad, None
            state = optimizer.state[p]
            if not fused_ok or not all(
                t.is_contiguous() for t in (p, grad, *(state.get(k, p) for k in ("exp_avg", "exp_avg_sq")))
            ):
                p.grad = grad.float()  # Adam's own step takes it; the post-hook rewrites the copy
                copy.version = None
                continue
            if not state:  # as torch.optim.Adam initialises it, so state_dicts are interchangeable
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = float(state["step"])
            step_size = torch.tensor(group["lr"] / (1 - beta1**step))
            bias_correction2_sqrt = torch.tensor(math.sqrt(1 - beta2**step))
            with torch.no_grad():
                kernel(
                    p.view(-1),
                    grad.view(-1),
                    state["exp_avg"].view(-1),
                    state["exp_avg_sq"].view(-1),
                    copy.tensor.detach().view(-1),
                    step_size,
                    bias_correction2_sqrt,
                    beta1,
                    beta2,
                    group["eps"],
                )
            copy.version = p._version


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze D while G is updated, so G's step does not also compute D's weight gradients
    (nor those of its compute copies)."""
    for p in module.parameters():
        p.requires_grad_(flag)
    for m in module.modules():
        copy = m.__dict__.get("compute_copy")
        if copy is not None:
            copy.tensor.requires_grad_(flag)


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Let BatchNorm use batch statistics without moving its running averages (momentum 0).

    Used when generating samples in train mode (the paper's test-time behaviour), so that looking
    at the model does not change it.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
