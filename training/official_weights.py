"""The authors' trained generators as this project's UNetGenerator.

The official PyTorch code (github.com/junyanz/pytorch-CycleGAN-and-pix2pix) publishes pix2pix
generators as bare state dicts, ``latest_net_G.pth`` (their scripts/download_pix2pix_model.sh
fetches ``http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/<name>.pth``). Their U-Net
is a chain of nested skip-connection blocks: each block keeps its layers in a Sequential called
``model`` and holds the next inner block as one of them, so the keys nest one level per halving
(``model.model.0.weight``, ``model.model.1.model.1.weight``, ``model.model.1.model.3.model.1...``).
Positions within a block's Sequential:

    outermost   0 conv             1 inner block  2 ReLU  3 transposed conv  4 Tanh
    middle      0 LeakyReLU 1 conv 2 norm  3 inner block  4 ReLU  5 transposed conv  6 norm  [7 dropout]
    innermost   0 LeakyReLU 1 conv 2 ReLU  3 transposed conv  4 norm

These are the same tensors, of the same shapes, as UNetGenerator's down / up / final layers, with
the same layer order, dropout places and bias choices; only the names differ. (Their in-place
LeakyReLU also rewrites the skip tensor before it is concatenated; the decoder applies ReLU to
it first, and ReLU(LeakyReLU(x)) = ReLU(x), so the output is the same.)

What the file does not say is taken from their defaults: dropout 0.5 (pix2pix trains with
dropout unless --no_dropout; the weights cannot tell) and, for generating, their test.py's
default of train-mode BatchNorm and dropout (model.eval() only with --eval): eval_mode false.
Their instance norm has no learned scale or shift (affine=False) and no running statistics;
ours learns both, so it gets scale 1 and shift 0, which computes the same.
"""

from __future__ import annotations

import torch

from generator import UNetGenerator

OUTERMOST = "model.model."  # the first block's Sequential, inside UnetGenerator.model
DROPOUT = 0.5  # the official pix2pix default (use_dropout = not --no_dropout)


def is_official(weights: object) -> bool:
    """Whether a loaded file is a state dict of the official nested-block U-Net."""
    return (
        isinstance(weights, dict)
        and isinstance(weights.get(OUTERMOST + "0.weight"), torch.Tensor)
        and all(isinstance(key, str) and key.startswith(OUTERMOST) for key in weights)
    )


def block_prefixes(weights: dict) -> list[str]:
    """The key prefix of every block's Sequential, outermost first: block k+1 is item 1 of the
    outermost block, item 3 of any other."""
    prefixes = [OUTERMOST]
    while True:
        inner = prefixes[-1] + ("1." if len(prefixes) == 1 else "3.") + "model."
        if inner + "1.weight" not in weights:
            return prefixes
        prefixes.append(inner)


def generator_kwargs(weights: dict) -> dict:
    """UNetGenerator's constructor arguments, read off the shapes: the depth (8 blocks: their
    unet_256, 7: unet_128), channels, ngf, and the norm (BatchNorm has a learned scale; their
    instance norm has none, at most the running statistics of files before PyTorch 0.4)."""
    levels = block_prefixes(weights)
    if len(levels) < 5:
        raise ValueError(
            f"an official generator file, but a U-Net of {len(levels)} level{'s' * (len(levels) > 1)}, "
            f"not 5 or more: only their unet_128 and unet_256 generators map onto this project's"
        )
    # The outermost block's transposed convolution, and the innermost's (item 3 of each).
    for key in (OUTERMOST + "3.weight", levels[-1] + "3.weight"):
        if not isinstance(weights.get(key), torch.Tensor) or weights[key].dim() != 4:
            raise ValueError(f"an official generator file, but without the tensor {key}")
    first, last = weights[OUTERMOST + "0.weight"], weights[OUTERMOST + "3.weight"]
    for tensor, layer, what in ((first, "first convolution", "takes"), (last, "last convolution", "gives")):
        channels = (
            tensor.shape[1] if tensor.dim() == 4 else None
        )  # conv: (out, in, ...); transposed: (in, out, ...)
        if channels not in (1, 3):
            raise ValueError(
                f"an official generator file, but its {layer} {what} {channels} channels (shape "
                f"{tuple(tensor.shape)}); this project's U-Net {what} 1 (grayscale) or 3 (RGB)"
            )
    return {
        "in_channels": first.shape[1],  # conv weight: (out, in, 4, 4)
        "out_channels": last.shape[1],  # transposed conv weight: (in, out, 4, 4)
        "ngf": first.shape[0],
        "num_downs": len(levels),
        "norm": "batch" if levels[1] + "2.weight" in weights else "instance",
        "dropout": DROPOUT,
    }


def layer_names(num_downs: int, levels: list[str]) -> dict[str, str]:
    """UNetGenerator's layer prefixes -> the official ones (the layers with tensors)."""
    innermost = levels[-1]
    names = {"down.0.": levels[0] + "0.", "final.1.": levels[0] + "3."}
    for k in range(1, num_downs - 1):  # the middle blocks, outer to inner
        names[f"down.{k}.1."], names[f"down.{k}.2."] = levels[k] + "1.", levels[k] + "2."
        j = num_downs - 1 - k  # decoder blocks count from the bottleneck up
        names[f"up.{j}.1."], names[f"up.{j}.2."] = levels[k] + "5.", levels[k] + "6."
    names[f"down.{num_downs - 1}.1."] = innermost + "1."
    names["up.0.1."], names["up.0.2."] = innermost + "3.", innermost + "4."
    return names


def to_project(weights: dict) -> tuple[dict, dict]:
    """(generator_kwargs, state dict of UNetGenerator(**generator_kwargs)) of an official file.

    Raises ValueError naming the first tensor that is missing or left over."""
    kwargs = generator_kwargs(weights)
    names = layer_names(kwargs["num_downs"], block_prefixes(weights))
    with torch.device("meta"):  # only the names and shapes: no memory, no initialisation
        expected = UNetGenerator(**kwargs).state_dict()
    mapped, used = {}, set()
    for key, like in expected.items():
        ours, field = key.rsplit(".", 1)
        theirs = names[ours + "."] + field
        if theirs in weights:
            mapped[key] = weights[theirs]
            used.add(theirs)
        elif field == "num_batches_tracked":  # files from before PyTorch 0.4 lack the counter
            mapped[key] = torch.tensor(0, dtype=torch.long)
        elif kwargs["norm"] == "instance" and field in ("weight", "bias") and ours.endswith(".2"):
            mapped[key] = torch.ones(like.shape) if field == "weight" else torch.zeros(like.shape)
        else:
            raise ValueError(f"an official generator file, but without the tensor {theirs}")
    # Their loader drops the running statistics of instance norms (kept by files before 0.4).
    ignored = ("running_mean", "running_var", "num_batches_tracked") if kwargs["norm"] == "instance" else ()
    left = sorted(k for k in weights if k not in used and not k.endswith(ignored))
    if left:
        raise ValueError(f"an official generator file, but with a tensor this U-Net lacks: {left[0]}")
    return kwargs, mapped


def as_project(loaded: object, name: str) -> object:
    """A loaded file as this project reads it: an official generator becomes a snapshot of this
    project's format (checkpoint_format.py, which adds the format number) with the run settings
    of the official defaults: generate as their test.py does (eval_mode false), at the size the
    U-Net was built for (their unet_256: 256 px). Anything else is returned as it is. Raises
    ValueError for an official file that does not map."""
    if not is_official(loaded):
        return loaded
    kwargs, generator = to_project(loaded)
    config = {
        "name": name,
        "image_size": 2 ** kwargs["num_downs"],
        "input_nc": kwargs["in_channels"],
        "output_nc": kwargs["out_channels"],
        "ngf": kwargs["ngf"],
        "norm": kwargs["norm"],
        "dropout": kwargs["dropout"],
        "eval_mode": False,
    }
    return {
        "kind": "snapshot",
        "generator": generator,
        "generator_kwargs": kwargs,
        "config": config,
        "epoch": 0,
        "history": {},
        "official": True,
    }
