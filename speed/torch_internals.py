"""The parts of torch that speed/ relies on although torch does not promise them, in one place.

Each is named as torch spells it, with what speed/ uses it for. They were checked against torch
CHECKED_WITH; tests/speed/test_torch_internals.py checks each against the installed torch and
says which one changed, and also that speed/ reaches no private attribute of torch missing here.
Nothing imports this module to run: it is the list a torch upgrade is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKED_WITH = "2.14.1"  # the torch version every entry below was checked against


@dataclass(frozen=True)
class Internal:
    """One part of torch that speed/ relies on."""

    name: str  # where it is, as torch spells it (with the signature relied on)
    attribute: str  # the attribute or option name speed/'s code spells
    used_for: str  # what speed/ does with it, and where


TENSOR_VERSION = Internal(
    "torch.Tensor._version",
    "_version",
    "matmul_layers.ComputeCopy: the in-place version counter of a weight tells whether its bf16 copy "
    "is stale (the weight was loaded or initialised behind the optimizer's back)",
)
CONV_FORWARD = Internal(
    "torch.nn.Conv2d._conv_forward(input, weight, bias)",
    "_conv_forward",
    "matmul_layers.MatmulConv2d: the stock route computes with the bf16 compute copy instead of "
    "the layer's own weight",
)
OUTPUT_PADDING = Internal(
    "torch.nn.ConvTranspose2d._output_padding(input, output_size, stride, padding, kernel_size, "
    "num_spatial_dims, dilation)",
    "_output_padding",
    "matmul_layers.MatmulConvTranspose2d: the stock route with the compute copy needs the output "
    "padding the stock forward would derive",
)
CONVOLUTION_BACKWARD = Internal(
    "torch.ops.aten.convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, "
    "dilation, transposed, output_padding, groups, output_mask)",
    "convolution_backward",
    "conv_products.WeightGradAsProduct: oneDNN's input gradient, without its weight gradient",
)
INDUCTOR_DYNAMIC_THREADS = Internal(
    'torch.compile(options={"cpp.dynamic_threads": True}) (torch._inductor.config.cpp.dynamic_threads)',
    "cpp.dynamic_threads",
    "adam_copies.compile_adam_with_copy: the fused bf16 Adam loop is compiled parallel whatever the "
    "size of the probe it is compiled with",
)

INTERNALS = (TENSOR_VERSION, CONV_FORWARD, OUTPUT_PADDING, CONVOLUTION_BACKWARD, INDUCTOR_DYNAMIC_THREADS)
