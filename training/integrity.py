"""What proves a checkpoint is the one that was written, and fit to use: the checksum of its
contents that checkpoint_format.save_checkpoint puts in it and load_checkpoint verifies (a file
edited on purpose gets a new one from tools/reseal_checkpoint.py), and the check that its
networks hold only finite numbers.

The checksum is of the contents as torch.load gives them back (not of the file's bytes): a
SHA-256 of their outline (keys, plain values, each tensor's dtype and shape) and of a CRC-32 of
every tensor's bytes. CRC-32 for the bulk because it is several times faster than SHA-256
(docs/recovery.md) and as good against damage: it catches every burst of up to 32 bits and
misses other damage once in 2^32; against a deliberate edit no checksum stored in the file
helps, since whoever edits can write a new one. It travels inside the checkpoint under the key
"checksum", so the two are written by one atomic rename and no kill can separate them.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch

CHECKSUM_KEY = "checksum"
# A checkpoint nests its values a few levels deep (an optimizer's state: 4) and holds some
# thousands of plain values (the loss points of the history: 5 per logged iteration).
MAX_DEPTH = 32
MAX_VALUES = 20_000_000


def seal(checkpoint: dict) -> dict:
    """The checkpoint with the checksum of its contents added (an old checksum in it replaced)."""
    contents = {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}
    return {**contents, CHECKSUM_KEY: content_checksum(contents)}


def unseal(checkpoint: dict) -> bool | None:
    """Take the checksum out of a loaded checkpoint: True if the rest matches it, False if not,
    None for a checkpoint without one (some of format 1: nothing to check). ValueError for
    contents nested deeper or larger than a checkpoint's (_walk), checked before anything else."""
    written = checkpoint.pop(CHECKSUM_KEY, None)
    if written is None:
        check_bounds(checkpoint)  # what the checksum's walk checks, for the files without one
        return None
    return written == content_checksum(checkpoint)


def content_checksum(contents: dict) -> str:
    """The checksum of a checkpoint's contents, "sha256+crc32:<hex>"; the same on any device and
    memory layout. The tensors' CRC-32s are computed in threads (zlib lets go of the GIL)."""
    outline, tensors = hashlib.sha256(), []
    _outline(contents, outline, tensors)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for crc in pool.map(_tensor_crc32, tensors):
            outline.update(crc.to_bytes(4, "little"))
    return f"sha256+crc32:{outline.hexdigest()}"


def _walk(contents: Any) -> Iterator[Any]:
    """Every value in `contents`, containers before what they hold, dict keys before their values,
    in order: without recursion, and bounded (ValueError) to MAX_DEPTH levels and MAX_VALUES values,
    so that a crafted file of deeply nested or endless lists is refused instead of exhausting the
    interpreter's stack or the time of a load."""
    stack, seen = [(contents, 0)], 1
    while stack:
        value, depth = stack.pop()
        yield value
        if isinstance(value, (dict, list, tuple)) and value:
            if depth == MAX_DEPTH:
                raise ValueError(f"nests values more than {MAX_DEPTH} levels deep; a checkpoint nests a few")
            seen += len(value) * (2 if isinstance(value, dict) else 1)  # counted before they are stacked
            if seen > MAX_VALUES:
                raise ValueError(f"holds more than {MAX_VALUES} values, more than any checkpoint of a run")
            items = [part for pair in value.items() for part in pair] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in reversed(items))


def check_bounds(contents: Any) -> None:
    """ValueError if `contents` nests deeper or holds more values than a checkpoint does (_walk)."""
    for _ in _walk(contents):
        pass


def _outline(contents: Any, digest: Any, tensors: list[torch.Tensor]) -> None:
    """Feed the structure of contents to digest as self-delimiting tokens; collect its tensors in order."""
    for value in _walk(contents):
        if isinstance(value, torch.Tensor):
            digest.update(f"T{value.dtype}{tuple(value.shape)};".encode())
            tensors.append(value)
        elif isinstance(value, dict):
            digest.update(f"d{len(value)};".encode())
        elif isinstance(value, (list, tuple)):
            digest.update(f"{'l' if isinstance(value, list) else 't'}{len(value)};".encode())
        else:  # str, int, float, bool, None: repr is exact, and the same after torch.load
            text = f"{type(value).__name__}:{value!r}"
            digest.update(f"{len(text)}:{text}".encode("utf-8", "surrogatepass"))


def _tensor_crc32(tensor: torch.Tensor) -> int:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # its bytes, in order
    return zlib.crc32(data.numpy())


def first_non_finite(weights: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity (a weight or a
    BatchNorm statistic: the network would only ever produce NaN), or None."""
    for key, tensor in weights.items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()
        ):
            return key
    return None
