"""The files of a run that a person looks at: the history CSV, sample grids with captions and
single images, loss and metric plots, and the HTML gallery. Every file is written atomically
(files.writing.atomic_write), so a kill at any moment leaves the previous complete file."""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.metrics import to_levels
from files.paths import save_png
from files.writing import atomic_write, write_text


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


def save_sample_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    path: str | Path,
    title: str = "",
    captions: Sequence[str] = COLUMN_CAPTIONS,
) -> np.ndarray:
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
    images = torch.stack(
        [F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2]), value=-1.0) for i in images]
    )  # (N, 3, height, width)
    grid = make_grid(
        images, nrow=len(rows[0]), padding=GRID_PADDING, pad_value=-1.0
    )  # (3, H, W), black lines
    image = captioned(to_pixels(grid), title, list(captions)[: len(rows[0])], width)
    atomic_write(path, lambda tmp: image.save(tmp, format="png", compress_level=PNG_COMPRESS_LEVEL))
    return np.asarray(image)


# zlib level 1: a third of the time of PIL's default level 6, for files about 10 % larger.
PNG_COMPRESS_LEVEL = 1


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8: torchvision's save_image levels (metrics.to_levels),
    the ones the metrics are computed on."""
    return to_levels(image.cpu(), torch.uint8).permute(1, 2, 0).numpy()


def save_image(image: torch.Tensor, path: str | Path, writer: str) -> None:
    """Save one (C, H, W) image in [-1, 1] as an 8-bit RGB PNG (C = 1: gray, as torchvision's
    save_image writes it) that carries `writer`'s mark (files/paths.py), by which a later run
    knows the file for its own."""
    from PIL import Image

    picture = Image.fromarray(to_pixels(image.expand(3, -1, -1)))
    save_png(picture, Path(path), writer, PNG_COMPRESS_LEVEL)


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


def plot_curves(
    epochs: Sequence[dict],
    steps: dict[str, list[float]],
    names: Sequence[str],
    path: str | Path,
    epoch_means: bool = False,
) -> None:
    """One panel per quantity: its epoch values and, when given, a smoothed per-step curve.

    epochs: rows with "epoch" and a value per name (rows without a name's value are skipped, e.g.
    epochs without validation); steps: "epoch" (fractional) and a value per name, one point
    every few iterations (empty for quantities measured once per epoch). epoch_means: the epoch
    values are means over the epoch, and are drawn at its middle (epoch - 0.5), where the
    iterations they average lie; otherwise at the epoch's end, when they were measured.
    """
    from matplotlib.figure import Figure  # no pyplot: a figure for a file, no window, no global state

    width, height = 4.0 * len(names), 3.4  # inches
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches, room for tick labels, axis labels and the legend above: the layout
    # engine (tight_layout) would measure every text and cost more than the drawing itself.
    fig.subplots_adjust(
        left=0.75 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.6 / height, wspace=0.9 / 3.1
    )
    axes = fig.subplots(1, len(names), squeeze=False)
    offset = 0.5 if epoch_means else 0.0
    # A short run has few points: a window of at most an eighth of them keeps its shape visible.
    window = max(1, min(SMOOTH_POINTS, len(steps.get("epoch", ())) // 8)) | 1  # odd: centred on a point
    for ax, name in zip(axes[0], names):
        if steps.get(name):
            ax.plot(
                steps["epoch"],
                smooth(steps[name], window),
                lw=0.8,
                alpha=0.6,
                label=f"iterations, centred mean of {window} points" if window > 1 else "iterations",
            )
        points = [(row["epoch"] - offset, row[name]) for row in epochs if row.get(name) not in (None, "")]
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            "o-",
            ms=3,
            label="epoch mean (at mid-epoch)" if epoch_means else "per epoch",
        )
        title, unit = CURVES.get(name, (name, ""))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
    # One legend for the figure: every panel draws the same kinds of line.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ---------------------------------------------------------------------------------------------
# HTML pages
# ---------------------------------------------------------------------------------------------


def _cell(value) -> str:
    """A table cell: numbers with 4 significant digits, anything else as escaped text."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def html_page(title: str, body: Sequence[str]) -> str:
    """A small self-contained HTML page (inline style, relative links only)."""
    style = (
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


WHOLE_SPLIT_NAMES = ("val_all_L1", "val_all_PSNR", "val_all_SSIM")  # after the last epoch


def whole_split_paragraph(epochs: Sequence[dict]) -> list[str]:
    """The latest whole-split scores (val_all_*), as a paragraph at the top of the page."""
    rows = [row for row in epochs if "val_all_L1" in row]
    if not rows:
        return []
    row = rows[-1]
    return [
        f"<p><b>The whole val split after epoch {row['epoch']}:</b> L1 {row['val_all_L1']:.4f}, "
        f"PSNR {row['val_all_PSNR']:.2f} dB, SSIM {row['val_all_SSIM']:.4f} "
        f"(the epochs' val_* score a fixed subset of it)</p>"
    ]


def write_gallery(
    epochs: Sequence[dict],
    loss_names: Sequence[str],
    metric_names: Sequence[str],
    folder: str | Path,
    title: str,
) -> None:
    """folder/index.html: the whole val split's scores once the last epoch has them (val_all_*),
    the loss and metric plots, then each epoch's sample grid, newest first, under a table of that
    epoch's losses and validation metrics (and its val_all_* where it has them). Links are
    relative to folder.

    The grids load lazily (as they scroll into view), so a page of 200 epochs opens at once."""
    folder = Path(folder)
    body = whole_split_paragraph(epochs) + [
        f'<p><img src="{name}" alt="{name}"></p>'
        for name in ("loss.png", "metrics.png")
        if (folder / name).is_file()
    ]
    for row in reversed(epochs):
        whole = [name for name in WHOLE_SPLIT_NAMES if name in row]
        columns = ["epoch", *loss_names, *metric_names, *whole, "lr", "seconds"]
        grid = f"samples/epoch_{row['epoch']:03d}.png"
        body.append(f"<h2>Epoch {row['epoch']}</h2>")
        body.append(
            "<table><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            + "</tr><tr>"
            + "".join(_cell(row.get(c, "")) for c in columns)
            + "</tr></table>"
        )
        if (folder / grid).is_file():
            body.append(
                f'<p><img src="{grid}" alt="epoch {row["epoch"]}: input | generated | target" '
                f'loading="lazy"></p>'
            )
    write_text(folder / "index.html", html_page(title, body))
