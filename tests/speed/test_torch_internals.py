"""The parts of torch that speed/ relies on without torch promising them (speed/torch_internals.py):
each still there and behaving as it did in the torch they were checked against, and none missing
from that list. A failure names the internal, what speed/ uses it for and the torch versions."""

from __future__ import annotations

import ast
import inspect
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from torch import nn

from speed import torch_internals as internals
from speed.torch_internals import Internal


def same(out: object, expected: torch.Tensor) -> bool:
    return (
        isinstance(out, torch.Tensor)
        and out.shape == expected.shape
        and torch.allclose(out, expected, atol=1e-5)
    )


def version_counter() -> None:
    weight = nn.Parameter(torch.zeros(3))
    before = weight._version
    with torch.no_grad():
        weight.add_(1.0)
    assert isinstance(before, int) and weight._version > before, "an in-place change leaves it as it was"


def conv_forward() -> None:
    names = list(inspect.signature(nn.Conv2d._conv_forward).parameters)
    assert names == ["self", "input", "weight", "bias"], f"its parameters are now {names}"
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 5, 5)
    other = torch.randn_like(conv.weight)
    assert same(conv._conv_forward(x, other, conv.bias), F.conv2d(x, other, conv.bias, 1, 1)), "other numbers"


def output_padding() -> None:
    names = list(inspect.signature(nn.ConvTranspose2d._output_padding).parameters)
    expected = [
        "self",
        "input",
        "output_size",
        "stride",
        "padding",
        "kernel_size",
        "num_spatial_dims",
        "dilation",
    ]
    assert names == expected, f"its parameters are now {names}"
    layer = nn.ConvTranspose2d(3, 4, 4, 2, 1)
    x = torch.randn(1, 3, 5, 5)
    padding = [layer._output_padding(x, size, (2, 2), (1, 1), (4, 4), 2, (1, 1)) for size in (None, [11, 10])]
    assert [list(p) for p in padding] == [[0, 0], [1, 0]], f"it gives {padding}"


def convolution_backward() -> None:
    arguments = [a.name for a in torch.ops.aten.convolution_backward.default._schema.arguments]
    expected = [
        "grad_output",
        "input",
        "weight",
        "bias_sizes",
        "stride",
        "padding",
        "dilation",
        "transposed",
        "output_padding",
        "groups",
        "output_mask",
    ]
    assert arguments == expected, f"its arguments are now {arguments}"
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    weight = torch.randn(4, 3, 4, 4)
    out = F.conv2d(x, weight, None, 2, 1)
    grad = torch.randn_like(out)
    (expected_grad,) = torch.autograd.grad(out, x, grad)
    grad_x = torch.ops.aten.convolution_backward(
        grad, x, weight, None, (2, 2), (1, 1), (1, 1), False, (0, 0), 1, (True, False, False)
    )[0]
    assert same(grad_x, expected_grad), "it computes another input gradient"


def inductor_dynamic_threads() -> None:
    from torch._inductor import config

    assert isinstance(getattr(config.cpp, "dynamic_threads", None), bool), "the option is gone"


CHECKS: dict[Internal, Callable[[], None]] = {
    internals.TENSOR_VERSION: version_counter,
    internals.CONV_FORWARD: conv_forward,
    internals.OUTPUT_PADDING: output_padding,
    internals.CONVOLUTION_BACKWARD: convolution_backward,
    internals.INDUCTOR_DYNAMIC_THREADS: inductor_dynamic_threads,
}


def test_every_listed_internal_has_a_check():
    assert set(CHECKS) == set(internals.INTERNALS)


@pytest.mark.parametrize("internal", internals.INTERNALS, ids=lambda i: i.attribute)
def test_the_torch_internals_speed_relies_on_are_as_checked(internal: Internal):
    problem = None
    try:
        CHECKS[internal]()
    except Exception as err:  # AttributeError, TypeError, AssertionError...: all say the same
        problem = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    if problem:  # failed outside the except block: the message alone, not the check's traceback
        pytest.fail(
            f"torch {torch.__version__} changed {internal.name} (checked with torch "
            f"{internals.CHECKED_WITH}), which speed/ relies on: {internal.used_for}. "
            f"What differs: {problem}",
            pytrace=False,
        )


def test_every_private_torch_attribute_speed_reaches_is_listed():
    """Any `._name` in speed/ that speed/ does not define itself is torch's, and must be listed."""
    defined, reached = set(), set()
    for path in sorted((ROOT / "speed").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                if private and isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
                elif private:
                    reached.add(node.attr)
    listed = {i.attribute for i in internals.INTERNALS}
    assert reached - defined <= listed, (
        f"list these in speed/torch_internals.py: {reached - defined - listed}"
    )
