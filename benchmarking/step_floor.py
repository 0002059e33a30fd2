"""The training step against the machine's limit (benchmark.py's ``floor``).

- The step's arithmetic: the FLOPs of one training step, counted by torch.utils.flop_counter
  while the step runs (convolutions, their backward passes, matrix products; compiled kernels run
  eagerly for it, so that the counter sees them).
- The machine's peak in the step's dtype, measured: the better of a 2048x2048 matrix product and
  the step's own largest convolution (its shapes, dtype and memory format), best of a few runs.
- floor = FLOPs / peak, the seconds of a step whose every FLOP ran at that peak and nothing else
  cost time; efficiency = floor / the measured seconds of a step.
- What the FLOP floor leaves out, the optimizers' update: Adam reads every weight, its gradient and
  both moments and writes the weight and both moments, a pass bound by memory traffic that
  torch.optim runs after the backward pass. ``update`` gives its bytes, its seconds in the step
  and the bandwidth they make, against the machine's bandwidth (measured like the peak: the
  better of a copy and an in-place add of buffers larger than the caches), and the floor with
  the update's seconds added.
- Which instruction sets ran: PyTorch's own kernels (torch.backends.cpu.get_cpu_capability()),
  oneDNN's and MKL's (their verbose reports of one step), and whether the environment limited
  them to emulate another kind of CPU (EMULATIONS, which benchmark.py --emulate sets).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from benchmarking.epoch_cost import device_sync

# The variables that limit PyTorch's, oneDNN's and MKL's instruction sets, per emulated CPU kind.
EMULATIONS = {
    # AVX2 and FMA only (e.g. AMD EPYC before Zen 4, Intel before Skylake-SP): fp32 training.
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    # AVX-512 without bf16 (e.g. Intel Skylake-SP, Cascade Lake): fp32 training.
    "avx512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
MATMUL_SIZE = 2048
# Each buffer of the bandwidth test: larger than the last-level cache (105 MB on the Xeon measured
# in docs/performance.md), so that the test measures memory, not cache.
BANDWIDTH_MB = 256
# Adam's reads and writes per weight, in units of the weight's size: the weight, its gradient and
# both moments read, the weight and both moments written. (With bf16 compute copies the gradient
# read is half as large and the copy written is as large again: the same 7 x 4 bytes.)
ADAM_ACCESSES = 7


class ConvolutionLog(TorchDispatchMode):
    """Records every convolution the code under it runs: shapes, dtype, layout and FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            x, weight, _, stride, padding, dilation, transposed, output_padding, groups = args
            self.calls.append(
                {
                    "input": tuple(x.shape),
                    "weight": tuple(weight.shape),
                    "stride": tuple(stride),
                    "padding": tuple(padding),
                    "dilation": tuple(dilation),
                    "transposed": bool(transposed),
                    "output_padding": tuple(output_padding),
                    "groups": groups,
                    "dtype": x.dtype,
                    "channels_last": x.dim() == 4
                    and not x.is_contiguous()
                    and x.is_contiguous(memory_format=torch.channels_last),
                    "flops": conv_flop_count(list(x.shape), list(weight.shape), list(out.shape), transposed),
                }
            )
        return out


def count_step(step: Callable[[], object]) -> tuple[int, dict]:
    """Run `step` once, counting its FLOPs; returns them and its largest convolution's forward."""
    log = ConvolutionLog()
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter, log:
        step()
    return counter.get_total_flops(), max(log.calls, key=lambda call: call["flops"])


def best_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of `repeats` runs of `work` after one untimed run: the least disturbed one."""
    sync = device_sync(device)
    work()
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_gflops(
    dtype: torch.dtype, device: torch.device, repeats: int = 3, size: int = MATMUL_SIZE
) -> float:
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats, device) / 1e9


def conv_gflops(conv: dict, device: torch.device, repeats: int = 3) -> float:
    """GFLOP/s of the forward of a convolution recorded by ConvolutionLog, run alone."""
    x = torch.randn(conv["input"], device=device).to(conv["dtype"])
    if conv["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(conv["weight"], device=device).to(conv["dtype"]) * 0.02
    args = (conv["stride"], conv["padding"])
    if conv["transposed"]:
        run = lambda: F.conv_transpose2d(x, weight, None, *args, conv["output_padding"], conv["groups"])  # noqa: E731
    else:
        run = lambda: F.conv2d(x, weight, None, *args, conv["dilation"], conv["groups"])  # noqa: E731
    with torch.no_grad():
        return conv["flops"] / best_seconds(run, repeats, device) / 1e9


def bandwidth_gbs(device: torch.device, repeats: int = 3, megabytes: int = BANDWIDTH_MB) -> dict:
    """Memory bandwidth now, in GB/s of bytes read plus written, of fp32 buffers larger than the
    caches: a copy (one read, one write elsewhere) and an in-place add (two reads, one write back
    where one of them was read, as Adam writes its weights and moments)."""
    n = megabytes * 2**20 // 4
    a, b, c = (torch.ones(n, device=device) for _ in range(3))  # b grows by 1 a run: exact in fp32
    copy_s = best_seconds(lambda: c.copy_(a), repeats, device)
    add_s = best_seconds(lambda: b.add_(a), repeats, device)
    return {"copy_gbs": 2 * 4 * n / copy_s / 1e9, "add_gbs": 3 * 4 * n / add_s / 1e9}


def machine_peaks(dtype: torch.dtype, conv: dict, device: torch.device) -> dict:
    """The machine's peaks now: arithmetic in `dtype` (a large matrix product and the step's
    largest convolution) and memory bandwidth (a copy and an in-place add)."""
    return {
        "matmul_gflops": matmul_gflops(dtype, device),
        "conv_gflops": conv_gflops(conv, device),
        **bandwidth_gbs(device),
    }


def update_seconds(step: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """The seconds the optimizers' steps take inside `step`, the best of `repeats` steps: global
    hooks time every torch.optim step, around the optimizer's own hooks (which is where
    adam_copies updates the weights that have bf16 copies)."""
    sync, spent = device_sync(device), 0.0

    def started(*_) -> None:
        nonlocal spent
        sync()
        spent -= time.perf_counter()

    def ended(*_) -> None:
        nonlocal spent
        sync()
        spent += time.perf_counter()

    hooks = [register_optimizer_step_pre_hook(started), register_optimizer_step_post_hook(ended)]
    try:
        best = float("inf")
        for _ in range(repeats):
            spent = 0.0
            step()
            best = min(best, spent)
        return best
    finally:
        for hook in hooks:
            hook.remove()


def update_bytes(optimizers: list[torch.optim.Optimizer]) -> int:
    """The bytes Adam's update of these optimizers' weights must read and write at the least."""
    weights = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    return sum(ADAM_ACCESSES * p.element_size() * p.numel() for p in weights)


def describe(conv: dict) -> str:
    """A convolution in one line: input -> weight, stride, padding, dtype and layout."""
    kind = "conv_transpose2d" if conv["transposed"] else "conv2d"
    layout = "channels_last" if conv["channels_last"] else "NCHW"
    dtype = str(conv["dtype"]).removeprefix("torch.")
    return (
        f"{kind} {'x'.join(map(str, conv['input']))} * {'x'.join(map(str, conv['weight']))} "
        f"stride {conv['stride'][0]} padding {conv['padding'][0]} {dtype} {layout}"
    )


@contextlib.contextmanager
def stdout_into(path: str) -> Iterator[None]:
    """Send file descriptor 1 (where oneDNN and MKL print their verbose lines) into `path`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # the C library's buffered lines go into the file first
        os.dup2(saved, 1)
        os.close(saved)


def verbose_lines(work: Callable[[], object]) -> list[str]:
    """What oneDNN and MKL report while `work` runs (their verbose modes), line by line."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "verbose.txt")
        with (
            stdout_into(path),
            torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON),
            torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON),
        ):
            work()
        with open(path, encoding="utf-8", errors="replace") as lines:
            return lines.read().splitlines()


def instruction_sets(lines: list[str]) -> dict:
    """Which instruction sets ran: PyTorch's kernels, and oneDNN's and MKL's from their verbose
    `lines` (oneDNN's ISA and the implementations of its compute primitives, e.g.
    brg_conv_fwd:avx512_core_bf16 or jit:avx2); `emulated` names the limiting variables set."""
    onednn_isa, kernels, mkl = None, set(), None
    for line in lines:
        fields = line.split(",")
        if line.startswith("onednn_verbose") and ",info,cpu,isa:" in line:
            onednn_isa = line.split("isa:", 1)[1].strip()
        elif line.startswith("onednn_verbose") and "exec" in fields and len(fields) > 6:
            primitive = fields.index("exec") + 2  # exec, engine, primitive, implementation
            if fields[primitive] in ("convolution", "deconvolution", "matmul", "inner_product"):
                kernels.add(f"{fields[primitive]} {fields[primitive + 1]}")
        elif line.startswith("MKL_VERBOSE") and "architecture" in line and mkl is None:
            mkl = line.split("architecture", 1)[1].split(", Lnx")[0].strip()
    return {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa,
        "onednn_kernels": sorted(kernels),
        "mkl": mkl,
        "emulated": {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)} or None,
    }


def floor_summary(flops: int, update: int, peaks: list[dict], s_per_iter: float, blocks: list[float]) -> dict:
    """The floor and the efficiency (floor / seconds per step) of the median and of every block,
    and under ``update`` the optimizers' step that the floor leaves out (`update` bytes). `peaks`
    are machine_peaks' measurements with the update's seconds, one per round of blocks: the best
    of them is the machine's peak (the least disturbed), their spread how much the peak moved."""
    matmul = max(p["matmul_gflops"] for p in peaks)
    conv = max(p["conv_gflops"] for p in peaks)
    best = max(matmul, conv)
    floor_s = flops / 1e9 / best
    per_block = [floor_s / s for s in blocks]
    return {
        "gflop_per_iter": round(flops / 1e9, 2),
        "peak_gflops": round(best, 1),
        "peak_gflops_rounds": spread([max(p["matmul_gflops"], p["conv_gflops"]) for p in peaks]),
        "floor_s_per_iter": round(floor_s, 4),
        "efficiency": round(floor_s / s_per_iter, 3),
        "efficiency_blocks": spread(per_block),
        "matmul_gflops": round(matmul, 1),
        "conv_gflops": round(conv, 1),
        "update": update_figures(update, peaks, floor_s, s_per_iter),
    }


def update_figures(update: int, peaks: list[dict], floor_s: float, s_per_iter: float) -> dict:
    """The optimizers' step, bound by memory traffic: its bytes, its best measured seconds and the
    bandwidth that makes, against the machine's (best of the rounds); and the floor of a step whose
    every FLOP ran at the peak and whose update took what it takes now, with fast's efficiency."""
    update_s = min(p["update_s"] for p in peaks)
    bandwidth = [max(p["copy_gbs"], p["add_gbs"]) for p in peaks]
    return {
        "gb_per_iter": round(update / 1e9, 3),
        "s_per_iter": round(update_s, 4),
        "gbs": round(update / 1e9 / update_s, 1) if update_s else None,  # no step: skipped (fp16)
        "bandwidth_gbs": round(max(bandwidth), 1),
        "bandwidth_gbs_rounds": spread(bandwidth),
        "floor_with_update_s_per_iter": round(floor_s + update_s, 4),
        "efficiency_with_update": round((floor_s + update_s) / s_per_iter, 3),
    }


def spread(values: list[float]) -> dict:
    """min, median and max: whether a change is larger than the noise between blocks."""
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def inspect_step(step: Callable[[], object]) -> dict:
    """Two runs of a training step: one counted (FLOPs, largest convolution), one with oneDNN's
    and MKL's verbose reports (the instruction sets that ran)."""
    flops, largest = count_step(step)
    return {"flops": flops, "largest_conv": largest, "isa": instruction_sets(verbose_lines(step))}
