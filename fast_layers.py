"""Convolutions that are fast on the CPU, and the low-precision weight copies they compute with.

Nothing here is part of the paper's networks: speedups.accelerate() puts these on a built network
from outside, each layer sharing the Parameter objects of the stock layer it replaces, so the
parameters, the state_dict keys and the results stay those of nn.Conv2d / nn.ConvTranspose2d.

Small maps as matrix products. oneDNN, PyTorch's CPU convolution library, is tuned for large
feature maps. On the U-Net's inner levels at batch 1 (16x16 pixels and less, 512-1024 channels)
the same arithmetic as one matrix product is faster (docs/performance.md), so these layers take
that route for small maps on the CPU and are the stock layers everywhere else. In a channels_last
network the product works on patch rows in NHWC order (ConvAsProduct, ConvTransposeAsProduct):
no unfold or fold in NCHW order, whose transposing copies cost more than the products here.

Weight gradients as one product. On the next levels up (32x32 and 64x64 maps at batch 1, and D's
256->512 layer) oneDNN's forward and input gradient are fast, but its weight gradient, a sum over
the few output pixels, is not; there it becomes one matrix product of the output gradient and the
input's patches (WeightGradAsProduct, bf16 channels_last only).

Compute copies. Under CPU autocast every forward casts each fp32 weight to bf16, and every
backward turns the bf16 weight gradient back into fp32 for Adam: two extra passes over the 57 M
weights per step, where the U-Net's inner layers are bound by memory traffic, not arithmetic.
Instead each convolution can keep a bf16 copy of its weight (not a parameter: the fp32 weights
stay the parameters, the state_dict and the checkpoints); forward and backward use the copy, so
its gradient arrives in bf16, and the optimizer updates the fp32 weight from that gradient and
writes the new bf16 copy in the same pass (adam_copies.py). The arithmetic is autocast's: the
copy is the same rounding of the same fp32 weight, the gradient the same bf16 numbers. The copy
has its weight's layout: speedups.accelerate() puts the weights of a channels_last network in
channels_last, so copy, gradient, weight and Adam's moments share one layout and no step pays for
a transposing copy of a weight.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# Maps whose batch pixels (the matrix product's other dimension) are at most this many take the
# matrix product: every level of 16x16 and less at batch 1, only 4x4 and less in a batch of 16.
SMALL_MAP_PIXELS = 16 * 16

# A layer on the oneDNN route whose weight gradient sums over at most this many pixels (a
# convolution's output pixels, a transposed convolution's input pixels, over the batch) gets that
# gradient as one matrix product (WeightGradAsProduct), in these dtypes and channels_last only:
# where it was measured faster than oneDNN's own (bf16 at batch 1: the U-Net's 32x32 and 64x64
# levels and D's 256->512 layer; docs/performance.md). Larger maps keep oneDNN's kernel.
PRODUCT_WEIGHT_GRAD_PIXELS = 32 * 32
PRODUCT_WEIGHT_GRAD_DTYPES = (torch.bfloat16,)


class ComputeCopy:
    """The low-precision copy of one fp32 parameter, in the parameter's layout. current()
    refreshes it when the parameter was changed by anything but the optimizer (loading a
    checkpoint, init_weights), and gives it the parameter's requires_grad (a frozen D computes no
    gradient for its copies either)."""

    def __init__(self, param: nn.Parameter, dtype: torch.dtype) -> None:
        self.param, self.dtype = param, dtype
        self.tensor = torch.empty_like(param, dtype=dtype).requires_grad_(param.requires_grad)
        self.version: int | None = -1  # the parameter's version counter when the copy was last written

    def current(self) -> torch.Tensor:
        if self.version != self.param._version:
            with torch.no_grad():
                self.tensor.copy_(self.param)
            self.written()
        return with_requires_grad(self.tensor, self.param.requires_grad)

    def written(self) -> None:
        """Record that `tensor` now holds the parameter's current value (the optimizer wrote both)."""
        self.version = self.param._version

    def take_grad(self) -> torch.Tensor | None:
        """The gradient the copy received, in the parameter's layout (as Adam's moments have it),
        or None; clears it."""
        grad, self.tensor.grad = self.tensor.grad, None
        if grad is None or grad.stride() == self.param.stride():
            return grad
        return torch.empty_like(self.param, dtype=grad.dtype).copy_(grad)

    def __deepcopy__(self, memo: dict) -> ComputeCopy:
        # A copy of a network that shares its weights (evaluation's per-image view) shares their
        # copies too; a copy with weights of its own gets copies of its own.
        param = copy.deepcopy(self.param, memo)
        return self if param is self.param else ComputeCopy(param, self.dtype)


def with_requires_grad(tensor: torch.Tensor, flag: bool) -> torch.Tensor:
    if tensor.requires_grad != flag:
        tensor.requires_grad_(flag)
    return tensor


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-d tensor is laid out channels_last (and not also dense as NCHW, as a 1x1 map is)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def exporting() -> bool:
    """Exported graphs (ONNX, torch.export) get the stock layers: they run elsewhere, at any size."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def small_cpu_map(x: torch.Tensor) -> bool:
    """Whether a layer input takes the matrix product: on the CPU, at most SMALL_MAP_PIXELS."""
    if exporting():
        return False
    return x.device.type == "cpu" and x.shape[0] * x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS


def compute_weight(layer: MatmulConv2d | MatmulConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The weight as this call computes with it: under CPU autocast to a low-precision dtype, the
    layer's compute copy, or else a contiguous cast of the parameter (cached by autocast within its
    region) rather than the strided cast of a reshaped view the matrix products would get."""
    weight = layer.weight
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or weight.dtype != torch.float32:
        return weight
    dtype = torch.get_autocast_dtype("cpu")
    if layer.compute_copy is not None and layer.compute_copy.dtype == dtype:
        return layer.compute_copy.current()
    return weight.to(dtype)


def dense_rows(grad: torch.Tensor) -> torch.Tensor:
    """A gradient hook: the gradient as dense rows. Back through a channels_last layer it arrives
    as a transposed view, and a product of two transposed operands (this gradient and the other
    operand, itself a transposed view) is the CPU's slowest bf16 matrix product."""
    return grad.contiguous()


class RowsTimesWeight(torch.autograd.Function):
    """rows @ weight for (pixels, C_in) rows and a (C_in, K) weight, with a backward that gives the
    CPU's matrix products dense operands: autograd's own would multiply the transposed rows by the
    transposed output gradient (fold's backward makes that gradient as (K, pixels)) for the weight's
    gradient, at the size of the weight. Only activation-sized operands are copied."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        return rows @ weight  # (L, C_in) @ (C_in, K) -> (L, K)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad_weight = None
        if ctx.needs_input_grad[0]:  # (C_in, K) @ (K, L) -> (C_in, L), as dense (L, C_in) rows
            grad_rows = (weight @ grad.t()).t().contiguous()
        if ctx.needs_input_grad[1]:  # (C_in, L) @ (L, K) -> (C_in, K)
            grad_weight = rows.t().contiguous() @ grad
        return grad_rows, grad_weight


def patch_rows(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """The patches a convolution multiplies, one row per output pixel: (N, C, H, W) ->
    (N*H'*W', kh*kw*C), each row in the order of a channels_last weight's row. The padded map is
    made NHWC-dense once (free of a transposing copy when `x` is channels_last already)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    pixels = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # (N, H+2ph, W+2pw, C)
    n, hp, wp, c = pixels.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s_n, s_h, s_w, s_c = pixels.stride()
    windows = pixels.as_strided((n, ho, wo, kh, kw, c), (s_n, sh * s_h, sw * s_w, s_h, s_w, s_c))
    return windows.reshape(n * ho * wo, kh * kw * c)


def map_size(
    size: tuple[int, int], kernel_size: tuple, stride: tuple, padding: tuple, transposed: bool
) -> tuple[int, int]:
    """The (H, W) a (transposed) convolution makes of an (h, w) map (dilation 1, no output padding)."""
    if transposed:
        return tuple((n - 1) * s - 2 * p + k for n, k, s, p in zip(size, kernel_size, stride, padding))
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel_size, stride, padding))


def fold_patch_rows(
    patches: torch.Tensor,
    in_size: tuple[int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """The adjoint of patch_rows: each row's patch added back onto the map it came from, the
    overlaps summed. (N*h*w, kh*kw*C) rows in a channels_last weight's order for the N x h x w
    pixels of `in_size` -> (N, C, H, W) for `out_size`, channels_last. One strided add per kernel
    tap, each over every pixel and channel at once."""
    (n, h, w), (kh, kw), (sh, sw), (ph, pw), (out_h, out_w) = in_size, kernel_size, stride, padding, out_size
    taps = patches.view(n, h, w, kh, kw, -1)
    out = patches.new_zeros(n, out_h, out_w, taps.shape[-1])  # (N, H, W, C)
    for ki in range(kh):
        rows, out_rows = _tap_span(ki, sh, ph, h, out_h)
        for kj in range(kw):
            cols, out_cols = _tap_span(kj, sw, pw, w, out_w)
            out[:, out_rows, out_cols] += taps[:, rows, cols, ki, kj]
    return out.permute(0, 3, 1, 2)


def _tap_span(k: int, stride: int, padding: int, n_in: int, n_out: int) -> tuple[slice, slice]:
    """Kernel tap k maps input pixel i to output pixel stride*i + k - padding: the inputs that
    land inside 0..n_out-1, and where they land."""
    first = max(0, -((k - padding) // stride))  # ceil((padding - k) / stride), at least 0
    last = min(n_in - 1, (n_out - 1 + padding - k) // stride)
    if last < first:
        return slice(0, 0), slice(0, 0)
    start = stride * first + k - padding
    return slice(first, last + 1), slice(start, start + stride * (last - first) + 1, stride)


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row per pixel, a view of a channels_last map."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """(A, B, kh, kw) -> (A, kh*kw*B) in a channels_last weight's order: a view of one."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def product_weight_grad(channels: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A (transposed) convolution's weight gradient as one product of dense operands: (A, pixels)
    @ (pixels, kh*kw*B) -> the weight's (A, B, kh, kw) shape with channels_last strides."""
    kh, kw = weight.shape[-2:]
    return (channels @ rows).view(weight.shape[0], kh, kw, -1).permute(0, 3, 1, 2)


class ConvAsProduct(torch.autograd.Function):
    """A bias-free convolution of a channels_last map as one matrix product: the input's patch
    rows (pixels, kh*kw*C_in) times the weight's rows, giving the output's pixel rows, i.e. a
    channels_last output. Backward: two more products and the patches folded back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> torch.Tensor:
        n, _, h, w = x.shape
        kernel_size = weight.shape[-2:]
        rows = patch_rows(x, kernel_size, stride, padding)  # (N*H'*W', kh*kw*C_in)
        out_h, out_w = map_size((h, w), kernel_size, stride, padding, transposed=False)
        ctx.save_for_backward(rows, weight)
        ctx.geometry = (n, h, w), (out_h, out_w), stride, padding
        out = rows @ weight_rows(weight).t()  # (N*H'*W', C_out)
        return out.view(n, out_h, out_w, -1).permute(0, 3, 1, 2)  # (N, C_out, H', W'), channels_last

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        (n, h, w), (out_h, out_w), stride, padding = ctx.geometry
        grad_rows = pixel_rows(grad)  # (N*H'*W', C_out)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_patches = grad_rows @ weight_rows(weight)  # (N*H'*W', kh*kw*C_in)
            grad_x = fold_patch_rows(
                grad_patches, (n, out_h, out_w), weight.shape[-2:], stride, padding, (h, w)
            )
        if ctx.needs_input_grad[1]:
            grad_weight = product_weight_grad(grad_rows.t().contiguous(), rows, weight)
        return grad_x, grad_weight, None, None


class ConvTransposeAsProduct(torch.autograd.Function):
    """A bias-free transposed convolution of a channels_last map as one matrix product: the
    input's pixel rows times the weight's rows give each pixel's (kh, kw, C_out) patch, and the
    patches are folded onto the output (channels_last). Backward: the output gradient's patch rows
    in two more products."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> torch.Tensor:
        n, _, h, w = x.shape
        kernel_size = weight.shape[-2:]
        rows = pixel_rows(x)  # (N*h*w, C_in)
        out_size = map_size((h, w), kernel_size, stride, padding, transposed=True)
        ctx.save_for_backward(rows, weight)
        ctx.geometry = (n, h, w), stride, padding
        patches = rows @ weight_rows(weight)  # (N*h*w, kh*kw*C_out)
        return fold_patch_rows(patches, (n, h, w), kernel_size, stride, padding, out_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        (n, h, w), stride, padding = ctx.geometry
        grad_patches = patch_rows(grad, weight.shape[-2:], stride, padding)  # (N*h*w, kh*kw*C_out)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_patches @ weight_rows(weight).t()).view(n, h, w, -1).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_weight = product_weight_grad(rows.t().contiguous(), grad_patches, weight)
        return grad_x, grad_weight, None, None


class WeightGradAsProduct(torch.autograd.Function):
    """A bias-free (transposed) convolution computed by oneDNN, forward and input gradient alike,
    whose weight gradient is one matrix product instead of oneDNN's kernel: (channels, pixels) @
    (pixels, patch), dense operands both. For a convolution the channels are the output gradient's
    and the patches the input's; for a transposed one the other way round (its weight gradient is
    that of the convolution it transposes, from the output gradient to the input)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple, transposed: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, transposed
        if transposed:
            return F.conv_transpose2d(x, weight, None, stride, padding)
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, transposed = ctx.geometry
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, (1, 1), transposed, (0, 0), 1, (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            summed, patched = (x, grad) if transposed else (grad, x)
            channels = summed.transpose(0, 1).contiguous().flatten(1)  # (C, N*H'*W'), dense rows
            rows = patch_rows(patched, weight.shape[-2:], stride, padding)
            grad_weight = product_weight_grad(channels, rows, weight)
        return grad_x, grad_weight, None, None, None


def weight_grad_as_product(x: torch.Tensor, weight: torch.Tensor, summed_pixels: int) -> bool:
    """Whether a layer's oneDNN call takes WeightGradAsProduct; `summed_pixels` are the pixels its
    weight gradient sums over (the caller checks what its geometry allows: no bias, groups,
    dilation or output padding)."""
    if not weight.requires_grad or weight.dtype not in PRODUCT_WEIGHT_GRAD_DTYPES or exporting():
        return False
    return x.device.type == "cpu" and is_channels_last(x) and summed_pixels <= PRODUCT_WEIGHT_GRAD_PIXELS


def same_format(out: torch.Tensor, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The matrix-product result in the input's memory format (channels_last in, channels_last out).
    A 1x1 map is contiguous in both formats: its result takes the network's layout, else the
    U-Net's decoder would fall back to NCHW from its 1x1 bottleneck on."""
    if x.shape[-2:] == (1, 1):
        to_channels_last = channels_last
    else:
        to_channels_last = is_channels_last(x)
    return out.contiguous(memory_format=torch.channels_last) if to_channels_last else out


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d computed as one matrix product for small CPU maps at batch 1 (groups 1, dilation
    1, zero padding): of patch rows in a channels_last network, of unfold's columns in an NCHW one.
    For batches oneDNN is faster: the patches of a batch, and a batched product that repeats the
    weight per image, cost more than they save (docs/performance.md)."""

    compute_copy: ComputeCopy | None = None
    channels_last: bool = False  # the network's layout (what a 1x1 map, dense in both, is taken as)

    @classmethod
    def replacing(cls, conv: nn.Conv2d, channels_last: bool) -> MatmulConv2d:
        """A layer computing what `conv` computes, with `conv`'s own weight and bias objects."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.channels_last = channels_last
        return layer.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = compute_weight(self, x)
        if x.shape[0] != 1 or self.plain() or not small_cpu_map(x):
            return self._stock_forward(x, weight)
        if self.channels_last:
            out = ConvAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding)
            return out if self.bias is None else out + self.bias.to(out.dtype)[:, None, None]
        n, _, h, w = x.shape
        cols = F.unfold(x.to(weight.dtype), self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.matmul(weight.flatten(1), cols)  # (N, C_in*kh*kw, L) -> (N, C_out, L)
        if out.requires_grad:
            out.register_hook(dense_rows)  # the weight's gradient: a dense (C_out, L) times cols^T
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None]
        out_size = map_size((h, w), self.kernel_size, self.stride, self.padding, transposed=False)
        out = out.view(n, -1, *out_size)  # (N, C_out, H', W')
        return same_format(out, x, self.channels_last)

    def plain(self) -> bool:
        """Whether the layer has what only the stock layer computes (groups, dilation, ...)."""
        return (
            self.groups != 1
            or self.dilation != (1, 1)
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        )

    def _stock_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.bias is None and not self.plain():
            out_h, out_w = map_size(
                x.shape[-2:], self.kernel_size, self.stride, self.padding, transposed=False
            )
            if weight_grad_as_product(x, weight, x.shape[0] * out_h * out_w):
                return WeightGradAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding, False)
        return self._conv_forward(x, weight, self.bias)


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as one matrix product and a fold of its patches for small CPU
    maps (groups 1, dilation 1), in the network's layout as MatmulConv2d."""

    compute_copy: ComputeCopy | None = None
    channels_last: bool = False

    @classmethod
    def replacing(cls, conv: nn.ConvTranspose2d, channels_last: bool) -> MatmulConvTranspose2d:
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.output_padding,
            conv.groups,
            conv.bias is not None,
            conv.dilation,
            conv.padding_mode,
            device="meta",
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.channels_last = channels_last
        return layer.train(conv.training)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        weight = compute_weight(self, x)
        if self.plain() or output_size is not None or not small_cpu_map(x):
            return self._stock_forward(x, weight, output_size)
        if self.channels_last:
            out = ConvTransposeAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding)
            return out if self.bias is None else out + self.bias.to(out.dtype)[:, None, None]
        n, c_in, h, w = x.shape
        # Every input pixel spreads a (C_out, kh, kw) patch; fold sums the overlapping patches.
        # One product for the whole batch: pixels as rows (a view of channels_last input).
        rows = x.to(weight.dtype).permute(0, 2, 3, 1).reshape(n * h * w, c_in)
        patches = RowsTimesWeight.apply(rows, weight.flatten(1))  # (N*h*w, C_out*kh*kw)
        cols = patches.view(n, h * w, -1).transpose(1, 2)  # (N, C_out*kh*kw, h*w)
        size = map_size((h, w), self.kernel_size, self.stride, self.padding, transposed=True)
        out = F.fold(
            cols, size, self.kernel_size, padding=self.padding, stride=self.stride
        )  # (N, C_out, H, W)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)[:, None, None]
        return same_format(out, x, self.channels_last)

    def plain(self) -> bool:
        """Whether the layer has what only the stock layer computes (groups, dilation, ...)."""
        return self.groups != 1 or self.dilation != (1, 1) or self.output_padding != (0, 0)

    def _stock_forward(
        self, x: torch.Tensor, weight: torch.Tensor, output_size: list[int] | None
    ) -> torch.Tensor:
        if output_size is None and self.bias is None and not self.plain():
            in_pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
            if weight_grad_as_product(x, weight, in_pixels):
                return WeightGradAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding, True)
        if weight is self.weight:
            return super().forward(x, output_size)
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return F.conv_transpose2d(
            x, weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )


def use_matmul_layers(module: nn.Module, channels_last: bool) -> int:
    """Replace every nn.Conv2d / nn.ConvTranspose2d below `module` by its matrix-product twin
    (the same weight and bias objects, the same names); returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, MatmulConv2d.replacing(child, channels_last))
        elif type(child) is nn.ConvTranspose2d:
            setattr(module, name, MatmulConvTranspose2d.replacing(child, channels_last))
        else:
            replaced += use_matmul_layers(child, channels_last)
            continue
        replaced += 1
    return replaced


def attach_compute_copies(module: nn.Module, dtype: torch.dtype) -> dict[nn.Parameter, ComputeCopy]:
    """Give every matrix-product layer below `module` a `dtype` copy of its fp32 weight, which it
    computes with under CPU autocast to `dtype`; returns the copies by weight (for the optimizer)."""
    copies = {}
    for m in module.modules():
        if isinstance(m, (MatmulConv2d, MatmulConvTranspose2d)) and m.weight.dtype == torch.float32:
            if m.compute_copy is None:
                m.compute_copy = ComputeCopy(m.weight, dtype)
            copies[m.weight] = m.compute_copy
    return copies
