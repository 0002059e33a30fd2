"""Translate images with a trained generator, and measure it on a paired split.

    python predict.py --checkpoint checkpoints/facades/latest.pt labels.png more_labels/ --output out/
    python predict.py --checkpoint checkpoints/facades/best.pt --split test [--data_root DIR] [--fid]

Inputs are images of the input domain (label maps for facades), files or folders of them; each
gives <output>/<stem>.png of the same size as the input. Images of any size work: by default
the input is padded (its border repeated) to a multiple of the generator's 2^depth, translated
and cropped back; with --resize it is instead resized to the training image_size and the output
resized back. For a run on aligned data, a file twice as wide as high is taken for an A|B pair
of its dataset: its input half (the half --direction, by default the run's, reads) is
translated, with a line saying so; --whole keeps such inputs whole.

With --split, the paired images of that split are translated as in validation (resized to
image_size), and the output folder gets <stem>.png per image, real_A/ and real_B/ (input and
target), metrics.json (means and per-image L1, PSNR, SSIM; FID and KID with --fid) and
index.html, a page of input | generated | target with each image's numbers.

With --export model.onnx (or --export model), the generator is written as ONNX, model.onnx
(dynamic batch, height and width: multiples of 2^depth), and as a torch.export program,
model.pt2 beside it, for deployment without this code. The .pt2 program needs nothing beyond
PyTorch; the ONNX file needs the packages of requirements-export.txt, and without them only the
.pt2 is written, with a line saying so. The exported graph is deterministic: dropout off, and
BatchNorm as the run's eval_mode says (false: the statistics of the input batch, as in
training). Each file written is printed; the ONNX model's metadata_props say how to feed it (input
range [-1, 1], size multiple, direction, input/output channels, eval_mode):
onnx.load(path).metadata_props.

The generator is rebuilt from the checkpoint alone. Batch-norm mode and dropout follow the run's
`eval_mode` (false, the paper's choice: batch statistics and dropout at test time too) unless
--eval_mode says otherwise. --checkpoint also takes a U-Net generator of the authors'
pytorch-CycleGAN-and-pix2pix (latest_net_G.pth, see training/official_weights.py), run with their
defaults: eval_mode false, dropout 0.5; its direction is BtoA unless --direction says otherwise.

Nothing it writes replaces an input (an image, the checkpoint, the data root) or, unless --force,
a file it did not write (its files carry its mark; files/paths.py has the rule). --split is a plain
folder name; the default output folder stays inside <results_dir>/<name> and holds only its files.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable
from urllib.parse import quote

import torch
from PIL import Image
from tqdm import tqdm

from dataset import PairedDataset, open_split
from evaluation.export import export_generator, export_paths
from evaluation.generate import translate_image, translate_pairs
from evaluation.metrics import (
    FID_MIN_IMAGES,
    SSIM_SIZE,
    MissingPackageError,
    evaluate_pairs,
    inception_weights_path,
)
from files.images import DatasetError, list_images, read_image
from files.paths import (
    PathError,
    check_own_folder,
    check_targets,
    describe,
    html_mark,
    made_by,
    output_path,
    plain_name,
    save_png,
)
from files.writing import write_text
from reporting.figures import PNG_COMPRESS_LEVEL, html_page, to_pixels
from training.checkpoint import CheckpointError
from training.settings import ConfigError
from training.trained_generator import inference_precision, load_run
from utils import ArgumentParser, OutputError, exit_on_errors, resolve_device

WRITER = "pix2pix predict.py"  # the mark in the files it writes: the only files it replaces
SUBFOLDERS = ("real_A", "real_B")  # of a split's output folder


def is_own(path: Path) -> bool:
    """Whether `path` is a file predict wrote (it carries predict's mark)."""
    return made_by(path, WRITER)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("inputs", nargs="*", type=Path, help="input-domain images or folders of them")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument(
        "--output",
        help="output folder (default: <results_dir>/<name>/predict or <results_dir>/<name>/<split>)",
    )
    parser.add_argument(
        "--results_dir",
        type=Path,
        default=Path("results"),
        help="where the default output folder goes, whatever the checkpoint's run used (default: results)",
    )
    parser.add_argument("--split", help="translate and evaluate this paired split (e.g. test) of data_root")
    parser.add_argument("--data_root", help="folder of the paired splits (default: the run's data_root)")
    parser.add_argument(
        "--fid",
        action="store_true",
        help="with --split: also FID and KID (needs pip install -r requirements-eval.txt)",
    )
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize inputs to image_size and outputs back, instead of padding to the generator's multiple",
    )
    parser.add_argument(
        "--export",
        metavar="MODEL.onnx",
        help="write the generator as MODEL.pt2, a torch.export program, and MODEL.onnx (the path "
        "ends in .onnx or has no suffix; the ONNX file needs pip install -r requirements-export.txt)",
    )
    parser.add_argument("--eval_mode", choices=("true", "false"), help="override the run's eval_mode")
    parser.add_argument(
        "--direction",
        choices=("AtoB", "BtoA"),
        help="override the run's direction: which half of an A|B pair file (and of --split) is the input",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="translate an input twice as wide as high whole, not as the input half of an A|B pair",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N")
    parser.add_argument(
        "--force", action="store_true", help="replace files predict did not write (not inputs)"
    )
    args = parser.parse_args(argv)
    if sum((bool(args.inputs), args.split is not None, args.export is not None)) != 1:
        parser.error("give input images or folders, or --split, or --export: one of them")
    if args.fid and not args.split:
        parser.error("--fid needs --split (it compares with the real targets of a split)")
    return args


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """The image files named, and the images inside the folders named; stems must be unique."""
    files = []
    for path in inputs:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DatasetError(f"{path}: no images in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise DatasetError(f"{path}: is {describe(path.stat().st_mode)}; give an image file or a folder")
        else:
            raise DatasetError(f"{path}: no such file or folder")
    clash = first_stem_clash(files)
    if clash:
        raise DatasetError(
            f"{clash[0]} and {clash[1]} would both be written as {clash[1].stem}.png; rename one"
        )
    return files


def first_stem_clash(files: list[Path]) -> tuple[Path, Path] | None:
    """The first two files of one stem (they would have one output name), in one pass."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            return seen[path.stem], path
        seen[path.stem] = path
    return None


def output_folder(args: argparse.Namespace, settings: SimpleNamespace) -> Path:
    """--output, or the default <results_dir>/<name>/<split or predict>, checked by the one rule of
    output paths (files/paths.py): the default stays strictly inside <results_dir>/<name> and, but
    with --force, holds nothing that predict did not write (the run's own pages, say)."""
    if args.output is not None:
        return output_path(args.output, "--output", kind="folder")
    rule = {"plain": True, "kind": "folder", "hint": "give --output"}
    run = output_path(settings.name, f"{args.checkpoint}: its run name", root=args.results_dir, **rule)
    setting = "--split" if args.split else "the default output folder"
    output = output_path(args.split or "predict", setting, root=run, **rule)
    if not args.force:
        check_own_folder(output, is_own, SUBFOLDERS, "predict.py")
    return output


def check_output_folder(output: Path, inputs: list[Path], data_roots: list[Path]) -> None:
    """Refuse an output folder that is a named input folder or lies in a data root. Compared
    resolved (links followed), as the files would really be written."""
    where = output.resolve()
    for root in data_roots:
        if where.is_relative_to(root.resolve()):
            raise ConfigError(
                f"output folder {output}: is inside the data root {root}; give another --output"
            )
    for path in inputs:
        if where in (path.parent.resolve() / path.name, path.resolve()):
            raise ConfigError(
                f"output folder {output}: would overwrite the input {path}; give another --output"
            )


def check_outputs(targets: list[Path], inputs: list[Path], data_roots: list[Path], force: bool) -> None:
    """Before any work: no file predict is to write is an input or lies in a data root, and (but
    with --force) none replaces a file predict did not write."""
    own = {"made_here": is_own, "force": force, "writer": "predict.py"}
    check_targets(targets, "--output", inputs=inputs, roots=data_roots, **own)


def save_image(image: torch.Tensor, path: Path) -> None:
    """reporting.figures.save_image's PNG with predict's mark, by which a later run knows it."""
    save_png(Image.fromarray(to_pixels(image.expand(3, -1, -1))), path, WRITER, PNG_COMPRESS_LEVEL)


def read_input(path: Path, settings: SimpleNamespace, whole: bool = False) -> torch.Tensor:
    """An input file as uint8 (C, H, W). A file twice as wide as high, given to a run on aligned
    data, is taken for an A|B pair file of its dataset: its input half (the half `direction`
    reads) is returned, and a line says so; `whole` keeps every image whole."""
    real_A = read_image(path, settings.input_nc)
    height, width = real_A.shape[-2:]
    if whole or settings.data_layout != "aligned" or width != 2 * height:
        return real_A
    side, where = ("B", "right") if settings.direction == "BtoA" else ("A", "left")
    tqdm.write(
        f"{path}: {width}x{height}, an A|B pair file of the run's aligned data: translating its "
        f"{side} ({where}) half, as direction {settings.direction} says (--whole: the whole image)"
    )
    return real_A[..., height:] if side == "B" else real_A[..., :height]


def predict_files(
    G,
    settings: SimpleNamespace,
    files: list[Path],
    output: Path,
    device,
    amp,
    resize: bool,
    whole: bool = False,
) -> None:
    for path in progress(files, desc="translating"):
        real_A = read_input(path, settings, whole)  # (C, H, W) uint8
        resize_to = settings.image_size if resize else None
        fake_B = translate_image(G, real_A, settings.eval_mode, settings.seed, device, amp, resize_to)
        save_image(fake_B, output / f"{path.stem}.png")


def progress(items: Iterable, total: int | None = None, desc: str = "") -> Iterable:
    """A progress bar over `items` on a terminal; without one (output to a file or a pipe) the
    items alone: a bar's redrawn frames would fill a log with one long line."""
    return tqdm(items, total=total, desc=desc, dynamic_ncols=True, disable=None)  # None: off without a TTY


def metrics_line(report: dict) -> str:
    """The console's line of a split's scores: the mean L1, PSNR and SSIM over its images, and FID
    and KID with the number of images they compare."""
    mean, images = report["mean"], report["images"]
    line = (
        f"L1 {mean['L1']:.4f}  PSNR {mean['PSNR']:.2f} dB  SSIM {mean['SSIM']:.4f} (means of {images} images)"
    )
    if "FID" in mean:
        line += f"  FID {mean['FID']:.4g} over {mean.get('FID_images', images)} images"
        line += f"  KID {mean['KID']:.4g}" + (f" ± {mean['KID_std']:.2g}" if "KID_std" in mean else "")
    return line


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


def open_paired(G, settings: SimpleNamespace, folder: Path) -> PairedDataset:
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


def evaluate_split(
    G, settings: SimpleNamespace, data: PairedDataset, folder: Path, output: Path, device, amp, with_fid: bool
) -> dict:
    """Translate a paired split as validation does, write the images, and return metrics.json's content."""
    names = [path.stem for path in data.files]

    def pairs():
        items = progress(
            (data[i] for i in range(len(data))), total=len(data), desc=f"translating {folder.name}"
        )
        for index, (real_A, fake_B, real_B) in enumerate(
            translate_pairs(G, items, settings.eval_mode, settings.seed, amp, device)
        ):
            for image, where in ((fake_B, output), (real_A, output / "real_A"), (real_B, output / "real_B")):
                save_image(image, where / f"{names[index]}.png")
            yield fake_B, real_B

    per_image, means = evaluate_pairs(pairs(), with_fid, device)
    return {
        "written_by": WRITER,
        "split": str(folder),
        "images": len(names),
        "eval_mode": settings.eval_mode,
        "mean": means,
        "per_image": [
            {"name": name, **{k: v[i] for k, v in per_image.items()}} for i, name in enumerate(names)
        ],
    }


def gallery_page(report: dict, title: str) -> str:
    """index.html of a split: the mean metrics, then one row per image: input | generated | target."""
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
    body = [html_mark(WRITER), f"<p>{report['images']} images; means: {means}</p>", "<table>", *rows]
    return html_page(title, [*body, "</table>"])


def check_names(args: argparse.Namespace) -> None:
    """The names given for paths, before the checkpoint is read: --split a plain folder name, the
    --export and --output names not empty or special, the checkpoint a regular file."""
    if args.split is not None:
        plain_name(args.split, "--split", "the data root")
    if args.export is not None:
        export_paths(args.export)
    if args.output is not None:
        output_path(args.output, "--output", kind="folder")
    if args.checkpoint.exists() and not args.checkpoint.is_file():
        raise CheckpointError(f"{args.checkpoint}: is {describe(args.checkpoint.stat().st_mode)}")


def run(args: argparse.Namespace) -> Path:
    """Do what the arguments ask; returns the output folder."""
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"--device {args.device}: {err}") from None
    if args.fid:
        inception_weights_path()  # a missing optional package fails now, not after translating
    check_names(args)  # a bad name fails before the checkpoint is read
    G, settings, epoch = load_run(args.checkpoint, device)
    if args.eval_mode:
        settings.eval_mode = args.eval_mode == "true"
    settings.direction = args.direction or settings.direction
    data_roots = [
        Path(root) for root in (args.data_root, settings.data_root) if isinstance(root, str) and root
    ]
    if args.export:
        inputs = [args.checkpoint]
        export_generator(G, settings, args.export, epoch, inputs=inputs, roots=data_roots, force=args.force)
        return Path(args.export).parent
    amp = inference_precision(G, device)
    output = output_folder(args, settings)
    if not args.split:
        files = collect_inputs(args.inputs)
        check_output_folder(output, [*args.inputs, *files], data_roots)
        targets = [output / f"{path.stem}.png" for path in files]
        check_outputs(targets, [*args.inputs, *files, args.checkpoint], data_roots, args.force)
        predict_files(G, settings, files, output, device, amp, args.resize, args.whole)
    else:
        predict_split(args, G, settings, epoch, output, data_roots, device, amp)
    return output


def predict_split(args, G, settings, epoch: int, output: Path, data_roots: list[Path], device, amp) -> None:
    """--split: check every file it is to write, then translate and score the split."""
    folder = Path(args.data_root or settings.data_root) / args.split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such split folder (set --data_root)")
    check_output_folder(output, [], [*data_roots, folder])
    data = open_paired(G, settings, folder)
    check_scorable(data, folder, args.fid)
    # real_A/ and real_B/ stay in the output folder: a link there leading elsewhere is refused.
    folders = [
        output,
        *(output_path(n, "--output", root=output, plain=True, kind="folder") for n in SUBFOLDERS),
    ]
    targets = [where / f"{path.stem}.png" for where in folders for path in data.files]
    targets += [output / "metrics.json", output / "index.html"]
    check_outputs(targets, [*data.files, args.checkpoint], [*data_roots, folder], args.force)
    report = {
        "checkpoint": str(args.checkpoint),
        "epoch": epoch,
        **evaluate_split(G, settings, data, folder, output, device, amp, args.fid),
    }
    write_text(output / "metrics.json", json.dumps(report, indent=2) + "\n")
    write_text(output / "index.html", gallery_page(report, f"{settings.name}, epoch {epoch}: {args.split}"))
    print(metrics_line(report))


def main() -> None:
    args = parse_args(sys.argv[1:])
    with exit_on_errors(
        (ConfigError, PathError), (CheckpointError, DatasetError, OutputError, MissingPackageError)
    ):
        output = run(args)
    if not args.export:  # the export has named each file it wrote
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
