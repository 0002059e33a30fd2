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


def timed(work, sync) -> tuple[float, object]:
    sync()
    started = time.perf_counter()
    result = work()
    sync()
    return time.perf_counter() - started, result


def epoch_overhead(state, val_set, n_train: int, repeats: int, sync) -> dict:
    """The end-of-epoch work of train.py at the defaults, timed part by part (see the docstring)."""
    import checkpoint as ckpt
    import train
    from generator import translate_items
    from metrics import evaluate_pairs
    from report import Reporter

    cfg = state.cfg

    def generate() -> list:
        items = (val_set[i] for i in range(len(val_set)))
        triples = translate_items(state.G, items, cfg.eval_mode, cfg.seed, state.amp, state.device)
        return [(fake, real) for _, fake, real in triples]

    list(
        translate_items(
            state.G, (val_set[i] for i in range(2)), cfg.eval_mode, cfg.seed, state.amp, state.device
        )
    )  # warm: the first calls of new shapes set up their kernels
    parent = Path(cfg.checkpoint_dir)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".benchmark-", dir=parent))
    runs: dict[str, list[float]] = {}
    sizes = {}
    try:
        for _ in range(repeats):
            t_gen, pairs = timed(generate, sync)
            t_metrics, (_, means) = timed(
                lambda pairs=pairs: evaluate_pairs(pairs, False, state.device), sync
            )
            t_validate, (row, samples) = timed(
                lambda: train.validate(state, val_set), sync
            )  # as train.py runs it: streamed
            state.history["epochs"].append(
                {
                    "epoch": len(state.history["epochs"]) + 1,
                    "lr": cfg.lr,
                    "seconds": 0.0,
                    **dict(zip(train.LOSS_NAMES, state.progress.total.tolist())),
                    **row,
                }
            )
            state.epoch = len(state.history["epochs"])
            with contextlib.redirect_stdout(io.StringIO()):  # the report's console line
                with Reporter(state, folder / "results", n_train) as report:
                    t_other, _ = timed(lambda samples=samples: report.epoch(state, val_set, samples), sync)
            writes = {}
            for name, make in (
                ("latest", lambda: ckpt.full_checkpoint(state)),
                ("snapshot", lambda: ckpt.snapshot(state)),
            ):
                path = folder / f"{name}.pt"
                writes[name], _ = timed(lambda make=make, path=path: ckpt.save_checkpoint(make(), path), sync)
                sizes[name] = path.stat().st_size
            t_checkpoint = writes["latest"] + writes["snapshot"] * (
                1 + 1 / cfg.save_every
            )  # best.pt + epoch_NNN.pt
            for key, value in (
                ("validate_s", t_gen),
                ("metrics_s", t_metrics),
                ("checkpoint_s", t_checkpoint),
                ("other_s", t_other),
                ("validate_streamed_s", t_validate),
                ("latest_pt_s", writes["latest"]),
                ("snapshot_pt_s", writes["snapshot"]),
            ):
                runs.setdefault(key, []).append(value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {key: round(statistics.median(values), 3) for key, values in runs.items()}
    result.update(
        {
            "train_images": n_train,
            "val_images": len(val_set),
            "latest_pt_mb": round(sizes["latest"] / 2**20),
            "snapshot_pt_mb": round(sizes["snapshot"] / 2**20),
            "save_every": cfg.save_every,
            "val_means": {k: round(v, 4) for k, v in means.items()},
        }
    )
    return result


def share_of_epoch(overhead: dict, s_per_iter: float) -> dict:
    """The parts, and their sum's share of the epoch's training time (batch 1: an iteration per image)."""
    train_s = overhead["train_images"] * s_per_iter
    parts = ("validate_s", "metrics_s", "checkpoint_s", "other_s")
    return {
        **{k: overhead[k] for k in parts},
        "share": round(sum(overhead[k] for k in parts) / train_s, 4),
        "epoch_training_s": round(train_s, 1),
        **{k: v for k, v in overhead.items() if k not in parts},
    }
