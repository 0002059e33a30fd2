"""The generator for deployment without this code: ``predict.py --export model`` writes model.pt2 (a
torch.export program, which needs nothing beyond PyTorch) and model.onnx (ONNX, which needs the
packages of requirements-export.txt; without them the .pt2 alone is written, with a line saying
so), both with dynamic batch, height and width. The graph is
deterministic: dropout off, and BatchNorm as the run's eval_mode says (evaluation.export_copy).
The ONNX model's metadata_props say how to feed it (input range [-1, 1], size multiple, direction,
channels, eval_mode).

Both files carry a mark (the ONNX metadata's written_by, the .pt2 archive's extra file
pix2pix.json): an export replaces only files it wrote, unless --force, and never the checkpoint
it reads or a file in the run's data root."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import torch

from evaluation.generate import export_copy
from files.paths import PathError, check_targets, output_path
from files.writing import atomic_write
from generator import UNetGenerator

EXPORT_HINT = "pip install -r requirements-export.txt"
WRITER = "pix2pix predict.py --export"  # the mark of the files it writes, which it may replace
MARK_FILE = "pix2pix.json"  # the .pt2 archive's extra file that holds the mark


def export_paths(path: str | os.PathLike, setting: str = "--export") -> tuple[Path, Path]:
    """The ONNX and .pt2 files of `path`: MODEL.onnx or MODEL gives MODEL.onnx and MODEL.pt2. An
    empty or special name (., .., /) and any other suffix are refused, the latter so that the two
    never fall on one file (what lies at the two names is check_export_targets')."""
    path = output_path(path, setting, kind=None)
    if path.suffix not in ("", ".onnx"):
        raise PathError(
            f"{setting} {path}: give a path ending in .onnx, or without a suffix "
            f"(MODEL.onnx and MODEL.pt2 are both written)"
        )
    return path.with_suffix(".onnx"), path.with_suffix(".pt2")


def is_own_pt2(path: Path) -> bool:
    """Whether `path` is a .pt2 program this export wrote (its archive holds the mark)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{MARK_FILE}")]
            return len(names) == 1 and json.loads(archive.read(names[0])).get("written_by") == WRITER
    except Exception:  # noqa: BLE001  (not a zip, not JSON, unreadable: not this export's file)
        return False


def is_own_onnx(path: Path) -> bool:
    """Whether `path` is an ONNX model this export wrote (its metadata_props hold the mark)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return any(p.key == "written_by" and p.value == WRITER for p in model.metadata_props)
    except Exception:  # noqa: BLE001  (not an ONNX model, unreadable: not this export's file)
        return False


def check_export_targets(
    targets: Iterable[Path],
    setting: str = "--export",
    inputs: Iterable[str | os.PathLike] = (),
    roots: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> None:
    """Before anything is exported: no target is an input (the checkpoint), lies in a data root,
    or (without `force`) is a file this export did not write."""

    def own(target: Path) -> bool:
        return is_own_pt2(target) if target.suffix == ".pt2" else is_own_onnx(target)

    writer = "predict.py --export"
    check_targets(targets, setting, inputs=inputs, roots=roots, made_here=own, force=force, writer=writer)


def missing_onnx_packages() -> list[str]:
    """The packages the ONNX exporter needs that are not installed (requirements-export.txt)."""
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


def onnx_metadata(G: UNetGenerator, settings: SimpleNamespace, epoch: int) -> dict[str, str]:
    """What a user of model.onnx needs to feed it and read it, as ONNX metadata_props (strings)."""
    return {
        "input_range": "[-1, 1]",
        "output_range": "[-1, 1]",
        "layout": "NCHW",
        "size_multiple": str(G.size_multiple),
        "direction": settings.direction,
        "input_channels": str(settings.input_nc),
        "output_channels": str(settings.output_nc),
        "eval_mode": str(settings.eval_mode).lower(),
        "run": str(settings.name),
        "epoch": str(epoch),
        "written_by": WRITER,
    }


def sizes_of_one_not_special() -> contextlib.AbstractContextManager:
    """torch.export assumes that a dynamic size is never 1 (broadcasting would differ), and so
    guards the program against it: an input of one 2^depth block per side, whose innermost map is
    1x1, would be refused. Size-oblivious reasoning keeps the program valid for them (tested); a
    torch without that setting exports as before."""
    try:
        from torch.fx.experimental import _config

        return _config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError, KeyError):
        return contextlib.nullcontext()


def export_generator(
    G: UNetGenerator,
    settings: SimpleNamespace,
    path: str | os.PathLike,
    epoch: int = 0,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    roots: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> list[Path]:
    """MODEL.pt2 and MODEL.onnx for `path` MODEL.onnx or MODEL: the deployable generator with
    dynamic sizes. The ONNX file carries onnx_metadata() in its metadata_props; without the ONNX
    packages it is skipped, with a line naming them and their install command. Before anything
    is written, each target is checked (export_paths, check_export_targets): never one of
    `inputs` (the checkpoint) nor in `roots` (the data root), and never a file this export did
    not write unless `force`. Returns the files written."""
    setting = f"--export {path}"
    path, pt2 = export_paths(path)
    missing = missing_onnx_packages()
    check_export_targets([pt2] if missing else [pt2, path], setting, inputs, roots, force)
    model = export_copy(G, settings.eval_mode).cpu()
    m = G.size_multiple
    example = torch.zeros(2, settings.input_nc, 2 * m, 3 * m)  # (N, C, H, W); 2 and 3 keep dims apart
    # Height and width: any multiple of the generator's 2^depth; batch: any size.
    dims = {
        "x": {
            0: torch.export.Dim("batch"),
            2: m * torch.export.Dim("height_blocks"),
            3: m * torch.export.Dim("width_blocks"),
        }
    }
    with sizes_of_one_not_special():
        program = torch.export.export(model, (example,), dynamic_shapes=dims)
    mark = {MARK_FILE: json.dumps({"written_by": WRITER, "run": str(settings.name), "epoch": epoch})}
    atomic_write(pt2, lambda tmp: torch.export.save(program, tmp, extra_files=mark))
    print(f"wrote {pt2} (torch.export program: torch.export.load(...).module())")
    if missing:
        packages = " and ".join(missing)
        print(f"skipped {path}: the ONNX export needs the optional packages {packages}: {EXPORT_HINT}")
        return [pt2]
    onnx_program = torch.onnx.export(
        model,
        (example,),
        dynamic_shapes=dims,
        dynamo=True,
        verbose=False,
        input_names=["real_A"],
        output_names=["fake_B"],
    )

    def write_onnx(tmp: str) -> None:
        import onnx

        onnx_program.save(tmp)
        # The exporter has no place for them; the onnx package adds them to the saved model.
        exported = onnx.load(tmp)
        onnx.helper.set_model_props(exported, onnx_metadata(G, settings, epoch))
        onnx.save(exported, tmp)

    atomic_write(path, write_onnx)
    print(f"wrote {path} (ONNX: input real_A, output fake_B, NCHW in [-1, 1], sides multiples of {m})")
    return [pt2, path]
