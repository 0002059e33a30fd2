"""A paired split translated and scored with a trained generator, as predict.py --split writes it:
<stem>.png per image with real_A/ and real_B/ (input and target) beside them, metrics.json (means
and per-image L1, PSNR, SSIM; FID and KID on request) and index.html, a page of input | generated
| target with each image's numbers. The split is read as validation reads it (resized to
image_size) and every file carries its writer's mark (files/paths.py)."""

from __future__ import annotations

import contextlib
import html
import json
import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import torch

from dataset import PairedDataset, open_split
from evaluation.generate import translate_pairs
from evaluation.metrics import FID_MIN_IMAGES, SSIM_SIZE, evaluate_pairs
from files.images import DatasetError
from files.paths import html_mark
from files.writing import write_text
from reporting.figures import html_page, save_image
from utils import progress

SUBFOLDERS = ("real_A", "real_B")  # of a split's output folder, beside the generated images


def open_paired(G: torch.nn.Module, settings: SimpleNamespace, folder: Path) -> PairedDataset:
    """The split as validation reads it."""
    return open_split(
        folder,
        settings.data_layout,
        direction=settings.direction,
        load_size=settings.load_size,
        image_size=settings.image_size,
        train=False,
        preprocess=settings.preprocess,
        input_nc=settings.input_nc,
        output_nc=settings.output_nc,
        multiple=G.size_multiple,
    )


def check_scorable(data: PairedDataset, folder: Path, with_fid: bool) -> None:
    """Before the first image is translated: every image of the split is big enough for SSIM's
    window, and --fid has two images or more to compare."""
    for (height, width), name in data.sizes().items():
        if min(height, width) < SSIM_SIZE:
            raise DatasetError(
                f"{name}: {width}x{height} as the run's --preprocess {data.preprocess} reads it, but SSIM "
                f"needs at least {SSIM_SIZE}x{SSIM_SIZE}; evaluate another split, or translate the files"
            )
    if with_fid and len(data) < FID_MIN_IMAGES:
        raise DatasetError(f"{folder}: {len(data)} image, but --fid needs at least {FID_MIN_IMAGES}")


def evaluate_split(
    G: torch.nn.Module,
    settings: SimpleNamespace,
    data: PairedDataset,
    folder: Path,
    output: Path,
    device: torch.device,
    amp: contextlib.AbstractContextManager | None,
    with_fid: bool,
    writer: str,
) -> dict:
    """Translate a paired split as validation does, write the images with `writer`'s mark, and
    return metrics.json's content."""
    names = [path.stem for path in data.files]

    def pairs():
        items = progress(
            (data[i] for i in range(len(data))), total=len(data), desc=f"translating {folder.name}"
        )
        for index, (real_A, fake_B, real_B) in enumerate(
            translate_pairs(G, items, settings.eval_mode, settings.seed, amp, device)
        ):
            for image, where in ((fake_B, output), (real_A, output / "real_A"), (real_B, output / "real_B")):
                save_image(image, where / f"{names[index]}.png", writer)
            yield fake_B, real_B

    per_image, means = evaluate_pairs(pairs(), with_fid, device)
    return {
        "written_by": writer,
        "split": str(folder),
        "images": len(names),
        "eval_mode": settings.eval_mode,
        "mean": means,
        "per_image": [
            {"name": name, **{k: v[i] for k, v in per_image.items()}} for i, name in enumerate(names)
        ],
    }


def write_report(report: dict, output: Path, title: str) -> None:
    """output/metrics.json and output/index.html of a split's report, both with its writer's mark."""
    write_text(output / "metrics.json", json.dumps(report, indent=2) + "\n")
    write_text(output / "index.html", gallery_page(report, title))


def gallery_page(report: dict, title: str) -> str:
    """index.html of a split: the mean metrics, then one row per image: input | generated | target;
    the page carries the mark of the report's writer."""
    means = ", ".join(f"{k} {v:.4g}" for k, v in report["mean"].items())
    rows = [
        "<tr><th>image</th><th>input</th><th>generated</th><th>target</th><th>L1</th><th>PSNR</th>"
        "<th>SSIM</th></tr>"
    ]
    for item in report["per_image"]:
        # The file name's bytes, %-escaped, so that spaces, '#', '&' and names that are not
        # UTF-8 (surrogate-escaped by Python) all link to the file; shown with U+FFFD for bad bytes.
        png = quote(os.fsencode(f"{item['name']}.png"))
        shown = os.fsencode(item["name"]).decode("utf-8", "replace")
        images = "".join(
            f'<td><img src="{src}" alt="{src}" width="256"></td>'
            for src in (f"real_A/{png}", png, f"real_B/{png}")
        )
        rows.append(
            f"<tr><td>{html.escape(shown)}</td>{images}<td>{item['L1']:.4f}</td><td>{item['PSNR']:.2f}</td>"
            f"<td>{item['SSIM']:.4f}</td></tr>"
        )
    mark = html_mark(report["written_by"])
    body = [mark, f"<p>{report['images']} images; means: {means}</p>", "<table>", *rows]
    return html_page(title, [*body, "</table>"])


def metrics_line(report: dict) -> str:
    """The console's line of a split's scores: the mean L1, PSNR and SSIM over its images, and FID
    and KID with the number of images they compare."""
    mean, images = report["mean"], report["images"]
    line = (
        f"L1 {mean['L1']:.4f}  PSNR {mean['PSNR']:.2f} dB  SSIM {mean['SSIM']:.4f} (means of {images} images)"
    )
    if "FID" in mean:
        # One decimal whatever the size, so that 132.98 reads "133.0" beside "141.6".
        line += f"  FID {mean['FID']:.1f} over {mean.get('FID_images', images)} images"
        line += f"  KID {mean['KID']:.4g}" + (f" ± {mean['KID_std']:.2g}" if "KID_std" in mean else "")
    return line
