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
model.pt2 beside it, for deployment
without this code. The exported graph is deterministic: dropout off, and BatchNorm as the run's
eval_mode says (false: the statistics of the input batch, as in training). Each file written is
printed; the ONNX model's metadata_props say how to feed it (input range [-1, 1], size multiple,
direction, input/output channels, eval_mode): onnx.load(path).metadata_props.

The generator is rebuilt from the checkpoint alone. Batch-norm mode and dropout follow the run's
`eval_mode` (false, the paper's choice: batch statistics and dropout at test time too) unless
--eval_mode says otherwise. --checkpoint also takes a U-Net generator of the authors'
pytorch-CycleGAN-and-pix2pix (latest_net_G.pth, see official_weights.py), run with their
defaults: eval_mode false, dropout 0.5; its direction is BtoA unless --direction says otherwise.

Nothing it writes replaces an input: an output folder that would overwrite an input image, or
that lies in the run's data root (--data_root or the checkpoint's), is refused before any work.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import torch
from tqdm import tqdm

from config import ConfigError
from dataset import PairedDataset, open_split
from evaluation.export import export_generator
from evaluation.generate import translate_image, translate_pairs
from evaluation.metrics import (
    FID_MIN_IMAGES,
    SSIM_SIZE,
    MissingPackageError,
    evaluate_pairs,
    inception_weights_path,
)
from files.images import DatasetError, list_images, read_image
from reporting.figures import html_page, save_image
from training.checkpoint import CheckpointError
from training.trained_generator import inference_precision, load_run
from utils import (
    ArgumentParser,
    OutputError,
    exit_on_errors,
    resolve_device,
    write_text,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("inputs", nargs="*", type=Path, help="input-domain images or folders of them")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument(
        "--output",
        type=Path,
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
        type=Path,
        metavar="MODEL.onnx",
        help="write the generator as MODEL.onnx and MODEL.pt2, a torch.export program (the path "
        "ends in .onnx or has no suffix; needs pip install -r requirements-export.txt)",
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
    args = parser.parse_args(argv)
    if sum((bool(args.inputs), bool(args.split), bool(args.export))) != 1:
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


def check_output_folder(output: Path, inputs: list[Path], data_roots: list[Path]) -> None:
    """Refuse an output folder that is a named input folder, whose <stem>.png would replace an
    input image, or that lies in a data root: predict writes only over what it made. Compared
    resolved (links followed), as the files would really be written."""
    where = output.resolve()
    for root in data_roots:
        if where.is_relative_to(root.resolve()):
            raise ConfigError(
                f"output folder {output}: is inside the data root {root}; give another --output"
            )
    for path in inputs:
        # A link named as an input is replaced itself (os.replace), its target through the link.
        named = {path.parent.resolve() / path.name, path.resolve()}
        written = where / f"{path.stem}.png"
        if where in named or written in named or (written.exists() and os.path.samefile(written, path)):
            raise ConfigError(
                f"output folder {output}: would overwrite the input {path}; give another --output"
            )


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
    for path in tqdm(files, desc="translating", dynamic_ncols=True):
        real_A = read_input(path, settings, whole)  # (C, H, W) uint8
        resize_to = settings.image_size if resize else None
        fake_B = translate_image(G, real_A, settings.eval_mode, settings.seed, device, amp, resize_to)
        save_image(fake_B, output / f"{path.stem}.png")


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
    G, settings: SimpleNamespace, folder: Path, output: Path, device, amp, with_fid: bool
) -> dict:
    """Translate a paired split as validation does, write the images, and return metrics.json's content."""
    data = open_split(
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
    names = [path.stem for path in data.files]
    check_scorable(data, folder, with_fid)

    def pairs():
        items = tqdm(
            (data[i] for i in range(len(data))),
            total=len(data),
            desc=f"translating {folder.name}",
            dynamic_ncols=True,
        )
        for index, (real_A, fake_B, real_B) in enumerate(
            translate_pairs(G, items, settings.eval_mode, settings.seed, amp, device)
        ):
            for image, where in ((fake_B, output), (real_A, output / "real_A"), (real_B, output / "real_B")):
                save_image(image, where / f"{names[index]}.png")
            yield fake_B, real_B

    per_image, means = evaluate_pairs(pairs(), with_fid, device)
    return {
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
    return html_page(
        title, [f"<p>{report['images']} images; means: {means}</p>", "<table>", *rows, "</table>"]
    )


def export_paths(path: Path) -> tuple[Path, Path]:
    """The ONNX and .pt2 files of --export: MODEL.onnx or MODEL gives MODEL.onnx and MODEL.pt2;
    any other suffix is refused, so that the two never fall on one file."""
    if path.suffix not in ("", ".onnx"):
        raise ConfigError(
            f"--export {path}: give a path ending in .onnx, or without a suffix "
            f"(MODEL.onnx and MODEL.pt2 are both written)"
        )
    return path.with_suffix(".onnx"), path.with_suffix(".pt2")


def run(args: argparse.Namespace) -> Path:
    """Do what the arguments ask; returns the output folder."""
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"--device {args.device}: {err}") from None
    if args.fid:
        inception_weights_path()  # a missing optional package fails now, not after translating
    if args.export:
        export_paths(args.export)  # a bad name fails before the checkpoint is read
    G, settings, epoch = load_run(args.checkpoint, device)
    if args.eval_mode:
        settings.eval_mode = args.eval_mode == "true"
    settings.direction = args.direction or settings.direction
    if args.export:
        export_generator(G, settings, args.export, epoch)
        return args.export.parent
    amp = inference_precision(G, device)
    where = args.split or "predict"
    output = args.output or args.results_dir / settings.name / where
    data_roots = [
        Path(root) for root in (args.data_root, settings.data_root) if isinstance(root, str) and root
    ]
    if not args.split:
        files = collect_inputs(args.inputs)
        check_output_folder(output, [*args.inputs, *files], data_roots)
        predict_files(G, settings, files, output, device, amp, args.resize, args.whole)
        return output
    folder = Path(args.data_root or settings.data_root) / args.split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such split folder (set --data_root)")
    check_output_folder(output, [], [*data_roots, folder])
    report = {
        "checkpoint": str(args.checkpoint),
        "epoch": epoch,
        **evaluate_split(G, settings, folder, output, device, amp, args.fid),
    }
    write_text(output / "metrics.json", json.dumps(report, indent=2) + "\n")
    write_text(output / "index.html", gallery_page(report, f"{settings.name}, epoch {epoch}: {args.split}"))
    print("  ".join(f"{k} {v:.4g}" for k, v in report["mean"].items() if isinstance(v, float)))
    return output


def main() -> None:
    args = parse_args(sys.argv[1:])
    with exit_on_errors((ConfigError,), (CheckpointError, DatasetError, OutputError, MissingPackageError)):
        output = run(args)
    if not args.export:  # the export has named each file it wrote
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
