"""The speed layer against the stock networks: accelerate (what it replaces, what it keeps), which
route each convolution call takes (route_of), the matrix-product convolutions (forward and
gradients, fp32 and bf16, odd sizes), the bf16 compute copies that Adam writes, and channels_last;
and that the rest of the project uses only speed's entry points."""

import ast
import copy
import itertools
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from torch import nn

import speed
from layers import init_weights, set_requires_grad
from speed import acceleration as speedups
from speed import conv_products
from speed import matmul_layers as fast_layers
from speed.matmul_layers import ROUTES, MatmulConv2d, MatmulConvTranspose2d, compute_weight, route_of

CPU = torch.device("cpu")

# (in, out, kernel, stride, padding, input height, width): the U-Net's 4/2/1 and odd cases.
CONV_CASES = [
    (5, 7, 4, 2, 1, 6, 4),
    (3, 6, 3, 1, 1, 5, 7),
    (4, 5, 4, 2, 1, 1, 1),
    (6, 3, 2, 2, 0, 9, 7),
    (8, 4, 4, 1, 2, 3, 5),
]


@pytest.fixture(autouse=True)
def matmul_for_every_map(monkeypatch):
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 10**9)  # every test map takes the matrix product


def pair_of(kind: str, cin: int, cout: int, k: int, s: int, p: int, bias: bool, channels_last: bool = False):
    """A fast layer (for a network in NCHW or channels_last) and the stock layer with equal (not
    shared) parameters."""
    fast_cls, stock_cls = {
        "conv": (MatmulConv2d, nn.Conv2d),
        "transposed": (MatmulConvTranspose2d, nn.ConvTranspose2d),
    }[kind]
    torch.manual_seed(0)
    stock = stock_cls(cin, cout, k, s, p, bias=bias)
    nn.init.normal_(stock.weight, 0.0, 0.2)
    if bias:
        nn.init.normal_(stock.bias, 0.0, 0.2)
    fast = fast_cls.replacing(copy.deepcopy(stock), channels_last=channels_last)
    return fast, stock


def forward_backward(layer: nn.Module, x: torch.Tensor, dtype: torch.dtype):
    """Output and the gradients of input, weight and bias for a fixed upstream gradient."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = layer(x)
    upstream = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y.float() * upstream).sum().backward()
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    layer.zero_grad(set_to_none=True)
    return y.float(), grads


def computed_by(out: torch.Tensor) -> str:
    """The autograd node that computed a layer's output, past the bias a product route adds after."""
    node = out.grad_fn
    while type(node).__name__ == "AddBackward0":
        node = node.next_functions[0][0]
    return type(node).__name__


def output_size(kind: str, case: tuple) -> tuple[int, int]:
    _, _, k, s, p, h, w = case
    return tuple(
        (n - 1) * s - 2 * p + k if kind == "transposed" else (n + 2 * p - k) // s + 1 for n in (h, w)
    )


# Every case for both layers, except a convolution with no output pixel (the 1x1 input is the
# transposed convolution's case: the U-Net's first decoder layer).
LAYER_CASES = [
    (kind, case)
    for kind in ("conv", "transposed")
    for case in CONV_CASES
    if min(output_size(kind, case)) >= 1
]


@pytest.mark.parametrize("kind,case", LAYER_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_matmul_convolutions_match_the_stock_layers(kind, case, dtype, bias, n, channels_last):
    """Conv2d takes the product at batch 1, ConvTranspose2d at any batch (its own formulation
    for batches); in an NCHW network through unfold and fold, in a channels_last one through
    patch rows (ConvAsProduct, ConvTransposeAsProduct)."""
    cin, cout, k, s, p, h, w = case
    fast, stock = pair_of(kind, cin, cout, k, s, p, bias, channels_last)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        product = kind == "transposed" or n == 1  # a convolution of a batch goes to oneDNN
        as_product = {"conv": "ConvAsProductBackward", "transposed": "ConvTransposeAsProductBackward"}[kind]
        assert (computed_by(fast(x.requires_grad_())) == as_product) == product
    y_fast, g_fast = forward_backward(fast, x, dtype)
    y_stock, g_stock = forward_backward(stock, x, dtype)
    assert y_fast.shape == y_stock.shape
    # fp32: the same sums in another order. bf16: both round their operands to bf16 and
    # accumulate in fp32, so they differ by a few bf16 roundings of the outputs.
    # Tolerances relative to each tensor's largest entry (a gradient summed over many terms can
    # cancel to nearly 0 in one entry).
    rel = 1e-5 if dtype == torch.float32 else 0.02
    for a, b in zip([y_fast, *g_fast], [y_stock, *g_stock]):
        a, b = a.float(), b.float()
        torch.testing.assert_close(a, b, atol=rel * max(1.0, b.abs().max().item()), rtol=rel)


@pytest.mark.parametrize("kind", ["conv", "transposed"])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw-network", "channels_last-network"])
def test_matmul_convolutions_keep_channels_last(kind, n, channels_last):
    fast, stock = pair_of(kind, 6, 4, 4, 2, 1, bias=True, channels_last=channels_last)
    x = torch.randn(n, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    y = fast(x.requires_grad_())
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, stock(x), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kernel,stride,padding,size", [((4, 4), (2, 2), (1, 1), (6, 4)), ((3, 2), (1, 2), (1, 0), (5, 7))]
)
def test_folding_patch_rows_is_their_adjoint(kernel, stride, padding, size):
    """fold_patch_rows sums each patch back where patch_rows took it from: <patch_rows(x), P> =
    <x, fold_patch_rows(P)> for any P, which is what makes it the gradient of patch_rows (and a
    transposed convolution's fold)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=gen).contiguous(memory_format=torch.channels_last)
    rows = conv_products.patch_rows(x, kernel, stride, padding)
    out_h, out_w = conv_products.map_size(size, kernel, stride, padding, transposed=False)
    patches = torch.randn(rows.shape, generator=gen, dtype=torch.float64)
    folded = conv_products.fold_patch_rows(patches, (2, out_h, out_w), kernel, stride, padding, size)
    assert folded.shape == x.shape and fast_layers.is_channels_last(folded)
    torch.testing.assert_close((rows.double() * patches).sum(), (x.double() * folded).sum())


def is_really_channels_last(t: torch.Tensor) -> bool:
    """By the strides, which also tell the two formats of a 1x1 map apart."""
    return t.stride(1) == 1 and t.stride(-1) == t.shape[1]


def test_the_decoder_stays_channels_last_below_a_1x1_bottleneck():
    """A 1x1 map is contiguous in both formats; in bf16 the matrix product's result on one is
    channels_last, so the U-Net's decoder runs in NHWC from its bottleneck up (in NCHW it had a
    layout conversion per layer and ran batched generation ~20 % slower)."""
    fast, _ = pair_of("transposed", 8, 4, 4, 2, 1, bias=False)
    x = torch.randn(2, 8, 1, 1)  # NCHW strides, as an out-of-place ReLU leaves a 1x1 map
    fast.channels_last = True  # as accelerate() sets it for bf16 on the CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert is_really_channels_last(fast(x))
    fast.channels_last = False  # fp32 on the CPU: NCHW
    assert fast(x).is_contiguous() and not is_really_channels_last(fast(x))
    from generator import UNetGenerator

    torch.manual_seed(0)
    G = UNetGenerator(ngf=4, num_downs=5)  # 32 px: a 1x1 bottleneck
    assert speedups.accelerate([(G, None)], CPU, torch.bfloat16).channels_last
    seen = []
    for up in G.up:
        up.register_forward_hook(lambda module, args, out: seen.append(is_really_channels_last(out)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = G(torch.randn(2, 3, 32, 32))  # NCHW in: the pre-hook makes it channels_last
    assert all(seen) and len(seen) == 4 and is_really_channels_last(out)


def test_which_maps_take_the_matrix_product(monkeypatch):
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 256)
    assert fast_layers.small_cpu_map(torch.zeros(1, 3, 16, 16))
    assert not fast_layers.small_cpu_map(torch.zeros(2, 3, 16, 16))  # a batch of 2 has 512 pixels
    assert not fast_layers.small_cpu_map(torch.zeros(1, 3, 32, 16))
    calls = []
    monkeypatch.setattr(torch.nn.functional, "unfold", lambda *a, **k: calls.append(1) or 1 / 0)
    MatmulConv2d(3, 4, 4, 2, 1)(torch.zeros(2, 3, 4, 4))  # a batch: oneDNN, no unfold
    assert not calls


# (in, out, kernel, padding, input height, width), stride 1: PatchGAN's last layer (1 output
# channel, 4x4) and other narrow ones: no padding, 16 columns (4 x 2x2), a 1x1 kernel.
TAP_SUM_CASES = [(6, 1, 4, 1, 7, 6), (5, 1, 3, 0, 4, 5), (4, 4, 2, 1, 3, 3), (3, 2, 1, 0, 2, 3)]


@pytest.mark.parametrize("case", TAP_SUM_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_few_output_channels_as_a_sum_of_taps_match_the_stock_layer(case, dtype, bias, n, channels_last):
    """ConvAsTapSum at any size and batch, in either layout: the stock layer's output and
    gradients to rounding, the input's gradient in the input's layout."""
    cin, cout, k, p, h, w = case
    fast, stock = pair_of("conv", cin, cout, k, 1, p, bias, channels_last)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(1))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    assert computed_by(fast(x.requires_grad_())) == "ConvAsTapSumBackward"
    y_fast, g_fast = forward_backward(fast, x, dtype)
    y_stock, g_stock = forward_backward(stock, x, dtype)
    assert y_fast.shape == y_stock.shape
    assert y_fast.is_contiguous(memory_format=memory_format)
    assert g_fast[0].is_contiguous(memory_format=memory_format)
    rel = 1e-5 if dtype == torch.float32 else 0.02  # as in the matrix-product layers' test
    for a, b in zip([y_fast, *g_fast], [y_stock, *g_stock]):
        a, b = a.float(), b.float()
        torch.testing.assert_close(a, b, atol=rel * max(1.0, b.abs().max().item()), rtol=rel)


def test_which_convolutions_take_the_tap_sum():
    """Stride 1 and at most TAP_SUM_COLUMNS output channels x taps, on the CPU; else the other routes."""

    def route(cout: int, k: int, s: int, padding: int | str = 1) -> str:
        layer = MatmulConv2d(4, cout, k, s, padding, bias=False)
        return type(layer(torch.randn(1, 4, 9, 9)).grad_fn).__name__

    assert route(1, 4, 1) == "ConvAsTapSumBackward"  # PatchGAN's last layer
    assert route(4, 2, 1) == "ConvAsTapSumBackward"  # 16 columns
    assert route(1, 4, 2) != "ConvAsTapSumBackward"  # stride 2: the sum would need 4x the products
    assert route(5, 2, 1) != "ConvAsTapSumBackward"  # 20 columns
    assert route(1, 3, 1, padding="same") != "ConvAsTapSumBackward"  # the stock layer's padding


@pytest.mark.parametrize("kind,case", [(kind, case) for kind, case in LAYER_CASES if case[-2:] != (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n", [1, 3], ids=["batch1", "batch3"])
def test_weight_gradient_as_one_product_matches_the_stock_layers(kind, case, dtype, n, monkeypatch):
    """oneDNN's layers with the weight gradient as one matrix product (WeightGradAsProduct, for
    channels_last input, so not on a 1x1 map: it is contiguous in both layouts): the same output
    and input gradient, the weight gradient to rounding. fp32 is enabled here only to compare at
    fp32's precision; training uses it in bf16."""
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 0)  # the oneDNN route
    monkeypatch.setattr(fast_layers, "PRODUCT_WEIGHT_GRAD_DTYPES", (torch.float32, torch.bfloat16))
    cin, cout, k, s, p, h, w = case
    fast, stock = pair_of(kind, cin, cout, k, s, p, bias=False)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        assert type(fast(x.requires_grad_()).grad_fn).__name__ == "WeightGradAsProductBackward"
    y_fast, g_fast = forward_backward(fast, x, dtype)
    y_stock, g_stock = forward_backward(stock, x, dtype)
    torch.testing.assert_close(y_fast, y_stock, atol=0, rtol=0)  # the same oneDNN call
    torch.testing.assert_close(g_fast[0], g_stock[0], atol=0, rtol=0)  # the same backward call
    rel = 1e-5 if dtype == torch.float32 else 0.02  # the weight's gradient: sums in another order
    b = g_stock[1].float()
    torch.testing.assert_close(g_fast[1].float(), b, atol=rel * max(1.0, b.abs().max().item()), rtol=rel)


def test_which_layers_take_the_weight_gradient_product(monkeypatch):
    """bf16 channels_last, no bias, at most PRODUCT_WEIGHT_GRAD_PIXELS summed over; else oneDNN."""
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 0)
    monkeypatch.setattr(fast_layers, "PRODUCT_WEIGHT_GRAD_PIXELS", 4 * 4)

    def route(layer: nn.Module, shape: tuple, channels_last: bool = True, dtype=torch.bfloat16) -> str:
        x = torch.randn(shape)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return type(layer(x).grad_fn).__name__

    conv, _ = pair_of("conv", 4, 6, 4, 2, 1, bias=False)
    transposed, _ = pair_of("transposed", 4, 6, 4, 2, 1, bias=False)
    assert route(conv, (1, 4, 8, 8)) == "WeightGradAsProductBackward"  # 4x4 out pixels
    assert route(conv, (1, 4, 8, 10)) != "WeightGradAsProductBackward"  # 4x5
    assert route(conv, (2, 4, 8, 8)) != "WeightGradAsProductBackward"  # 2x4x4
    assert route(transposed, (1, 4, 4, 4)) == "WeightGradAsProductBackward"  # 4x4 in pixels
    assert route(transposed, (1, 4, 4, 5)) != "WeightGradAsProductBackward"
    assert route(conv, (1, 4, 8, 8), channels_last=False) != "WeightGradAsProductBackward"
    assert route(conv, (1, 4, 8, 8), dtype=torch.float32) != "WeightGradAsProductBackward"
    with_bias, _ = pair_of("conv", 4, 6, 4, 2, 1, bias=True)
    assert route(with_bias, (1, 4, 8, 8)) != "WeightGradAsProductBackward"
    set_requires_grad(conv, False)  # nothing to gain without a weight gradient
    assert route(conv, (1, 4, 8, 8)) != "WeightGradAsProductBackward"


# The autograd node each route leaves on a layer's output (past the bias a product route adds).
NODE_OF_ROUTE = {
    ("conv", "stock"): "ConvolutionBackward0",
    ("conv", "weight_grad_product"): "WeightGradAsProductBackward",
    ("conv", "tap_sum"): "ConvAsTapSumBackward",
    ("conv", "patch_rows"): "ConvAsProductBackward",
    ("conv", "unfold"): "ViewBackward0",  # unfold's product, viewed as a map
    ("transposed", "stock"): "ConvolutionBackward0",
    ("transposed", "weight_grad_product"): "WeightGradAsProductBackward",
    ("transposed", "patch_rows"): "ConvTransposeAsProductBackward",
    ("transposed", "unfold"): "Col2ImBackward0",  # fold
}


def test_route_of_decides_what_computes_every_call(monkeypatch):
    """route_of is the one decision: over layers, batches, map sizes, layouts, dtypes and biases,
    the layer computes each call exactly as route_of names it, and every route is taken somewhere."""
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 16)  # 1x1 and 4x4 maps at batch 1
    monkeypatch.setattr(fast_layers, "PRODUCT_WEIGHT_GRAD_PIXELS", 64)
    taken = set()
    grid = itertools.product(
        [("conv", 6, 4, 2), ("conv", 1, 4, 1), ("conv", 6, 3, 1), ("transposed", 6, 4, 2)],
        [1, 3],  # batch
        [1, 4, 8],  # map size
        [False, True],  # channels_last network
        [torch.float32, torch.bfloat16],
        [False, True],  # bias
    )
    for (kind, cout, k, s), n, size, channels_last, dtype, bias in grid:
        cls = MatmulConv2d if kind == "conv" else MatmulConvTranspose2d
        layer = cls(4, cout, k, s, 1, bias=bias)
        layer.channels_last = channels_last
        x = torch.randn(n, 4, size, size)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if kind == "conv" and (size + 2 - k) // s + 1 < 1:
            continue  # no output pixel
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            route = route_of(layer, x, compute_weight(layer, x))
            node = computed_by(layer(x))
        assert route in ROUTES and node == NODE_OF_ROUTE[kind, route], (kind, n, size, channels_last, dtype)
        taken.add(route)
    assert taken == set(ROUTES)


def test_route_of_sends_what_only_the_stock_layer_computes_to_it():
    x = torch.randn(1, 4, 4, 4)
    for layer in [
        MatmulConv2d(4, 4, 3, 1, 1, groups=2),
        MatmulConv2d(4, 4, 3, 1, 2, dilation=2),
        MatmulConv2d(4, 4, 3, 1, 1, padding_mode="reflect"),
        MatmulConv2d(4, 1, 3, 1, "same"),
        MatmulConvTranspose2d(4, 4, 4, 2, 1, output_padding=1),
    ]:
        assert route_of(layer, x, layer.weight) == "stock", layer
    transposed = MatmulConvTranspose2d(4, 4, 4, 2, 1)
    assert route_of(transposed, x, transposed.weight) == "unfold"
    assert route_of(transposed, x, transposed.weight, output_size=[8, 8]) == "stock"
    assert transposed(x, output_size=[9, 9]).shape[-2:] == (9, 9)
    assert route_of(transposed, x.to("meta"), transposed.weight) == "stock"  # not the CPU


# ---------------------------------------------------------------------------------------------
# bf16 compute copies
# ---------------------------------------------------------------------------------------------


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 4, 2, 1),
        nn.BatchNorm2d(8),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False),
    )
    init_weights(net)
    return net


def adam(net: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True)


def train_steps(net: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    losses = []
    for i in range(steps):
        x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (net(x).float() - x).abs().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("compiled", [True, False], ids=["fused-kernel", "fallback"])
def test_compute_copies_train_as_autocast_does(compiled, monkeypatch):
    """Adam updating the fp32 weights from the copies' bf16 gradients (and writing the copies)
    takes the steps that autocast + torch's fused Adam take, to fp32 rounding."""
    if not compiled:  # as when no C++ compiler is there
        monkeypatch.setattr(speedups, "compile_adam_with_copy", lambda: None)
    plain, fast = small_net(), small_net()
    fast_layers.use_matmul_layers(plain, channels_last=False)  # the same products, no copies
    opt_plain, opt_fast = adam(plain), adam(fast)
    applied = speedups.accelerate([(fast, opt_fast)], CPU, torch.bfloat16)
    assert applied.compute_copies == 2 and applied.fused_adam == compiled
    assert train_steps(fast, opt_fast, 5) == pytest.approx(train_steps(plain, opt_plain, 5), rel=1e-4)
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Adam's state and the state_dicts are those of plain torch (checkpoints stay interchangeable).
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert opt_fast.state_dict()["state"].keys() == opt_plain.state_dict()["state"].keys()
    for s_fast, s_plain in zip(opt_fast.state.values(), opt_plain.state.values()):
        assert s_fast.keys() == s_plain.keys() and s_fast["step"] == s_plain["step"]
    conv = fast[0]
    assert torch.equal(conv.compute_copy.current(), conv.weight.detach().bfloat16())
    assert conv.compute_copy.tensor.grad is None  # consumed by the step
    assert (conv.weight.grad is None) == compiled  # the fallback hands Adam an fp32 gradient


def test_compute_copy_follows_a_loaded_checkpoint_and_freezing():
    net = small_net()
    opt = adam(net)
    speedups.accelerate([(net, opt)], CPU, torch.bfloat16)
    conv = net[0]
    conv.compute_copy.current()
    other = small_net()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    net.load_state_dict(other.state_dict())  # changes the weights behind the copy's back
    assert torch.equal(conv.compute_copy.current(), other[0].weight.detach().bfloat16())
    set_requires_grad(net, False)  # the plain freeze: the copy follows its weight
    assert not conv.compute_copy.current().requires_grad
    set_requires_grad(net, True)
    assert conv.compute_copy.current().requires_grad
    clone = copy.deepcopy(net)  # a copy with weights of its own gets copies of its own
    assert clone[0].compute_copy is not conv.compute_copy and clone[0].compute_copy.param is clone[0].weight
    with torch.no_grad():
        assert clone(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_compute_copies_only_under_bf16_autocast():
    net = small_net()
    speedups.accelerate([(net, adam(net))], CPU, torch.bfloat16)
    x = torch.randn(1, 3, 8, 8)
    conv = net[0]
    assert fast_layers.compute_weight(conv, x) is conv.weight  # fp32: the parameter itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = fast_layers.compute_weight(conv, x)
    # the copy, in the layout accelerate gave the weight (that of the network's activations)
    assert weight is conv.compute_copy.tensor and torch.equal(weight, conv.weight.detach().bfloat16())
    assert fast_layers.is_channels_last(weight) and fast_layers.is_channels_last(conv.weight)


@pytest.mark.parametrize("compiled", [True, False], ids=["fused-kernel", "fallback"])
def test_channels_last_copies_train_as_autocast_does(compiled, monkeypatch):
    """Layers that hand a channels_last input to oneDNN compute with a channels_last copy of the
    channels_last weight (no reorder of the weight at each call, nor of its gradient at each
    backward): the same steps as autocast on the stock layers with channels_last inputs, and the
    copy follows Adam."""
    monkeypatch.setattr(fast_layers, "SMALL_MAP_PIXELS", 0)  # every map takes the stock route
    if not compiled:
        monkeypatch.setattr(speedups, "compile_adam_with_copy", lambda: None)
    plain, fast = small_net(), small_net()
    plain.register_forward_pre_hook(speedups.channels_last_inputs)
    opt_plain, opt_fast = adam(plain), adam(fast)
    speedups.accelerate([(fast, opt_fast)], CPU, torch.bfloat16)
    assert train_steps(fast, opt_fast, 5) == pytest.approx(train_steps(plain, opt_plain, 5), rel=1e-4)
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    conv = fast[0]
    assert fast_layers.is_channels_last(conv.compute_copy.tensor)
    assert conv.compute_copy.tensor.grad is None  # consumed by the step
    with torch.autocast("cpu", dtype=torch.bfloat16):  # rewritten from the updated weight
        weight = fast_layers.compute_weight(conv, torch.randn(1, 3, 8, 8))
    assert torch.equal(weight, conv.weight.detach().bfloat16())


def test_accelerate_puts_the_copied_weights_in_channels_last():
    """Where weights get bf16 copies (the CPU in bf16), they are put in the activations' layout,
    the same Parameter objects; in fp32 and on CUDA they stay as built."""
    for dtype, device, expected in [
        (torch.bfloat16, CPU, True),
        (torch.float32, CPU, False),
        (torch.bfloat16, torch.device("cuda"), False),  # nothing runs: no GPU needed
    ]:
        net = small_net()
        weights = [net[0].weight, net[3].weight]
        speedups.accelerate([(net, adam(net))], device, dtype)
        assert [net[0].weight, net[3].weight] == weights
        assert all(fast_layers.is_channels_last(w) == expected for w in weights), (dtype, device)


@pytest.mark.parametrize("compiled", [True, False], ids=["fused-kernel", "fallback"])
def test_checkpoints_keep_the_standard_layout_and_resume_exactly(compiled, tmp_path, monkeypatch):
    """The channels_last weights and moments are written in the standard layout (a checkpoint does
    not depend on the run's speedups), and a run resumed from it takes exactly the steps of the
    run that went on: Adam's moments are put back into their weights' layout on loading, since
    torch's fused Adam would otherwise combine NCHW moments with channels_last weights element by
    element in memory order."""
    from training.checkpoint import save_checkpoint

    if not compiled:
        monkeypatch.setattr(speedups, "compile_adam_with_copy", lambda: None)
    net = small_net()
    opt = adam(net)
    speedups.accelerate([(net, opt)], CPU, torch.bfloat16)
    train_steps(net, opt, 2)
    assert fast_layers.is_channels_last(opt.state[net[0].weight]["exp_avg"])
    save_checkpoint({"generator": net.state_dict(), "opt_G": opt.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    tensors = [*saved["generator"].values(), *saved["opt_G"]["state"][0].values()]
    assert all(t.is_contiguous() for t in tensors)

    resumed = small_net()
    opt_resumed = adam(resumed)
    speedups.accelerate([(resumed, opt_resumed)], CPU, torch.bfloat16)
    resumed.load_state_dict(saved["generator"])
    opt_resumed.load_state_dict(saved["opt_G"])
    assert fast_layers.is_channels_last(opt_resumed.state[resumed[0].weight]["exp_avg_sq"])
    assert train_steps(resumed, opt_resumed, 3) == train_steps(net, opt, 3)
    for a, b in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_batchnorm_gets_a_dense_gradient_from_a_skip_connection():
    """Behind torch.cat (the U-Net's skip), BatchNorm's output gradient is a channel slice; the
    hook accelerate() puts on makes it dense in the input's layout. Only the layout changes: the
    gradients are those of the stock layers (fp32, to rounding)."""

    class Skip(nn.Module):  # the U-Net's join of a level's input and output
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(4, 4, 3, 1, 1), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self.norm(self.conv(x))], 1)

    torch.manual_seed(0)
    plain = Skip()
    fast = copy.deepcopy(plain)
    applied = speedups.accelerate([(fast, None)], CPU, torch.float32)
    assert applied.dense_norm_gradients == 1 and "BatchNorm" in applied.describe()
    seen = []
    # runs after accelerate's hook: sees the gradient that BatchNorm's backward gets
    fast.norm.register_forward_hook(lambda m, args, out: out.register_hook(seen.append) and None)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 8, 6, 6)
    for net in (plain, fast):
        (net(x) * upstream).sum().backward()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.parameters(), fast.parameters()):
        # (the conv's bias gradient is zero up to rounding: BatchNorm takes the mean out)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_inference_copies_give_what_autocast_gives():
    """predict.py and demo.py attach bf16 copies without an optimizer (2x faster at batch 1): the
    copy is the weight rounded to bf16 once, as autocast rounds it at every call, so the images
    are bit for bit the same."""
    from evaluation.generate import translate
    from generator import UNetGenerator

    torch.manual_seed(0)
    G = UNetGenerator(ngf=8, num_downs=6)  # 64 px: dropout and the small-map products both run
    init_weights(G)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    fast_layers.use_matmul_layers(G, channels_last=True)
    plain = translate(G, x, False, 5, amp())
    assert len(fast_layers.attach_compute_copies(G, torch.bfloat16)) == 12  # 6 convolutions down, 6 up
    assert torch.equal(translate(G, x, False, 5, amp()), plain)


# ---------------------------------------------------------------------------------------------
# accelerate(): put on from outside, the networks stay the paper's
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_accelerate_keeps_parameters_keys_and_optimizer(dtype):
    from discriminator import PatchDiscriminator
    from generator import UNetGenerator

    G, D = UNetGenerator(ngf=8, num_downs=6), PatchDiscriminator(6, 8)
    stock_types = {type(m) for m in [*G.modules(), *D.modules()]}
    assert not stock_types & {MatmulConv2d, MatmulConvTranspose2d}  # without it: the stock modules
    params = {name: p for net in (G, D) for name, p in net.named_parameters()}
    keys = [list(net.state_dict()) for net in (G, D)]
    opt_G, opt_D = adam(G), adam(D)
    applied = speedups.accelerate([(G, opt_G), (D, opt_D)], CPU, dtype)
    assert applied.matmul_layers == 12 + 5 and applied.channels_last == (dtype == torch.bfloat16)
    assert applied.compute_copies == (17 if dtype == torch.bfloat16 else 0)
    assert [list(net.state_dict()) for net in (G, D)] == keys
    assert all(p is params[name] for net in (G, D) for name, p in net.named_parameters())
    assert opt_G.param_groups[0]["params"][0] is G.down[0].weight  # the optimizer's own objects
    assert "matmul" in applied.describe()


def test_accelerate_on_cuda_changes_only_the_layout():
    """On a GPU no CPU layer is swapped in and no copy made (checked without a GPU: nothing runs)."""
    from generator import UNetGenerator

    G = UNetGenerator(ngf=8, num_downs=6)
    applied = speedups.accelerate([(G, None)], torch.device("cuda"), torch.bfloat16)
    assert applied.channels_last and not applied.matmul_layers and not applied.compute_copies
    assert not any(isinstance(m, (MatmulConv2d, MatmulConvTranspose2d)) for m in G.modules())


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_networks_import_only_torch_and_the_paper_blocks():
    for name in ("generator.py", "discriminator.py"):
        assert imported_modules(ROOT / name) <= {"__future__", "torch", "layers"}, name
    assert imported_modules(ROOT / "layers.py") <= {"__future__", "torch"}


def test_no_method_is_swapped_on_an_instance():
    """No `x.forward = ...` and no `del x.forward` anywhere in the project's code."""
    for path in sorted(ROOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
            for target in targets:
                assert not (isinstance(target, ast.Attribute) and target.attr == "forward"), path.name


@pytest.mark.parametrize("on", [True, False])
def test_the_speedups_setting_puts_the_speed_layer_on_or_leaves_it_off(on):
    """--speedups false: the run trains the stock networks as written (benchmark.py's baseline)."""
    from conftest import tiny_config

    from training.setup import setup

    state = setup(tiny_config(speedups=on, device="cpu"))
    swapped = [
        m for net in (state.G, state.D) for m in net.modules() if type(m).__module__.startswith("speed.")
    ]
    assert bool(swapped) == on and (state.acceleration is not None) == on


def project_files() -> list[Path]:
    """The project's own Python files outside speed/ and the tests."""
    skipped = {"speed", "tests", "data", "checkpoints", "results"}
    folders = {p: p.relative_to(ROOT).parts[:-1] for p in sorted(ROOT.rglob("*.py"))}
    return [
        p for p, parts in folders.items() if not skipped & set(parts) and not any(f[0] == "." for f in parts)
    ]


def test_only_speeds_entry_points_are_used_outside_it():
    """speed/__init__.py is the one entry point: the rest of the project imports what it exports
    (accelerate, Acceleration, GraphedStep), never a module or class inside the package."""
    assert set(speed.__all__) == {"accelerate", "Acceleration", "GraphedStep"}
    reached = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("speed."):
                    reached.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
                elif node.module == "speed":
                    inner = [a.name for a in node.names if a.name not in speed.__all__]
                    reached += [f"{path.relative_to(ROOT)}: from speed import {name}" for name in inner]
            elif isinstance(node, ast.Import):
                inner = [a.name for a in node.names if a.name.startswith("speed.")]
                reached += [f"{path.relative_to(ROOT)}: import {name}" for name in inner]
    assert not reached, "use `from speed import ...` (speed.__all__): " + "; ".join(reached)
