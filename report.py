"""What a run reports: the history CSV, sample grids and single images, loss and metric plots,
and the HTML gallery. Every file is written atomically (utils.atomic_write)."""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils import atomic_write, write_text


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


# ---------------------------------------------------------------------------------------------
# The run's reporter: console, files
# ---------------------------------------------------------------------------------------------

VAL_NAMES = ("val_L1", "val_PSNR", "val_SSIM")  # history columns of the validation pass
FID_NAMES = ("val_FID", "val_KID")


class Reporter:
    """What a training run shows and writes besides checkpoints: the console (progress bar, one
    line per epoch) and results/<name>/ (config.json, samples/epoch_NNN.png, history.csv,
    loss.png, metrics.png, index.html). Under torchrun only rank 0 reports; elsewhere every
    method does nothing."""

    def __init__(self, state, folder: Path, n_pairs: int) -> None:
        self.folder, self.active = Path(folder), state.world.is_main
        self.loss_names = tuple(name for name in state.history["steps"] if name != "epoch")
        self.bar = None
        if self.active:
            self._start(state, n_pairs)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def _start(self, state, n_pairs: int) -> None:
        import dataclasses
        import json

        cfg, world = state.cfg, state.world
        write_text(self.folder / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        batch = f"batch {cfg.batch_size}"
        if world.size > 1:
            batch = f"global batch {cfg.batch_size * world.size} = {cfg.batch_size} per process x {world.size} processes"
        print(f"training {cfg.name}: {n_pairs} pairs, {cfg.direction}, {cfg.image_size} px, {batch}, "
              f"on {state.device} in {str(state.dtype).removeprefix('torch.')}")

    def progress(self, state, n_batches: int) -> "Reporter":
        """A context for one epoch's progress: `with report.progress(...) as bar: bar.update()`."""
        from tqdm import tqdm

        self.bar = tqdm(total=n_batches, initial=state.progress.iteration, leave=False, dynamic_ncols=True,
                        desc=f"epoch {state.epoch + 1}/{state.cfg.epochs}", disable=not self.active)
        return self

    def update(self) -> None:
        self.bar.update()

    def losses(self, state, means: dict[str, float]) -> None:
        """The mean losses of the last log_every iterations."""
        if self.bar is not None:
            self.bar.set_postfix({name: f"{value:.3f}" for name, value in means.items()})

    def epoch(self, state, val_set) -> None:
        """Everything an epoch shows: the sample grid, history.csv, the plots, index.html, a line."""
        if not self.active:
            return
        cfg, history = state.cfg, state.history
        row = history["epochs"][-1]
        save_sample_grid(sample_rows(state, val_set), self.folder / "samples" / f"epoch_{state.epoch:03d}.png")
        write_csv(history["epochs"], self.folder / "history.csv")
        plot_curves(history["epochs"], history["steps"], self.loss_names, self.folder / "loss.png")
        metric_names = VAL_NAMES + (FID_NAMES if cfg.val_fid else ())
        if any("val_L1" in r for r in history["epochs"]):
            plot_curves(history["epochs"], {}, metric_names, self.folder / "metrics.png")
        write_gallery(history["epochs"], self.loss_names, metric_names, self.folder, title=f"Pix2Pix run {cfg.name}")
        summary = "  ".join(f"{name} {row[name]:.4f}" for name in self.loss_names + VAL_NAMES if name in row)
        self.print(f"epoch {state.epoch}/{cfg.epochs}  {summary}  lr {row['lr']:.2e}  {row['seconds']:.1f}s")

    def print(self, line: str) -> None:
        from tqdm import tqdm

        if self.active:
            tqdm.write(line)

    def finish(self, state, dirs: dict) -> None:
        if state.stop:
            self.print(f"stopped; {dirs['checkpoints'] / 'latest.pt'} is saved: run the same command to resume")
        else:
            self.print(f"done: {dirs['results']} and {dirs['checkpoints']}")


def sample_rows(state, val_set) -> list[list[torch.Tensor]]:
    """The first num_samples validation pairs as rows input | generated | target."""
    from generator import translate

    cfg, rows = state.cfg, []
    for index in range(min(cfg.num_samples, len(val_set))):
        real_A, real_B = val_set[index]
        fake_B = translate(state.G, real_A[None].to(state.device), cfg.eval_mode, cfg.seed, state.amp)[0].cpu()
        rows.append([real_A, fake_B, real_B])
    return rows
