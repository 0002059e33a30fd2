"""Convolutions as matrix products: the arithmetic the layers of matmul_layers.py route to on the
CPU, forward and backward, as autograd Functions on plain tensors (no module, no routing).

Patch rows. A convolution multiplies each output pixel's input patch by the weight. With the map
in channels_last (NHWC), the patches are rows gathered by one strided view (patch_rows), in the
(kh, kw, C) order of a channels_last weight's rows (weight_rows), so that a convolution is
patches @ weight rows (ConvAsProduct) and its output is the pixel rows of a channels_last map; a
transposed convolution is the input's pixel rows @ weight rows, each row a patch that
fold_patch_rows adds back onto the output (ConvTransposeAsProduct). The weight gradient of
either is one more product of dense operands (product_weight_grad), which is also all that
WeightGradAsProduct changes in oneDNN's layers. A convolution with very few output channels is
instead one narrow product of each pixel with every tap's weight, whose terms each output pixel
sums (ConvAsTapSum). RowsTimesWeight and dense_rows serve the NCHW
route (unfold and fold), which the fp32 path takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    n, _, _, c = pixels.shape
    ho, wo = map_size(x.shape[-2:], kernel_size, stride, padding, transposed=False)
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


def tap_terms(products: torch.Tensor, out_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The terms each output pixel of a convolution sums, as a view of its per-tap products:
    (N, Hp, Wp, C_out, kh, kw) products of the padded map's pixels with every tap's weight ->
    (N, H', W', C_out, kh, kw), whose [n, i, j, o, a, b] is products[n, i*sh + a, j*sw + b, o, a, b]."""
    n, _, _, c_out, kh, kw = products.shape
    s_n, s_h, s_w, s_o, s_a, s_b = products.stride()
    size = (n, *out_size, c_out, kh, kw)
    strides = (s_n, stride[0] * s_h, stride[1] * s_w, s_o, s_a + s_h, s_b + s_w)
    return products.as_strided(size, strides, products.storage_offset())


class ConvAsTapSum(torch.autograd.Function):
    """A bias-free convolution with few output channels (a PatchGAN's last layer has one) as the
    sum of its kernel taps: one narrow product multiplies every input pixel by every tap's weight
    at once, (N*H*W, C_in) @ (C_in, C_out*kh*kw), and each output pixel adds up its kh*kw terms
    from a strided view of those products (tap_terms). No patches are gathered (kh*kw copies of
    the input), and oneDNN's kernels, slow with one output channel, are not used. The padding is
    applied to the narrow products, not to the input. Output and input gradient come in the
    input's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> torch.Tensor:
        n, c_in, h, w = x.shape
        c_out, _, kh, kw = weight.shape
        (ph, pw) = padding
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding
        taps = weight_rows(weight).reshape(-1, c_in)  # (C_out*kh*kw, C_in)
        products = pixel_rows(x) @ taps.t()  # (N*H*W, C_out*kh*kw)
        padded = products.new_zeros(n, h + 2 * ph, w + 2 * pw, c_out, kh, kw)
        padded[:, ph : ph + h, pw : pw + w] = products.view(n, h, w, c_out, kh, kw)
        out_size = map_size((h, w), (kh, kw), stride, padding, transposed=False)
        out = tap_terms(padded, out_size, stride).sum((-2, -1)).permute(0, 3, 1, 2)  # channels_last
        return out.contiguous() if x.is_contiguous() else out  # an NCHW network's output in NCHW

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, (ph, pw) = ctx.geometry
        n, c_in, h, w = x.shape
        c_out, _, kh, kw = weight.shape
        taps = weight_rows(weight).reshape(-1, c_in)  # (C_out*kh*kw, C_in)
        # Each product feeds at most one output pixel: its gradient is that pixel's, or 0.
        grad_padded = grad.new_zeros(n, h + 2 * ph, w + 2 * pw, c_out, kh, kw)
        terms = tap_terms(grad_padded, grad.shape[-2:], stride)
        terms.copy_(grad.permute(0, 2, 3, 1)[..., None, None].expand(terms.shape))
        grad_products = grad_padded[:, ph : ph + h, pw : pw + w].reshape(n * h * w, -1)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # (N*H*W, C_out*kh*kw) @ (C_out*kh*kw, C_in): channels_last
            grad_x = (grad_products @ taps).view(n, h, w, c_in).permute(0, 3, 1, 2)
            if x.is_contiguous():  # an NCHW network's gradient in NCHW, as its next layers expect
                grad_x = grad_x.contiguous()
        if ctx.needs_input_grad[1]:  # (C_out*kh*kw, N*H*W) @ (N*H*W, C_in), as the weight's rows
            grad_weight = product_weight_grad(grad_products.t().contiguous(), pixel_rows(x), weight)
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
            grad_x = torch.ops.aten.convolution_backward(  # torch_internals.CONVOLUTION_BACKWARD
                grad, x, weight, None, stride, padding, (1, 1), transposed, (0, 0), 1, (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            summed, patched = (x, grad) if transposed else (grad, x)
            channels = summed.transpose(0, 1).contiguous().flatten(1)  # (C, N*H'*W'), dense rows
            rows = patch_rows(patched, weight.shape[-2:], stride, padding)
            grad_weight = product_weight_grad(channels, rows, weight)
        return grad_x, grad_weight, None, None, None
