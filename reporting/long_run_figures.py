"""The figures of a long run's results page (tools/results_page.py): the sample grids of chosen
epochs as JPEG, the run's loss and metric plots, test FID by epoch beside the published range and a
sheet of the first test images. Each is made in memory as the bytes of its file, all of them before
any is written, then written each through a temporary file (write_figures)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from files.writing import atomic_write

if TYPE_CHECKING:
    import PIL.Image

PUBLISHED_FID_RANGE = (119.0, 125.0)
PUBLISHED_FID_LABEL = "published pix2pix (facades, 106 test images)"
GRID_EPOCHS = (1, 50, 100, 150, 200)
EXAMPLE_ROWS, TILE, GAP = 4, 256, 4  # the test examples: rows, tile side and white gap in pixels
JPEG = {"format": "JPEG", "quality": 85, "optimize": True}  # photos as JPEG keep the repository small


class TestDir(NamedTuple):
    """One --test_dir: the epoch, whether it was evaluated with --eval_mode true, and its means."""

    epoch: int
    eval_mode: bool
    folder: Path
    means: dict[str, float]


def last_paper_test(tests: list[TestDir]) -> TestDir | None:
    """The test folder of the highest epoch evaluated in the paper's mode (eval_mode false)."""
    return max((t for t in tests if not t.eval_mode), key=lambda t: t.epoch, default=None)


def example_names(folder: Path) -> list[str]:
    """The first EXAMPLE_ROWS generated test images of a predict folder, by number: 1, 2, 3, 4."""
    names = sorted((p.stem for p in folder.glob("*.png") if p.stem.isdigit()), key=int)
    if not names:
        raise ValueError(f"{folder}: no generated test images (1.png, 2.png, ...)")
    return names[:EXAMPLE_ROWS]


def load_rgb(path: Path) -> PIL.Image.Image:
    """The picture at `path` as an RGB PIL image; an unreadable one is an OSError naming `path`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise OSError(f"{path}: {err.strerror or err}") from None


def jpeg_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **JPEG)
    return buffer.getvalue()


def examples_sheet(folder: Path) -> bytes:
    """Rows input | generated | real of the first test images of a predict folder, as JPEG."""
    from PIL import Image

    names = example_names(folder)
    sheet = Image.new("RGB", (3 * TILE + 2 * GAP, len(names) * (TILE + GAP) - GAP), "white")
    for row, name in enumerate(names):
        row_files = (
            folder / "real_A" / f"{name}.png",
            folder / f"{name}.png",
            folder / "real_B" / f"{name}.png",
        )
        for column, path in enumerate(row_files):
            tile = load_rgb(path)
            if tile.size != (TILE, TILE):
                tile = tile.resize((TILE, TILE))
            sheet.paste(tile, (column * (TILE + GAP), row * (TILE + GAP)))
    return jpeg_bytes(sheet)


def fid_plot(tests: list[TestDir], epochs: int) -> bytes:
    """FID against epoch for both modes, over the band of the published figures, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: a figure for a file, no window, no global state

    fig = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axhspan(*PUBLISHED_FID_RANGE, color="tab:green", alpha=0.25, label=PUBLISHED_FID_LABEL)
    for eval_mode, label, style in (
        (False, "paper mode (eval_mode false)", "o-"),
        (True, "eval_mode true", "s--"),
    ):
        points = sorted(
            (t.epoch, t.means["FID"]) for t in tests if t.eval_mode == eval_mode and "FID" in t.means
        )
        if points:
            ax.plot([e for e, _ in points], [f for _, f in points], style, label=label)
    ax.set_xlim(0, epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("FID on the test split (lower is better)")
    ax.set_title("FID of the facades test split (106 images) by epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def make_figures(results: Path, tests: list[TestDir], epochs: int) -> dict[str, bytes]:
    """File name -> contents of every figure the page shows; reads all inputs, writes nothing."""
    figures = {}
    for epoch in GRID_EPOCHS:
        grid = results / "samples" / f"epoch_{epoch:03d}.png"
        if grid.exists():
            figures[f"grid_epoch_{epoch:03d}.jpg"] = jpeg_bytes(load_rgb(grid))
    for name in ("loss.png", "metrics.png"):
        figures[name] = (results / name).read_bytes()
    if tests:
        figures["fid_by_epoch.png"] = fid_plot(tests, epochs)
    last = last_paper_test(tests)
    if last is not None:
        figures["test_examples.jpg"] = examples_sheet(last.folder)
    return figures


def write_figures(folder: Path, figures: dict[str, bytes]) -> None:
    """Each figure through a temporary file renamed into place (files/writing.py): a reader of the
    folder, or a kill, never meets a half-written figure."""
    for name, data in figures.items():
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
