"""Convolutions that are fast on the CPU, and the low-precision weight copies they compute with.

Nothing here is part of the paper's networks: accelerate() (acceleration.py) puts these on a built network
from outside, each layer sharing the Parameter objects of the stock layer it replaces, so the
parameters, the state_dict keys and the results stay those of nn.Conv2d / nn.ConvTranspose2d.

Small maps as matrix products. oneDNN, PyTorch's CPU convolution library, is tuned for large
feature maps. On the U-Net's inner levels at batch 1 (16x16 pixels and less, 512-1024 channels)
the same arithmetic as one matrix product is faster (docs/performance.md), so these layers take
that route for small maps on the CPU and are the stock layers everywhere else. In a channels_last
network the product works on patch rows in NHWC order (conv_products.ConvAsProduct and
ConvTransposeAsProduct): no unfold or fold in NCHW order, whose transposing copies cost more than
the products here.

Which of these computes a call is decided in one place, route_of, from the layer, its input and
the weight it computes with.

Few output channels as a sum of taps. D's last layer (512 -> 1 channel, 4x4, stride 1) is slow in
oneDNN at every size; one narrow product of every pixel with every tap's weight, then a strided
sum of each output pixel's taps, is not (conv_products.ConvAsTapSum, every CPU path).

Weight gradients as one product. On the next levels up (32x32 and 64x64 maps at batch 1, and D's
256->512 layer) oneDNN's forward and input gradient are fast, but its weight gradient, a sum over
the few output pixels, is not; there it becomes one matrix product of the output gradient and the
input's patches (conv_products.WeightGradAsProduct, bf16 channels_last only).

Compute copies. Under CPU autocast every forward casts each fp32 weight to bf16, and every
backward turns the bf16 weight gradient back into fp32 for Adam: two extra passes over the 57 M
weights per step, where the U-Net's inner layers are bound by memory traffic, not arithmetic.
Instead each convolution can keep a bf16 copy of its weight (not a parameter: the fp32 weights
stay the parameters, the state_dict and the checkpoints); forward and backward use the copy, so
its gradient arrives in bf16, and the optimizer updates the fp32 weight from that gradient and
writes the new bf16 copy in the same pass (adam_copies.py). The arithmetic is autocast's: the
copy is the same rounding of the same fp32 weight, the gradient the same bf16 numbers. The copy
has its weight's layout: accelerate() puts the weights of a channels_last network in
channels_last, so copy, gradient, weight and Adam's moments share one layout and no step pays for
a transposing copy of a weight.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from speed.conv_products import (
    ConvAsProduct,
    ConvAsTapSum,
    ConvTransposeAsProduct,
    RowsTimesWeight,
    WeightGradAsProduct,
    dense_rows,
    map_size,
)

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

# A stride-1 convolution whose output channels times kernel taps are at most this many (D's last
# layer: 1 x 4x4) is the sum of its taps' products (ConvAsTapSum) on the CPU, at any map size,
# batch, layout and dtype: oneDNN is slow with one output channel (docs/performance.md).
TAP_SUM_COLUMNS = 16


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
        if self.version != self.param._version:  # torch_internals.TENSOR_VERSION
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
        return None if grad is None else in_layout_of(grad, self.param)

    def __deepcopy__(self, memo: dict) -> ComputeCopy:
        # A copy of a network that shares its weights (evaluation's per-image view) shares their
        # copies too; a copy with weights of its own gets copies of its own.
        param = copy.deepcopy(self.param, memo)
        return self if param is self.param else ComputeCopy(param, self.dtype)


def in_layout_of(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor` with the strides of `like` (same shape): itself, or a copy where they differ."""
    if tensor.stride() == like.stride():
        return tensor
    return torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)


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


def on_cpu(x: torch.Tensor) -> bool:
    """Whether a call may take a CPU route: the input is on the CPU and no graph is being exported."""
    return not exporting() and x.device.type == "cpu"


def small_cpu_map(x: torch.Tensor) -> bool:
    """Whether a layer input takes the matrix product: on the CPU, at most SMALL_MAP_PIXELS."""
    return on_cpu(x) and x.shape[0] * x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS


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


# The computations a call of a matrix-product layer can take (route_of decides which).
STOCK = "stock"  # the stock layer's own call: oneDNN on the CPU, cuDNN or MPS elsewhere
WEIGHT_GRAD_PRODUCT = "weight_grad_product"  # oneDNN, its weight gradient as one product
TAP_SUM = "tap_sum"  # the sum of the kernel taps' products (ConvAsTapSum)
PATCH_ROWS = "patch_rows"  # one product of NHWC patch rows (ConvAsProduct, ConvTransposeAsProduct)
UNFOLD = "unfold"  # one product of unfold's columns (a transposed layer: of fold's), NCHW
ROUTES = (STOCK, WEIGHT_GRAD_PRODUCT, TAP_SUM, PATCH_ROWS, UNFOLD)


def route_of(
    layer: nn.Conv2d | nn.ConvTranspose2d,
    x: torch.Tensor,
    weight: torch.Tensor,
    output_size: list[int] | None = None,
) -> str:
    """Which computation (one of ROUTES) a call of `layer` on `x` with `weight` (the one the call
    computes with: compute_weight) takes; the one place that decides it.

    - What only the stock layer computes (groups, dilation, string padding, an explicit output
      size), any device but the CPU, and an exported graph: the stock layer.
    - A stride-1 convolution with at most TAP_SUM_COLUMNS output channels x taps: the tap sum,
      at any size, batch, layout and dtype (oneDNN is slow with one output channel).
    - Small maps (SMALL_MAP_PIXELS; a convolution at batch 1 only: for batches oneDNN is faster):
      one matrix product, in the network's layout.
    - A bias-free layer whose weight gradient sums over at most PRODUCT_WEIGHT_GRAD_PIXELS, in
      channels_last and a PRODUCT_WEIGHT_GRAD_DTYPES dtype: oneDNN, with that gradient as one
      product.
    - Everything else: the stock layer.
    """
    if stock_only(layer) or output_size is not None or not on_cpu(x):
        return STOCK
    kh, kw = layer.kernel_size
    if not layer.transposed and layer.stride == (1, 1) and layer.out_channels * kh * kw <= TAP_SUM_COLUMNS:
        return TAP_SUM
    if (layer.transposed or x.shape[0] == 1) and small_cpu_map(x):
        return PATCH_ROWS if layer.channels_last else UNFOLD
    if (
        layer.bias is None
        and weight.requires_grad
        and weight.dtype in PRODUCT_WEIGHT_GRAD_DTYPES
        and is_channels_last(x)
        and summed_pixels(layer, x) <= PRODUCT_WEIGHT_GRAD_PIXELS
    ):
        return WEIGHT_GRAD_PRODUCT
    return STOCK


def stock_only(layer: nn.Conv2d | nn.ConvTranspose2d) -> bool:
    """Whether the layer has what only the stock layer computes: groups, dilation, a padding mode
    or string padding, output padding."""
    return (
        layer.groups != 1
        or layer.dilation != (1, 1)
        or layer.output_padding != (0, 0)
        or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    )


def summed_pixels(layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> int:
    """The pixels a layer's weight gradient sums over: a convolution's output pixels, a transposed
    convolution's input pixels, over the batch."""
    if layer.transposed:
        return x.shape[0] * x.shape[-2] * x.shape[-1]
    out_h, out_w = map_size(x.shape[-2:], layer.kernel_size, layer.stride, layer.padding, transposed=False)
    return x.shape[0] * out_h * out_w


def with_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A product route's output plus the layer's bias, if it has one (per channel, in out's dtype)."""
    return out if bias is None else out + bias.to(out.dtype)[:, None, None]


def same_format(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The NCHW route's result in the input's memory format (channels_last in, channels_last out;
    a 1x1 map, contiguous in both formats, stays NCHW: the route serves NCHW networks)."""
    return out.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else out


class StockTwin:
    """What the matrix-product layers share: they are built from the stock layer they replace and
    compute with its own weight and bias objects (the parameters, the state_dict keys and the
    optimizers stay the same)."""

    compute_copy: ComputeCopy | None = None
    channels_last: bool = False  # the network's layout (what a 1x1 map, dense in both, is taken as)

    @classmethod
    def replacing(cls, conv: nn.Conv2d | nn.ConvTranspose2d, channels_last: bool):
        """A layer computing what `conv` computes, with `conv`'s own weight and bias objects."""
        transposed = {"output_padding": conv.output_padding} if isinstance(conv, nn.ConvTranspose2d) else {}
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
            **transposed,
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.channels_last = channels_last
        return layer.train(conv.training)


class MatmulConv2d(StockTwin, nn.Conv2d):
    """nn.Conv2d computed as one matrix product for small CPU maps at batch 1 (groups 1, dilation
    1, zero padding): of patch rows in a channels_last network, of unfold's columns in an NCHW one.
    For batches oneDNN is faster: the patches of a batch, and a batched product that repeats the
    weight per image, cost more than they save (docs/performance.md). A layer with very few output
    channels is the sum of its taps' products at any size and batch. route_of picks the route."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = compute_weight(self, x)
        route = route_of(self, x, weight)
        if route == TAP_SUM:
            out = ConvAsTapSum.apply(x.to(weight.dtype), weight, self.stride, self.padding)
            return with_bias(out, self.bias)
        if route == PATCH_ROWS:
            out = ConvAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding)
            return with_bias(out, self.bias)
        if route == UNFOLD:
            return self._unfold_product(x, weight)
        if route == WEIGHT_GRAD_PRODUCT:  # a bias-free layer
            return WeightGradAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding, False)
        return self._conv_forward(x, weight, self.bias)  # torch_internals.CONV_FORWARD

    def _unfold_product(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x.to(weight.dtype), self.kernel_size, padding=self.padding, stride=self.stride)
        out = torch.matmul(weight.flatten(1), cols)  # (N, C_in*kh*kw, L) -> (N, C_out, L)
        if out.requires_grad:
            out.register_hook(dense_rows)  # the weight's gradient: a dense (C_out, L) times cols^T
        out_size = map_size((h, w), self.kernel_size, self.stride, self.padding, transposed=False)
        out = out.view(n, -1, *out_size)  # (N, C_out, H', W')
        return same_format(with_bias(out, self.bias), x)


class MatmulConvTranspose2d(StockTwin, nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as one matrix product and a fold of its patches for small CPU
    maps (groups 1, dilation 1), in the network's layout as MatmulConv2d; route_of picks the route."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        weight = compute_weight(self, x)
        route = route_of(self, x, weight, output_size)
        if route == PATCH_ROWS:
            out = ConvTransposeAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding)
            return with_bias(out, self.bias)
        if route == UNFOLD:
            return self._fold_product(x, weight)
        if route == WEIGHT_GRAD_PRODUCT:  # a bias-free layer
            return WeightGradAsProduct.apply(x.to(weight.dtype), weight, self.stride, self.padding, True)
        return self._stock_forward(x, weight, output_size)

    def _fold_product(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c_in, h, w = x.shape
        # Every input pixel spreads a (C_out, kh, kw) patch; fold sums the overlapping patches.
        # One product for the whole batch: pixels as rows.
        rows = x.to(weight.dtype).permute(0, 2, 3, 1).reshape(n * h * w, c_in)
        patches = RowsTimesWeight.apply(rows, weight.flatten(1))  # (N*h*w, C_out*kh*kw)
        cols = patches.view(n, h * w, -1).transpose(1, 2)  # (N, C_out*kh*kw, h*w)
        size = map_size((h, w), self.kernel_size, self.stride, self.padding, transposed=True)
        out = F.fold(
            cols, size, self.kernel_size, padding=self.padding, stride=self.stride
        )  # (N, C_out, H, W)
        return same_format(with_bias(out, self.bias), x)

    def _stock_forward(
        self, x: torch.Tensor, weight: torch.Tensor, output_size: list[int] | None
    ) -> torch.Tensor:
        if weight is self.weight:
            return super().forward(x, output_size)
        output_padding = self._output_padding(  # torch_internals.OUTPUT_PADDING
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
