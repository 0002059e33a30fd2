"""The generator for deployment without this code: ``predict.py --export model`` writes model.onnx
(ONNX, dynamic batch, height and width) and model.pt2 (a torch.export program). The graph is
deterministic: dropout off, and BatchNorm as the run's eval_mode says (evaluation.export_copy).
The ONNX model's metadata_props say how to feed it (input range [-1, 1], size multiple, direction,
channels, eval_mode)."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

from evaluation.generate import export_copy
from evaluation.metrics import MissingPackageError
from generator import UNetGenerator
from utils import atomic_write


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


def export_generator(G: UNetGenerator, settings: SimpleNamespace, path: Path, epoch: int = 0) -> list[Path]:
    """MODEL.onnx and MODEL.pt2 for `path` MODEL.onnx or MODEL (predict.export_paths checks the
    name first): the deployable generator with dynamic sizes. The ONNX file carries
    onnx_metadata() in its metadata_props. Returns the files written."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackageError(
            f"ONNX export needs the optional packages {' and '.join(missing)}: "
            f"pip install -r requirements-export.txt"
        )
    path, pt2 = path.with_suffix(".onnx"), path.with_suffix(".pt2")
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
    atomic_write(pt2, lambda tmp: torch.export.save(program, tmp))
    print(f"wrote {pt2} (torch.export program: torch.export.load(...).module())")
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
