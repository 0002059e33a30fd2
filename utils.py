"""Helpers shared by the scripts and the networks: layers, seeding, devices, and writing outputs.

Every output file is written to a temporary file in the same folder and then moved into place
with ``os.replace``, so a crash or kill at any moment leaves either the previous complete file or
the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import html
import itertools
import os
import random
import tempfile
import types
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

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
# levels (16x16 pixels and less, 512-1024 channels) its forward+backward runs 1.3-3x slower than
# the same arithmetic as one matrix product (measured on a 2-core AVX-512 Xeon: 66 ms -> 21 ms
# for the 1024 -> 512 channel transposed convolution at 2x2). These two subclasses keep the
# parameters, state_dict and results of nn.Conv2d / nn.ConvTranspose2d and only take that route
# for small maps on the CPU; everywhere else they are the stock layers.
SMALL_MAP_PIXELS = 16 * 16


def _small_cpu_map(x: torch.Tensor) -> bool:
    # Exported graphs (ONNX, TorchScript) get the stock layers: they run elsewhere, at any size.
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed as unfold + matmul for small CPU feature maps (groups=1, dilation=1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _small_cpu_map(x) or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            return super().forward(x)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C_in*kh*kw, L)
        out = torch.matmul(self.weight.flatten(1), cols)  # (N, C_out, L)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(n, -1, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as matmul + fold for small CPU feature maps (groups=1, dilation=1)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (not _small_cpu_map(x) or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.output_padding != (0, 0)):
            return super().forward(x, output_size)
        n, c_in, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # Every input pixel spreads a (C_out, kh, kw) patch; fold sums the overlapping patches.
        cols = torch.matmul(self.weight.flatten(1).t(), x.reshape(n, c_in, h * w))  # (N, C_out*kh*kw, h*w)
        size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
        out = F.fold(cols, size, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C_out, H, W)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out


# ---------------------------------------------------------------------------------------------
# BatchNorm across processes
# ---------------------------------------------------------------------------------------------

class _SumOverRanks(torch.autograd.Function):
    """Sum a tensor over all processes of the group.

    Every process's loss depends on the sum (through the shared batch statistics), so the gradient
    of the sum on each process is the sum of every process's gradient with respect to it.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batches of all processes together.

    torch.nn.SyncBatchNorm runs only on GPUs (its kernels are CUDA ones), so CPU processes (gloo)
    use this one: two small all-reduces per layer (sum and count, then squared deviations from the
    global mean: the two-pass variance, which does not cancel like E[x^2] - E[x]^2). Outside
    training, or in a single process, it is plain BatchNorm2d; its state_dict is the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()  # statistics in fp32, also under autocast
        dims = (0, 2, 3)  # per channel, over the batch and the pixels
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        sums = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))  # (C + 1,)
        n = sums[-1]
        if n.item() <= 1:  # the same n in every process, so all raise together
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        mean = (sums[:-1] / n)[None, :, None, None]  # (1, C, 1, 1)
        centred = xf - mean
        var = (_SumOverRanks.apply(centred.square().sum(dims)) / n)[None, :, None, None]  # biased, as BN
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.flatten().detach(), var.flatten().detach(), n.detach())
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """As BatchNorm2d does: exponential (or cumulative) averages, with the unbiased variance."""
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * n / (n - 1), alpha=factor)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Turn every BatchNorm2d of `module` into a synchronised one that keeps its parameters and buffers.

    torch's SyncBatchNorm (fused CUDA kernels) on GPUs, SyncBatchNorm2d elsewhere. The parameters stay the same objects, and the state_dict keys stay the same, so
    checkpoints load either way.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            for key, tensor in itertools.chain(child.named_parameters(recurse=False),
                                               child.named_buffers(recurse=False)):
                setattr(synced, key, tensor)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module


@contextlib.contextmanager
def local_norm_stats(module: nn.Module) -> Iterator[None]:
    """Let synchronised BatchNorm layers normalise with this process's batch alone, like BatchNorm2d.

    In train mode a synchronised layer waits in a collective until every process runs the same
    layer, so generating samples or metrics in rank 0 alone would hang there (or meet another
    collective of the others and fail). Nothing is lost by normalising locally: had every process
    run the same inputs through the synchronised layer, the statistics over those identical
    batches would be exactly rank 0's own, as in a single process.
    """
    synced = [m for m in module.modules() if isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm2d))]
    for m in synced:
        m.forward = types.MethodType(nn.modules.batchnorm._BatchNorm.forward, m)  # shadows the class's
    try:
        yield
    finally:
        for m in synced:
            del m.forward


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze D while G is updated, so G's step does not also compute D's weight gradients."""
    for p in module.parameters():
        p.requires_grad_(flag)


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


# ---------------------------------------------------------------------------------------------
# Seeding, devices and precision
# ---------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The state of every random-number generator, as tensors and plain data (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    """"auto" picks the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX).

    oneDNN also runs bf16 on plain AVX-512 by emulation, but that is about 2x slower than fp32.
    """
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for "auto"/"fp32"/"bf16"/"fp16"; "auto" takes bf16 where it is fast."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16: only supported on CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Writing outputs atomically
# ---------------------------------------------------------------------------------------------

class OutputError(RuntimeError):
    """An output file could not be written (disk full, no permission); the message names it."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not a checkpoint, or does not fit; the message names it."""


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then move it onto `path`.

    A failure leaves the previous `path` as it was and raises OutputError naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise OutputError(f"cannot write {path}: {err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file (JSON, HTML) atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain data only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a safe checkpoint
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise CheckpointError(f"{path}: not a pix2pix checkpoint (no generator weights)")
    return checkpoint


def check_state_dict(module: nn.Module, saved: dict, what: str, path: str | Path) -> None:
    """Raise CheckpointError naming the first parameter whose name or shape does not match."""
    expected = module.state_dict()
    for key in sorted(set(expected) | set(saved)):
        if key not in saved or key not in expected:
            where = "missing from the checkpoint" if key not in saved else "not in the configured network"
            raise CheckpointError(f"{path}: {what} parameter {key} is {where}")
        if tuple(saved[key].shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: {what} parameter {key} has shape {tuple(saved[key].shape)} in the "
                                  f"checkpoint but {tuple(expected[key].shape)} in the configured network")


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """Write dict rows as CSV; the columns are the keys of all rows, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def save_sample_grid(rows: Sequence[torch.Tensor], path: str | Path) -> None:
    """Save images as a grid, one row per example: each row is a list [input, generated, target].

    rows: tensors of shape (3, H, W) or (1, H, W) in [-1, 1]; 1-channel images are shown in gray.
    Images of different sizes (full-size evaluation items) are padded with black at the bottom
    and right to the largest height and width, so each keeps its own shape in the grid.
    """
    from torchvision.utils import make_grid, save_image

    images = [image.float().cpu().expand(3, -1, -1) for row in rows for image in row]  # (3, H_i, W_i)
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    images = torch.stack([F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2]), value=-1.0)
                          for i in images])  # (N, 3, height, width)
    grid = make_grid(images, nrow=len(rows[0]), padding=2, normalize=True, value_range=(-1, 1))
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Save one (C, H, W) image in [-1, 1] as an 8-bit PNG (C = 1 gray, C = 3 RGB)."""
    from torchvision.utils import save_image as save

    atomic_write(path, lambda tmp: save(image.float().cpu(), tmp, format="png", normalize=True, value_range=(-1, 1)))


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Moving average over `window` points (shorter at the start), for readable loss curves."""
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (cumulative[end] - cumulative[start]) / (end - start)


def plot_curves(epochs: Sequence[dict], steps: dict[str, list[float]], names: Sequence[str],
                path: str | Path) -> None:
    """One panel per quantity: its epoch values and, when given, a smoothed per-step curve.

    epochs: rows with "epoch" and a value per name (rows without a name's value are skipped, e.g.
    epochs without validation); steps: "epoch" (fractional) and a value per name, one point
    every few iterations (empty for quantities measured once per epoch).
    """
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        if steps.get(name):
            ax.plot(steps["epoch"], smooth(steps[name], 25), lw=0.8, alpha=0.6, label="smoothed steps")
        points = [(row["epoch"], row[name]) for row in epochs if row.get(name) not in (None, "")]
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", ms=3, label="per epoch")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if steps:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# HTML pages
# ---------------------------------------------------------------------------------------------

def _cell(value) -> str:
    """A table cell: numbers with 4 significant digits, anything else as escaped text."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def html_page(title: str, body: Sequence[str]) -> str:
    """A small self-contained HTML page (inline style, relative links only)."""
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


def write_gallery(epochs: Sequence[dict], loss_names: Sequence[str], metric_names: Sequence[str],
                  folder: str | Path, title: str) -> None:
    """folder/index.html: the loss and metric plots, then each epoch's sample grid, newest first,
    under a table of that epoch's losses and validation metrics. Links are relative to folder."""
    folder = Path(folder)
    body = [f'<p><img src="{name}" alt="{name}"></p>' for name in ("loss.png", "metrics.png")
            if (folder / name).is_file()]
    columns = ["epoch", *loss_names, *metric_names, "lr", "seconds"]
    for row in reversed(epochs):
        grid = f"samples/epoch_{row['epoch']:03d}.png"
        body.append(f"<h2>Epoch {row['epoch']}</h2>")
        body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr><tr>"
                    + "".join(_cell(row.get(c, "")) for c in columns) + "</tr></table>")
        if (folder / grid).is_file():
            body.append(f'<p><img src="{grid}" alt="epoch {row["epoch"]}: input | generated | target"></p>')
    write_text(folder / "index.html", html_page(title, body))
