"""What a run reports: the history CSV, sample grids and single images, loss and metric plots,
the HTML gallery, the record of the run (config.json), the log of everything it prints
(train.log), and TensorBoard event files. Every file but the two logs that only grow
(train.log, tensorboard/) is written atomically (utils.atomic_write)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import html
import importlib.util
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from config import ConfigError, generator_depth
from utils import atomic_write, write_text

PROJECT_DIR = Path(__file__).resolve().parent


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """Write dict rows as CSV; the columns are the keys of all rows, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------
# Sample grids with captions
# ---------------------------------------------------------------------------------------------

GRID_PADDING = 2
HEADER_HEIGHT = 32  # two lines of text above the grid: the title, then a caption per column
COLUMN_CAPTIONS = ("input", "generated", "target")
SHORT_CAPTIONS = {"generated": "gen."}  # for columns too narrow for the word at the smallest size
FONT_SIZES = (12, 11, 10, 9, 8)  # the largest that fits is used; 12 px reads well at 1:1
HEADER_BACKGROUND, HEADER_TEXT = (32, 32, 32), (235, 235, 235)


def _font(size: int):
    """PIL's default font at `size` (its built-in TrueType face, so no font file is needed);
    the fixed bitmap face where Pillow was built without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit(draw, texts: Sequence[str], width: int) -> tuple[list[str], object]:
    """The texts and the largest default-font size at which each fits `width` pixels; else the
    short forms at the smallest size, cut to fit as a last resort."""
    for size in FONT_SIZES:
        font = _font(size)
        if all(_text_width(draw, t, font) <= width for t in texts):
            return list(texts), font
    font, fitted = _font(FONT_SIZES[-1]), []
    for text in texts:
        text = SHORT_CAPTIONS.get(text, text)
        while len(text) > 1 and _text_width(draw, text, font) > width:
            text = text[:-1]
        fitted.append(text)
    return fitted, font


def captioned(grid: np.ndarray, title: str, captions: Sequence[str], cell_width: int):
    """A PIL image of `grid` (H, W, 3 uint8, cells cell_width wide with GRID_PADDING between them)
    under a header strip: `title` on the first line, each caption centred over its column."""
    from PIL import Image, ImageDraw

    height, width = grid.shape[:2]
    image = Image.new("RGB", (width, height + HEADER_HEIGHT), HEADER_BACKGROUND)
    image.paste(Image.fromarray(grid), (0, HEADER_HEIGHT))
    draw = ImageDraw.Draw(image)
    line = HEADER_HEIGHT // 2
    if title:
        # The title may be cut at the right edge of a narrow grid; PIL clips it there.
        (title,), font = _fit(draw, [title], width - 2 * GRID_PADDING)
        draw.text((GRID_PADDING + 1, line // 2), title, fill=HEADER_TEXT, font=font, anchor="lm")
    texts, font = _fit(draw, captions, cell_width - 2)
    for column, text in enumerate(texts):
        centre = GRID_PADDING + column * (cell_width + GRID_PADDING) + cell_width / 2
        draw.text((centre, line + line // 2), text, fill=HEADER_TEXT, font=font, anchor="mm")
    return image


def save_sample_grid(rows: Sequence[Sequence[torch.Tensor]], path: str | Path, title: str = "",
                     captions: Sequence[str] = COLUMN_CAPTIONS) -> np.ndarray:
    """Save images as a grid, one row per example: each row is a list [input, generated, target],
    under a header naming the columns and carrying `title` (e.g. the run and epoch).

    rows: tensors of shape (3, H, W) or (1, H, W) in [-1, 1]; 1-channel images are shown in gray.
    Images of different sizes (full-size evaluation items) are padded with black at the bottom
    and right to the largest height and width, so each keeps its own shape in the grid.
    Returns the picture as written, (H, W, 3) uint8, for TensorBoard.
    """
    from torchvision.utils import make_grid

    images = [image.float().cpu().expand(3, -1, -1) for row in rows for image in row]  # (3, H_i, W_i)
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    images = torch.stack([F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2]), value=-1.0)
                          for i in images])  # (N, 3, height, width)
    grid = make_grid(images, nrow=len(rows[0]), padding=GRID_PADDING, normalize=True, value_range=(-1, 1))
    # The 8-bit levels exactly as torchvision's save_image rounds them (the metrics assume it).
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    image = captioned(pixels, title, list(captions)[:len(rows[0])], width)
    atomic_write(path, lambda tmp: image.save(tmp, format="png"))
    return np.asarray(image)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Save one (C, H, W) image in [-1, 1] as an 8-bit PNG (C = 1 gray, C = 3 RGB)."""
    from torchvision.utils import save_image as save

    atomic_write(path, lambda tmp: save(image.float().cpu(), tmp, format="png", normalize=True, value_range=(-1, 1)))


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

# What each curve is, and the unit of its y axis.
CURVES = {
    "G_GAN": ("G_GAN: G fooling D", "BCE vs 'real'"),
    "G_L1": ("G_L1: G's distance to the target", "mean |fake - real|, [-1, 1] scale"),
    "D_real": ("D_real: D on real pairs", "BCE vs 'real'"),
    "D_fake": ("D_fake: D on generated pairs", "BCE vs 'fake'"),
    "val_L1": ("val_L1 (lower is better)", "mean |fake - real|, [0, 1] scale"),
    "val_PSNR": ("val_PSNR (higher is better)", "dB"),
    "val_SSIM": ("val_SSIM (higher is better)", "SSIM"),
    "val_FID": ("val_FID (lower is better)", "FID"),
    "val_KID": ("val_KID (lower is better)", "KID"),
}
SMOOTH_POINTS = 25


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over `window` points (fewer at both ends).

    Centred, not trailing, so the curve does not lag behind the data: at a change of trend (a
    new epoch, the lr decay) it bends where the points do, and passes through the epoch means.
    """
    values = np.asarray(values, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    half = window // 2
    index = np.arange(len(values))
    start, end = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (cumulative[end] - cumulative[start]) / (end - start)


def plot_curves(epochs: Sequence[dict], steps: dict[str, list[float]], names: Sequence[str],
                path: str | Path, epoch_means: bool = False) -> None:
    """One panel per quantity: its epoch values and, when given, a smoothed per-step curve.

    epochs: rows with "epoch" and a value per name (rows without a name's value are skipped, e.g.
    epochs without validation); steps: "epoch" (fractional) and a value per name, one point
    every few iterations (empty for quantities measured once per epoch). epoch_means: the epoch
    values are means over the epoch, and are drawn at its middle (epoch - 0.5), where the
    iterations they average lie; otherwise at the epoch's end, when they were measured.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    offset = 0.5 if epoch_means else 0.0
    # A short run has few points: a window of at most an eighth of them keeps its shape visible.
    window = max(1, min(SMOOTH_POINTS, len(steps.get("epoch", ())) // 8)) | 1  # odd: centred on a point
    for ax, name in zip(axes[0], names):
        if steps.get(name):
            ax.plot(steps["epoch"], smooth(steps[name], window), lw=0.8, alpha=0.6,
                    label=f"iterations, centred mean of {window} points" if window > 1 else "iterations")
        points = [(row["epoch"] - offset, row[name]) for row in epochs if row.get(name) not in (None, "")]
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", ms=3,
                label="epoch mean (at mid-epoch)" if epoch_means else "per epoch")
        title, unit = CURVES.get(name, (name, ""))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
    # One legend for the figure: every panel draws the same kinds of line.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
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
    under a table of that epoch's losses and validation metrics. Links are relative to folder.

    The grids load lazily (as they scroll into view), so a page of 200 epochs opens at once."""
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
            body.append(f'<p><img src="{grid}" alt="epoch {row["epoch"]}: input | generated | target" '
                        f'loading="lazy"></p>')
    write_text(folder / "index.html", html_page(title, body))


# ---------------------------------------------------------------------------------------------
# The record of the run: config.json
# ---------------------------------------------------------------------------------------------

def git_version(folder: Path = PROJECT_DIR, timeout: float = 5.0) -> dict | None:
    """{"commit", "dirty"} of the project's checkout, or None where git or the checkout is missing
    (an unpacked copy, no git installed, a repository owned by someone else)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        # --no-optional-locks: asking must not write .git/index under another git process.
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=folder, capture_output=True,
                              text=True, timeout=timeout)
    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return None
        # Tracked files only: untracked data, checkpoints and results are not the code.
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": commit.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(state, train_pairs: int, val_pairs: int | None) -> dict:
    """config.json: the Config fields as asked ("config", which `train.py --config FILE` reads
    back), what they resolved to on this machine, the versions, and when and where it started."""
    import torchvision

    cfg, world = state.cfg, state.world
    resolved = {"device": str(state.device), "precision": str(state.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "world_size": world.size,
                "global_batch": cfg.batch_size * world.size, "generator_depth": generator_depth(cfg),
                "data_root": str(Path(cfg.data_root).resolve()), "train_pairs": train_pairs, "val_pairs": val_pairs}
    if state.device.type == "cuda":
        resolved["gpu"] = torch.cuda.get_device_name(state.device)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "cuda": torch.version.cuda, "project": git_version()}
    return {"config": dataclasses.asdict(cfg), "resolved": resolved, "versions": versions,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "start": {"epoch": state.epoch, "iteration": state.progress.iteration,
                      "resumed": bool(state.epoch or state.progress.iteration)},
            "host": platform.node(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}


# ---------------------------------------------------------------------------------------------
# train.log: everything the run prints, also in a file
# ---------------------------------------------------------------------------------------------

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour and cursor codes


class _Tee:
    """A stand-in for sys.stdout or sys.stderr: writes go to the stream and, line by line, to the
    run's log; everything else (isatty, fileno, encoding) is the stream's."""

    def __init__(self, stream: TextIO, log: "RunLog") -> None:
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._log.line(line)
        return written

    def finish(self) -> None:
        # An unfinished last line is still a line, unless it is a terminal frame (\r).
        if self._partial and "\r" not in self._partial:
            self._log.line(self._partial)
        self._partial = ""

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class RunLog:
    """`with RunLog(): ...` copies every line printed to stdout and stderr into the run's
    train.log, appended across resumes, each line stamped with the time.

    It is entered before the run prints anything (data warnings, "resuming ..."), but the file
    is only named later (open()), when the run's folder is settled: until then, lines wait in
    memory (--resume false first moves the old run's folder aside). Terminal frames (text
    before a carriage return) and colour codes are left out; progress bars draw on the real
    stream (`console_err`), not through here. An error that ends the run is logged as the
    `error: ...` line the script prints. Inactive (active=False, torchrun ranks > 0), it does
    nothing.
    """

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.console_out, self.console_err = sys.stdout, sys.stderr
        self.file: TextIO | None = None
        self.failed = False  # the file could not be written: lines go to the console only
        self.waiting: list[str] = []
        self.tees: list[_Tee] = []

    def __enter__(self) -> "RunLog":
        if self.active:
            self.console_out, self.console_err = sys.stdout, sys.stderr
            self.tees = [_Tee(sys.stdout, self), _Tee(sys.stderr, self)]
            sys.stdout, sys.stderr = self.tees
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.active:
            return
        for tee in self.tees:
            tee.finish()
        sys.stdout, sys.stderr = self.console_out, self.console_err
        if isinstance(error, Exception):  # the script prints it as one line once we are gone
            self.line(f"error: {error}")
        elif isinstance(error, KeyboardInterrupt):
            self.line("stopped at once (a second Ctrl-C)")
        if self.file is not None:
            self.file.close()
            self.file = None

    def open(self, path: Path) -> None:
        """Append from now on to `path`, starting with the lines printed so far."""
        if not self.active:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: tail -f works
        except OSError as err:
            self.console_err.write(f"warning: cannot write {path} ({err}); the run goes on without it\n")
            self.failed, self.waiting = True, []
            return
        waiting, self.waiting = self.waiting, []
        for line in waiting:
            self._write(line)

    def line(self, text: str) -> None:
        text = _ESCAPES.sub("", text.rsplit("\r", 1)[-1]).rstrip()
        if not text.strip():
            return
        stamped = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {text}"
        if self.file is not None:
            self._write(stamped)
        elif not self.failed:
            self.waiting.append(stamped)

    def _write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
        except OSError as err:  # a full disk must not stop the training; the console still shows all
            self.console_err.write(f"warning: cannot append to {self.file.name} ({err}); stopped logging to it\n")
            self.file.close()
            self.file, self.failed = None, True


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------

TENSORBOARD_HINT = "pip install -r requirements-tensorboard.txt"


def check_tensorboard(cfg) -> bool:
    """Whether the run logs to TensorBoard: cfg.tensorboard "false" -> no, "auto" -> when the
    tensorboard package is installed, "true" -> yes, and ConfigError when it cannot be."""
    if cfg.tensorboard == "false":
        return False
    if cfg.tensorboard == "auto":
        return importlib.util.find_spec("tensorboard") is not None
    try:  # asked for explicitly: make sure it really works, before any work
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--tensorboard: true needs the tensorboard package ({err}): {TENSORBOARD_HINT}") from None
    return True


class TensorBoardLog:
    """results/<name>/tensorboard/: the run's curves for `tensorboard --logdir results`.

    The global step of every event is the number of iterations done (epoch * iterations per epoch
    + iteration). A process that starts from a checkpoint at step T writes only steps > T and
    opens its event file with purge_step T + 1, so that TensorBoard drops what an earlier process
    wrote after that checkpoint (a killed run): resumed curves go on without a repeated step.
    """

    def __init__(self, folder: Path, start_step: int, config_text: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)
        # Markdown: indented lines are shown as they are (the text plugin renders Markdown).
        self.writer.add_text("config", "\n".join("    " + line for line in config_text.splitlines()),
                             start_step + 1)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------
# The run's reporter: console, files
# ---------------------------------------------------------------------------------------------

VAL_NAMES = ("val_L1", "val_PSNR", "val_SSIM")  # history columns of the validation pass
FID_NAMES = ("val_FID", "val_KID")
PLAIN_PROGRESS_SECONDS = 30.0  # without a terminal: a progress line at most this often


class Reporter:
    """What a training run shows and writes besides checkpoints: the console (a progress bar on
    a terminal, else a plain progress line now and then; one line per epoch), train.log (through
    `log`, a RunLog), results/<name>/ (config.json, samples/epoch_NNN.png, history.csv, loss.png,
    metrics.png, index.html) and results/<name>/tensorboard/. Under torchrun only rank 0
    reports; elsewhere every method does nothing."""

    def __init__(self, state, folder: Path, n_pairs: int, log: RunLog | None = None,
                 val_pairs: int | None = None) -> None:
        self.folder, self.active = Path(folder), state.world.is_main
        self.loss_names = tuple(name for name in state.history["steps"] if name != "epoch")
        self.log = log or RunLog(active=False)
        self.bar, self.tensorboard, self.n_batches = None, None, 0
        # Where the progress goes: the real stderr, past the log (its frames are no lines).
        self.console = self.log.console_err if self.log.active else sys.stderr
        self.last_line = self.epoch_started = 0.0
        self.epoch_start_iteration = 0
        self.tensorboard_asked = False  # once per process: a run without it does not ask each epoch
        if self.active:
            self._start(state, n_pairs, val_pairs)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _start(self, state, n_pairs: int, val_pairs: int | None) -> None:
        cfg, world = state.cfg, state.world
        self.record = run_record(state, n_pairs, val_pairs)
        write_text(self.folder / "config.json", json.dumps(self.record, indent=2) + "\n")
        self.log.open(self.folder / "train.log")
        batch = f"batch {cfg.batch_size}"
        if world.size > 1:
            batch = f"global batch {cfg.batch_size * world.size} = {cfg.batch_size} per process x {world.size} processes"
        self.print(f"training {cfg.name}: {n_pairs} pairs, {cfg.direction}, {cfg.image_size} px, {batch}, "
                   f"on {state.device} in {str(state.dtype).removeprefix('torch.')}")

    def _open_tensorboard(self, state) -> None:
        """The event writer, once the steps per epoch are known (the first epoch's progress)."""
        if not check_tensorboard(state.cfg):
            return
        try:
            self.tensorboard = TensorBoardLog(self.folder / "tensorboard", self.step(state),
                                              json.dumps(self.record, indent=2))
        except ImportError as err:  # installed but broken (e.g. a protobuf it cannot use)
            if state.cfg.tensorboard == "true":
                raise ConfigError(f"--tensorboard: cannot load the tensorboard package ({err}): "
                                  f"{TENSORBOARD_HINT}") from None
            self.print(f"warning: no TensorBoard logs, the tensorboard package fails to load ({err})", sys.stderr)

    def step(self, state) -> int:
        """The global step: iterations done in the whole run."""
        return state.epoch * self.n_batches + state.progress.iteration

    @contextlib.contextmanager
    def progress(self, state, n_batches: int) -> Iterator["Reporter"]:
        """A context for one epoch's progress: `with report.progress(...): report.update()`."""
        from tqdm import tqdm

        self.n_batches = n_batches
        if self.active and not self.tensorboard_asked:
            self.tensorboard_asked = True
            self._open_tensorboard(state)
        self.epoch_started = self.last_line = time.perf_counter()
        self.epoch_start_iteration = state.progress.iteration
        # A bar only on a terminal: in a file, its redrawn frames would be one long line.
        if self.active and self.console.isatty():
            self.bar = tqdm(total=n_batches, initial=state.progress.iteration, leave=False, dynamic_ncols=True,
                            desc=f"epoch {state.epoch + 1}/{state.cfg.epochs}", file=self.console)
        try:
            yield self
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def losses(self, state, means: dict[str, float]) -> None:
        """The mean losses of the last log_every iterations."""
        if not self.active:
            return
        if self.tensorboard is not None:
            self.tensorboard.scalars({f"loss/{name}": value for name, value in means.items()}, self.step(state))
        if self.bar is not None:
            self.bar.set_postfix({name: f"{value:.3f}" for name, value in means.items()})
            return
        now = time.perf_counter()
        if now - self.last_line >= PLAIN_PROGRESS_SECONDS:
            self.last_line = now
            self.print(self.progress_line(state, means, now), sys.stderr)

    def progress_line(self, state, means: dict[str, float], now: float) -> str:
        """One line of progress for a log file: where, the losses, the speed and the time left."""
        done = state.progress.iteration - self.epoch_start_iteration
        per_iteration = (now - self.epoch_started) / max(done, 1)
        left = per_iteration * (self.n_batches - state.progress.iteration)
        losses = "  ".join(f"{name} {value:.3f}" for name, value in means.items())
        return (f"epoch {state.epoch + 1}/{state.cfg.epochs}  iteration {state.progress.iteration}/{self.n_batches}"
                f"  {losses}  {per_iteration:.2f} s/it, epoch done in {left:.0f} s")

    def epoch(self, state, val_set) -> None:
        """Everything an epoch shows: the sample grid, history.csv, the plots, index.html,
        TensorBoard's epoch values, and a line."""
        if not self.active:
            return
        cfg, history = state.cfg, state.history
        row = history["epochs"][-1]
        grid = save_sample_grid(sample_rows(state, val_set), self.folder / "samples" / f"epoch_{state.epoch:03d}.png",
                                title=f"{cfg.name}, epoch {state.epoch}")
        write_csv(history["epochs"], self.folder / "history.csv")
        plot_curves(history["epochs"], history["steps"], self.loss_names, self.folder / "loss.png", epoch_means=True)
        metric_names = VAL_NAMES + (FID_NAMES if cfg.val_fid else ())
        if any("val_L1" in r for r in history["epochs"]):
            plot_curves(history["epochs"], {}, metric_names, self.folder / "metrics.png")
        write_gallery(history["epochs"], self.loss_names, metric_names, self.folder, title=f"Pix2Pix run {cfg.name}")
        if self.tensorboard is not None:
            step = self.step(state)
            values = {f"val/{name.removeprefix('val_')}": row[name] for name in metric_names if name in row}
            values.update({"train/lr": row["lr"], "train/epoch_seconds": row["seconds"], "train/epoch": state.epoch})
            self.tensorboard.scalars(values, step)
            self.tensorboard.image("samples", grid, step)
            self.tensorboard.flush()  # an epoch's curves are visible at once, not after flush_secs
        summary = "  ".join(f"{name} {row[name]:.4f}" for name in self.loss_names + VAL_NAMES if name in row)
        self.print(f"epoch {state.epoch}/{cfg.epochs}  {summary}  lr {row['lr']:.2e}  {row['seconds']:.1f}s")

    def print(self, line: str, file: TextIO | None = None) -> None:
        """A line on stdout (or `file`), and so in train.log; on a terminal, above the bar."""
        from tqdm import tqdm

        if not self.active:
            return
        with tqdm.external_write_mode(file=self.console):  # clears the bar, redraws it after
            print(line, file=file or sys.stdout, flush=True)

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
