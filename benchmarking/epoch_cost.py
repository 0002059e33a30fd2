"""What train.py adds to each epoch at the defaults, timed part by part (benchmark.py's
``epoch_overhead``; its docstring says what each part is)."""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from training.session import save_snapshots
from training.state import LOSS_NAMES
from training.step import train_step


def timed(work, sync) -> tuple[float, object]:
    sync()
    started = time.perf_counter()
    result = work()
    sync()
    return time.perf_counter() - started, result


def epoch_overhead(state, val_set, n_train: int, repeats: int, sync, loader) -> dict:
    """The end of an epoch of train.py at the defaults, part by part (see the docstring)."""
    from evaluation.generate import translate_pairs
    from reporting.reporter import Reporter
    from training.background import BackgroundWriter
    from training.state import RunDirs
    from training.validation import subset

    cfg = state.cfg
    list(
        translate_pairs(
            state.G, (val_set[i] for i in range(2)), cfg.eval_mode, cfg.seed, state.amp, state.device
        )
    )  # warm: the first calls of new shapes set up their kernels
    parent = Path(cfg.checkpoint_dir)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".benchmark-", dir=parent))
    dirs, runs = RunDirs(folder / "results", folder / "checkpoints"), {}
    quiet = contextlib.ExitStack()  # the report's lines (and no progress bar: not a terminal)
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    try:
        with quiet, Reporter(state, dirs.results, n_train) as report, BackgroundWriter() as writer:
            with report.progress(state, n_train):  # opens TensorBoard, as train.py's first epoch does
                for _ in range(repeats):
                    parts = hand_over_epoch(state, val_set, report, dirs, writer, sync)
                    busy = writer.busy_s
                    parts["flush_s"], _ = timed(writer.wait, sync)
                    parts["background_s"] = writer.busy_s - busy + parts.pop("busy_during_copies_s")
                    for key, value in parts.items():
                        runs.setdefault(key, []).append(value)
                hand_over_epoch(state, val_set, report, dirs, writer, sync)
                overlap = steps_beside_writes(state, loader, writer, sync)
            sizes = {name: (dirs.checkpoints / f"{name}.pt").stat().st_size for name in ("latest", "best")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        **{key: round(statistics.median(values), 3) for key, values in runs.items()},
        **overlap,
        "train_images": n_train,
        "val_images": len(subset(cfg, len(val_set))),
        "val_split_images": len(val_set),
        "latest_pt_mb": round(sizes["latest"] / 2**20),
        "snapshot_pt_mb": round(sizes["best"] / 2**20),
        "val_means": {k: round(state.history.epochs[-1][f"val_{k}"], 4) for k in ("L1", "PSNR", "SSIM")},
    }


def hand_over_epoch(state, val_set, report, dirs, writer, sync) -> dict[str, float]:
    """One epoch's end with train.py's functions, each part timed: an epoch that keeps
    epoch_NNN.pt, improves val_L1 (best.pt) and writes latest.pt, the most an epoch copies."""
    from training import checkpoint as ckpt
    from training.validation import validate_epoch

    cfg, busy = state.cfg, writer.busy_s
    state.epoch = cfg.save_every * (len(state.history.epochs) + 1)
    losses = dict(zip(LOSS_NAMES, state.progress.total.tolist()))
    state.history.epochs.append({"epoch": state.epoch, **losses, "lr": cfg.lr, "seconds": 0.0})
    parts = {}
    parts["validate_s"], samples = timed(lambda: validate_epoch(state, val_set), sync)
    parts["wait_s"], _ = timed(writer.wait, sync)  # for the previous epoch's writes
    parts["report_copy_s"], _ = timed(lambda: report.epoch(state, val_set, samples, writer), sync)
    parts["snapshot_copy_s"], _ = timed(lambda: save_snapshots(state, dirs, writer), sync)
    parts["latest_copy_s"], _ = timed(lambda: ckpt.save_latest(state, dirs.latest, writer), sync)
    parts["blocked_s"] = sum(parts.values())
    parts["busy_during_copies_s"] = writer.busy_s - busy  # jobs the writer finished meanwhile
    return parts


def steps_beside_writes(state, loader, writer, sync) -> dict:
    """What the background writes cost the training steps: the steps trained until the writer is
    done, against as many trained alone (on a CPU the writer competes for the same cores)."""

    batches = iter(loader)

    def step() -> None:
        real_A, real_B = next(batches)
        train_step(state, real_A.to(state.device), real_B.to(state.device)).tolist()

    started, n = time.perf_counter(), 0
    while writer.busy or n == 0:
        step()
        n += 1
    sync()
    beside = time.perf_counter() - started
    alone, _ = timed(lambda: [step() for _ in range(n)], sync)
    return {"steps_beside_writes": n, "steps_slowed_s": round(beside - alone, 3)}


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work: GPUs run asynchronously, so a timing must wait."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def share_of_epoch(overhead: dict, s_per_iter: float) -> dict:
    """What the loop is blocked for at an epoch's end, and its share of the epoch's training time
    (batch 1: an iteration per image); beside it, the same writes' share had the loop made them."""
    train_s = overhead["train_images"] * s_per_iter
    inline_s = overhead["validate_s"] + overhead["background_s"]  # the same writes in the loop
    return {
        "blocked_s": overhead["blocked_s"],
        "background_s": overhead["background_s"],
        "share": round(overhead["blocked_s"] / train_s, 4),
        "share_if_written_in_the_loop": round(inline_s / train_s, 4),
        "share_with_slowed_steps": round((overhead["blocked_s"] + overhead["steps_slowed_s"]) / train_s, 4),
        "epoch_training_s": round(train_s, 1),
        **{k: v for k, v in overhead.items() if k not in ("blocked_s", "background_s")},
    }
