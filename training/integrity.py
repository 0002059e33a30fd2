"""What proves a checkpoint is the one that was written, and fit to use: the checksum of its
contents that checkpoint.save_checkpoint puts in it and load_checkpoint verifies, and the check
that its networks hold only finite numbers.

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
from typing import Any

import torch

CHECKSUM_KEY = "checksum"


def seal(checkpoint: dict) -> dict:
    """The checkpoint with the checksum of its contents added (an old checksum in it replaced)."""
    contents = {key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}
    return {**contents, CHECKSUM_KEY: content_checksum(contents)}


def unseal(checkpoint: dict) -> bool | None:
    """Take the checksum out of a loaded checkpoint: True if the rest matches it, False if not,
    None for a checkpoint written before checkpoints carried one (nothing to check)."""
    written = checkpoint.pop(CHECKSUM_KEY, None)
    return None if written is None else written == content_checksum(checkpoint)


def content_checksum(contents: dict) -> str:
    """The checksum of a checkpoint's contents, "sha256+crc32:<hex>"; the same on any device and
    memory layout. The tensors' CRC-32s are computed in threads (zlib lets go of the GIL)."""
    outline, tensors = hashlib.sha256(), []
    _outline(contents, outline, tensors)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for crc in pool.map(_tensor_crc32, tensors):
            outline.update(crc.to_bytes(4, "little"))
    return f"sha256+crc32:{outline.hexdigest()}"


def _outline(value: Any, digest: Any, tensors: list[torch.Tensor]) -> None:
    """Feed value's structure to digest as self-delimiting tokens; collect its tensors in order."""
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)};".encode())
        tensors.append(value)
    elif isinstance(value, dict):
        digest.update(f"d{len(value)};".encode())
        for key, item in value.items():
            _outline(key, digest, tensors)
            _outline(item, digest, tensors)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'l' if isinstance(value, list) else 't'}{len(value)};".encode())
        for item in value:
            _outline(item, digest, tensors)
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
