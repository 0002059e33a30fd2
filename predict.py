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
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from evaluation.export import export_generator, export_paths
from evaluation.generate import translate_image
from evaluation.metrics import MissingPackageError, inception_weights_path
from files.images import DatasetError, list_images, read_image
from files.paths import (
    PathError,
    check_own_folder,
    check_targets,
    describe,
    made_by,
    output_path,
    plain_name,
)
from reporting.figures import save_image
from reporting.split_report import (
    SUBFOLDERS,
    check_scorable,
    evaluate_split,
    metrics_line,
    open_paired,
    write_report,
)
from training.checkpoint import CheckpointError
from training.settings import ConfigError
from training.trained_generator import inference_precision, load_run
from utils import ArgumentParser, OutputError, exit_on_errors, progress, resolve_device

WRITER = "pix2pix predict.py"  # the mark in the files it writes: the only files it replaces


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
        save_image(fake_B, output / f"{path.stem}.png", WRITER)


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
        **evaluate_split(G, settings, data, folder, output, device, amp, args.fid, WRITER),
    }
    write_report(report, output, f"{settings.name}, epoch {epoch}: {args.split}")
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
