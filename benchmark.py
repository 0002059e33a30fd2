"""Training throughput of the default recipe, the plain PyTorch way against what train.py does,
against the machine's limit, and what the end of an epoch costs.

    python benchmark.py [--data_root data/facades] [--device auto|cpu|mps|cuda]
                        [--iters N] [--repeats N] [--configs baseline,fast,...] [--json]
                        [--emulate avx2|avx512]

Configurations run in worker processes of their own, taking turns (one block of `iters`
iterations each, `repeats` times), so that noise from the rest of the machine hits all alike and
each has its own peak memory:

- ``baseline``: as the official implementation trains: ``--speedups false --precision fp32``
  (the stock networks, eager, stock convolutions in NCHW),
  Adam with its default implementation, subnormal floats left on, glibc's malloc as it comes,
  cuDNN without autotuning, and images decoded with PIL and transformed per item in a DataLoader
  with the official default of 4 worker processes;
- ``fast``: exactly what ``python train.py`` does by default on this machine (training.setup.setup,
  training.loader.build_data and make_loader, training.step.train_step);
- ``graphs`` (the default third configuration on CUDA): ``fast`` with ``--cuda_graphs true``.

Each uses batch 1, 256 px, U-Net 256 and the 70x70 PatchGAN on the real facades training images.
Reported per configuration: median seconds per iteration and images/s over the blocks (after the
warm-up iterations, which include any compiling and CUDA-graph capture), the share of the time
spent waiting for data, warm-up time, and peak resident memory of the training process (for the
baseline without its 4 loader processes, which only flatters the baseline), the GFLOP of one of
its steps and the oneDNN kernels it ran. ``speedup_blocks``: the baseline's time over fast's,
block by block (min, median, max), so that a change can be told from the noise between blocks.

``floor`` (step_floor.py): the fast step's FLOPs (counted as it runs) over the machine's peak in
its dtype (measured in the fast worker after each round of blocks, the best of a 2048x2048 matrix
product and the step's largest convolution): the time a step would take if all of it ran at that
peak. ``peak_gflops_rounds``: each round's own best (min/median/max), how much the peak moved on
a shared machine. ``efficiency`` = floor / fast's s/iter, also block by block. ``floor.update``:
what that floor leaves out, the optimizers' step after the backward pass, bound by memory traffic:
``gb_per_iter`` (Adam reads each weight, its gradient and both moments and writes the weight and
both moments), its best ``s_per_iter`` in the step (timed after each round) and the ``gbs`` that
makes, against the machine's ``bandwidth_gbs`` (measured with the peak: the best of a copy and an
in-place add of 256 MB buffers); ``floor_with_update_s_per_iter`` = the floor + the update's
seconds, and ``efficiency_with_update`` = that / fast's s/iter. ``machine.isa`` says which
instruction sets ran; ``--emulate avx2`` (a CPU without AVX-512 or bf16) or ``--emulate avx512``
(AVX-512 without bf16) measures again in a fresh interpreter with PyTorch's, oneDNN's and MKL's
instruction sets limited (``machine.isa.emulated`` lists the variables; precision auto then trains
in fp32, as on such a CPU).

``epoch_overhead`` (measured in the ``fast`` worker after its blocks, median of
``--epoch_repeats``): the end of an epoch at the defaults (val_every 1, val_images 20), on the
real val split with the default networks, run by train.py's own functions into a temporary folder
under checkpoint_dir (the disk the runs use), for an epoch that writes everything (best.pt, epoch_NNN.pt
and latest.pt). ``blocked_s``: what the training loop waits for, ``validate_s`` (generating and
scoring the val images, which needs the epoch's weights) + ``wait_s`` (for the previous epoch's
writes) + ``report_copy_s``, ``snapshot_copy_s``, ``latest_copy_s`` (the copies of the state the
writes are made from); ``background_s``: the writer thread's time for the files (sample grid,
history.csv, plots, index.html, TensorBoard, the snapshots, latest.pt); ``share`` = blocked_s /
the epoch's training time (training images x the fast s/iter), and ``share_if_written_in_the_loop``
= (validate_s + background_s) / the same, what the loop waited for when it wrote the files itself.
``steps_slowed_s``: how much longer the ``steps_beside_writes`` training steps trained while the
writer worked took than as many alone (on a CPU the writer competes for the same cores), and
``share_with_slowed_steps`` = (blocked_s + steps_slowed_s) / the epoch's training time: all that
the end of an epoch costs the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarking import step_floor
from benchmarking.baseline import build_baseline
from training.loader import build_data, make_loader
from training.setup import setup
from training.step import train_step

DEFAULTS = {
    "cpu": {"iters": 15, "repeats": 3, "warmup": 3, "configs": "baseline,fast"},
    # A GPU step is short: longer blocks; the warm-up covers cuDNN autotuning and capture.
    "cuda": {"iters": 200, "repeats": 5, "warmup": 30, "configs": "baseline,fast,graphs"},
    # Apple silicon's GPU: no CUDA graphs; block sizes not tuned on a Mac.
    "mps": {"iters": 50, "repeats": 3, "warmup": 10, "configs": "baseline,fast"},
}


def build(kind: str, data_root: str, device: str):
    """State, data iterator and validation set of one configuration; networks from the same seed."""
    from config import Config

    cfg = Config(data_root=data_root, device=device, cuda_graphs="true" if kind == "graphs" else "false")
    if kind == "baseline":
        state, loader = build_baseline(cfg)
        return state, loader, None, len(loader.dataset)
    train_set, val_set = build_data(cfg)
    state = setup(cfg)
    loader = make_loader(train_set, cfg, state.device, state.world)
    return state, loader, val_set, len(train_set)


def worker(kind: str, data_root: str, device: str, epoch_repeats: int, conn) -> None:
    """Answer the parent's commands: ("block", n) times n iterations, answered with (seconds,
    data-wait seconds, n); ("inspect",) counts one step's FLOPs and reports the instruction sets
    that ran (step_floor.inspect_step) and the bytes of the optimizers' update; ("peak",) measures
    the machine's peaks (arithmetic in the step's dtype, memory bandwidth) and the seconds of the
    optimizers' step in three training steps (the best); None ends the blocks
    (then the info, and for ``fast`` the end of an epoch)."""
    import warnings

    from benchmarking import epoch_cost

    warnings.filterwarnings("ignore", message=".*worker")  # 4 workers on 2 cores is the point
    state, loader, val_set, n_train = build(kind, data_root, device)
    batches = iter(loader)
    sync = epoch_cost.device_sync(state.device)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            real_A, real_B = next(batches)
        except StopIteration:
            batches = iter(loader)
            real_A, real_B = next(batches)
        return real_A.to(state.device, non_blocking=True), real_B.to(state.device, non_blocking=True)

    conn.send("ready")
    inspected = None
    while (command := conn.recv()) is not None:
        if command[0] == "inspect":
            batch = next_batch()
            inspected = step_floor.inspect_step(lambda batch=batch: train_step(state, *batch))
            described = step_floor.describe(inspected["largest_conv"])
            update = step_floor.update_bytes([state.opt_G, state.opt_D])
            conn.send({**inspected, "largest_conv": described, "update_bytes": update})
            continue
        if command[0] == "peak":
            peaks = step_floor.machine_peaks(state.dtype, inspected["largest_conv"], state.device)
            step = lambda: train_step(state, *next_batch())  # noqa: E731
            conn.send({**peaks, "update_s": step_floor.update_seconds(step, state.device)})
            continue
        waited, started = 0.0, time.perf_counter()
        for _ in range(command[1]):
            t = time.perf_counter()
            real_A, real_B = next_batch()
            waited += time.perf_counter() - t
            losses = train_step(state, real_A, real_B)
        losses.tolist()  # wait for the device
        sync()
        conn.send((time.perf_counter() - started, waited, command[1]))
    info = {
        "dtype": str(state.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "accelerated": state.acceleration.describe() if state.acceleration else "nothing (stock networks)",
    }
    if kind == "graphs":
        graphed = state.graphed_step
        info["cuda_graph_in_use"] = bool(graphed and graphed.graph is not None and not graphed.failed)
    if kind == "fast" and conn.recv() == "epoch":
        info["epoch_overhead"] = epoch_cost.epoch_overhead(
            state, val_set, n_train, epoch_repeats, sync, loader
        )
    info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if state.device.type == "cuda":
        info["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(state.device) / 2**20)
    conn.send(info)


def summarise(blocks: list[tuple[float, float, int]], warmup: tuple, info: dict) -> dict:
    per_iter = [seconds / iters for seconds, _, iters in blocks]
    s = statistics.median(per_iter)
    return {
        "s_per_iter": round(s, 4),
        "images_per_s": round(1 / s, 3),
        "data_wait_share": round(sum(b[1] for b in blocks) / sum(b[0] for b in blocks), 4),
        "warmup_s": round(warmup[0], 2),
        "blocks_s_per_iter": [round(x, 4) for x in per_iter],
        **info,
    }


def machine_info(device: str) -> dict:
    """The CPU by name and its bf16 units (lscpu's model name and flags), the GPU by name."""
    import utils

    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    info = {
        "cpu": cpu,
        "cores": mp.cpu_count(),
        "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "native_bf16": utils.cpu_has_fast_bf16(),
        "torch": torch.__version__,
    }
    if utils.resolve_device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(utils.resolve_device(device))
    return info


def run(args: argparse.Namespace) -> dict:
    import utils
    from benchmarking import epoch_cost

    device_type = utils.resolve_device(args.device).type
    for key, value in DEFAULTS[device_type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    kinds = args.configs.split(",")
    context = mp.get_context("spawn")  # fresh interpreters: no state shared between them
    pipes, procs = {}, {}
    for kind in kinds:
        parent, child = context.Pipe()
        procs[kind] = context.Process(
            target=worker, args=(kind, args.data_root, args.device, args.epoch_repeats, child)
        )
        procs[kind].start()
        pipes[kind] = parent
    for kind in kinds:
        assert pipes[kind].recv() == "ready"
    warmup, blocks, inspected, peaks = {}, {kind: [] for kind in kinds}, {}, []
    for kind in kinds:
        pipes[kind].send(("block", args.warmup))
        warmup[kind] = pipes[kind].recv()
    for kind in kinds:
        if kind != "graphs":  # a replayed CUDA graph runs no operator that could be counted
            pipes[kind].send(("inspect",))
            inspected[kind] = pipes[kind].recv()
    for _ in range(args.repeats):
        for kind in kinds:  # taking turns: the others wait idle meanwhile
            pipes[kind].send(("block", args.iters))
            blocks[kind].append(pipes[kind].recv())
        if "fast" in kinds:  # the peak between blocks: its best is the least disturbed
            pipes["fast"].send(("peak",))
            peaks.append(pipes["fast"].recv())
    result = {}
    # The others report and exit first (the baseline's loader processes included): ``fast``
    # measures the end of an epoch alone on the machine, as train.py runs it.
    for kind in sorted(kinds, key=lambda k: k == "fast"):
        pipes[kind].send(None)
        if kind == "fast":
            pipes[kind].send("epoch" if args.epoch_repeats else "skip")
        result[kind] = summarise(blocks[kind], warmup[kind], pipes[kind].recv())
        procs[kind].join()
    if "baseline" in result:
        for kind in kinds:
            if kind != "baseline":
                key = "speedup" if kind == "fast" else f"speedup_{kind}"
                result[key] = round(result["baseline"]["s_per_iter"] / result[kind]["s_per_iter"], 3)
                ratios = [b[0] / b[2] / (f[0] / f[2]) for b, f in zip(blocks["baseline"], blocks[kind])]
                result[f"{key}_blocks"] = step_floor.spread(ratios)  # the noise: block by block
    if peaks:
        fast, counted = result["fast"], inspected["fast"]
        result["floor"] = {
            **step_floor.floor_summary(
                counted["flops"],
                counted["update_bytes"],
                peaks,
                fast["s_per_iter"],
                fast["blocks_s_per_iter"],
            ),
            "largest_conv": counted["largest_conv"],
        }
    for kind, report in inspected.items():
        result[kind]["gflop_per_iter"] = round(report["flops"] / 1e9, 2)
        result[kind]["onednn_kernels"] = report["isa"]["onednn_kernels"]
    overhead = result.get("fast", {}).pop("epoch_overhead", None)
    if overhead:
        result["epoch_overhead"] = epoch_cost.share_of_epoch(overhead, result["fast"]["s_per_iter"])
    result["machine"] = {
        **machine_info(args.device),
        "isa": inspected.get("fast", next(iter(inspected.values()), {})).get("isa"),  # fast's kernels
        "device": args.device,
        "iters": args.iters,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    return result


def main() -> None:
    from utils import ArgumentParser

    parser = ArgumentParser(__doc__)
    parser.add_argument(
        "--data_root", default="data/facades", help="the facades folder (default: the project's data/facades)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N")
    parser.add_argument("--iters", type=int, help="iterations per timed block (default: CPU 15, CUDA 200)")
    parser.add_argument("--repeats", type=int, help="timed blocks per configuration (default: CPU 3, CUDA 5)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default: CPU 3, CUDA 30)")
    parser.add_argument(
        "--configs",
        help="comma-separated: baseline, fast, graphs (default: CPU baseline,fast; "
        "CUDA baseline,fast,graphs)",
    )
    parser.add_argument(
        "--epoch_repeats",
        type=int,
        default=3,
        help="times the end of an epoch is measured (median; 0 = skip it)",
    )
    parser.add_argument(
        "--emulate",
        help="measure as on another kind of CPU: avx2 (no AVX-512, no bf16) or avx512 (AVX-512 without "
        "bf16), by limiting PyTorch's, oneDNN's and MKL's instruction sets (step_floor.EMULATIONS); "
        "machine.isa in the JSON says what ran",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.emulate and args.emulate not in step_floor.EMULATIONS:
        parser.exit(2, f"error: --emulate {args.emulate}: choose from {', '.join(step_floor.EMULATIONS)}\n")
    wanted = step_floor.EMULATIONS.get(args.emulate, {})
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        # The libraries read their limits when they start: this script again, in a fresh interpreter.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    if not (Path(args.data_root) / "train").is_dir():
        parser.error(f"--data_root {args.data_root}: no train/ folder with the facades images")
    if args.configs and not set(args.configs.split(",")) <= {"baseline", "fast", "graphs"}:
        parser.error(f"--configs {args.configs}: choose from baseline, fast, graphs")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':9s} {'s/iter':>8s} {'img/s':>7s} {'data wait':>9s} {'warm-up s':>9s} {'peak MB':>8s}")
    for kind in args.configs.split(","):
        r = result[kind]
        print(
            f"{kind:9s} {r['s_per_iter']:8.4f} {r['images_per_s']:7.2f} {r['data_wait_share']:9.1%} "
            f"{r['warmup_s']:9.1f} {r['peak_rss_mb']:8d}   ({r['dtype']}, {r['threads']} threads)"
        )
    for key in [k for k in result if k.startswith("speedup") and not k.endswith("_blocks")]:
        blocks = result[f"{key}_blocks"]
        print(f"{key}  {result[key]:.2f}x (block by block {blocks['min']:.2f}-{blocks['max']:.2f})")
    if "floor" in result:
        f = result["floor"]
        print(
            f"floor: {f['gflop_per_iter']:.1f} GFLOP per iteration at the measured peak of "
            f"{f['peak_gflops']:.0f} GFLOP/s (rounds {f['peak_gflops_rounds']['min']:.0f}-"
            f"{f['peak_gflops_rounds']['max']:.0f}) = {f['floor_s_per_iter']:.3f} s; "
            f"fast runs at {f['efficiency']:.0%} of it "
            f"(blocks {f['efficiency_blocks']['min']:.0%}-{f['efficiency_blocks']['max']:.0%})"
        )
        u = f["update"]
        print(
            f"with the optimizers' update ({u['gb_per_iter']:.2f} GB read and written in "
            f"{u['s_per_iter']:.3f} s, {u['gbs'] or 0:.1f} GB/s against the measured "
            f"{u['bandwidth_gbs']:.1f}): "
            f"{u['floor_with_update_s_per_iter']:.3f} s; fast runs at {u['efficiency_with_update']:.0%} of it"
        )
    if "epoch_overhead" in result:
        e = result["epoch_overhead"]
        print(
            f"end of epoch: the loop waits {e['blocked_s']:.2f}s (validation of {e['val_images']} "
            f"pairs {e['validate_s']:.2f}s, copies and waits the rest) = {e['share']:.1%} of the "
            f"epoch's {e['epoch_training_s']:.0f}s of training; the background writes take "
            f"{e['background_s']:.2f}s beside the next epoch and slow its steps by "
            f"{e['steps_slowed_s']:.2f}s (in all {e['share_with_slowed_steps']:.1%}; written in the "
            f"loop: {e['share_if_written_in_the_loop']:.1%})"
        )
    print(result["machine"])


if __name__ == "__main__":
    main()
