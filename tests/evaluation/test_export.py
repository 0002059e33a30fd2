"""predict.py --export: the ONNX file (run with onnxruntime) and the .pt2 program match PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require, tiny_config, write_tiny_checkpoint

import predict
from config import Config
from dataset import AlignedDataset
from evaluation import export as export_module
from evaluation.export import export_generator
from evaluation.generate import export_copy, translate
from files.paths import PathError
from generator import UNetGenerator
from training import trained_generator
from training.setup import generator_kwargs


def export(tmp_path: Path, **overrides) -> tuple[Path, Config]:
    for name in ("onnx", "onnxscript"):
        require(name)
    cfg = tiny_config(load_size=32, precision="auto", **overrides)
    checkpoint = write_tiny_checkpoint(tmp_path / "latest.pt", load_size=32, precision="auto", **overrides)
    predict.run(
        predict.parse_args(["--checkpoint", str(checkpoint), "--export", str(tmp_path / "model.onnx")])
    )
    return tmp_path / "model.onnx", cfg


def real_label_map(facades, height: int, width: int) -> torch.Tensor:
    """A real facades label map, resized to (1, 3, height, width) in [-1, 1]."""
    real_A, _ = AlignedDataset(facades / "test", "BtoA", 256, 256, train=False, max_images=1)[0]
    return torch.nn.functional.interpolate(real_A[None], size=(height, width), mode="bilinear")


def test_onnx_and_pt2_match_pytorch_at_a_new_size(facades, tmp_path):
    ort = require("onnxruntime")
    path, cfg = export(tmp_path)
    G, _, _ = trained_generator.load_run(tmp_path / "latest.pt", torch.device("cpu"))
    real_A = real_label_map(facades, 96, 64)  # not the size exported with, not square
    expected = export_copy(G, cfg.eval_mode)(real_A).detach()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (fake_B,) = session.run(None, {session.get_inputs()[0].name: real_A.numpy()})
    assert fake_B.shape == (1, 3, 96, 64)
    assert np.abs(fake_B - expected.numpy()).max() < 1e-3

    program = torch.export.load(str(path.with_suffix(".pt2")))
    assert (program.module()(real_A) - expected).abs().max() < 1e-3


@pytest.mark.parametrize("height,width", [(32, 32), (32, 64), (64, 32)])
def test_onnx_and_pt2_take_sides_of_one_block(facades, tmp_path, height, width):
    """Sides of exactly the size multiple (32 here) leave a 1x1 innermost map, which torch.export
    would otherwise have guarded against."""
    ort = require("onnxruntime")
    path, cfg = export(tmp_path)
    G, _, _ = trained_generator.load_run(tmp_path / "latest.pt", torch.device("cpu"))
    real_A = real_label_map(facades, height, width).repeat(2, 1, 1, 1)  # a batch of 2
    expected = export_copy(G, cfg.eval_mode)(real_A).detach()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (fake_B,) = session.run(None, {session.get_inputs()[0].name: real_A.numpy()})
    assert np.abs(fake_B - expected.numpy()).max() < 1e-3
    program = torch.export.load(str(path.with_suffix(".pt2")))
    assert (program.module()(real_A) - expected).abs().max() < 1e-3


def test_exported_graph_is_the_papers_test_time_generator_without_dropout(facades, tmp_path):
    """With dropout 0, export_copy() (batch statistics) equals translate() in the paper's mode."""
    _, cfg = export(tmp_path, dropout=0.0)
    G, _, _ = trained_generator.load_run(tmp_path / "latest.pt", torch.device("cpu"))
    real_A = real_label_map(facades, 64, 64)
    paper = translate(G, real_A, eval_mode=False, seed=0)
    assert (export_copy(G, eval_mode=False)(real_A) - paper).abs().max() < 1e-5


def test_without_the_onnx_packages_the_pt2_is_written_and_the_onnx_file_skipped(
    tmp_path, monkeypatch, capsys
):
    """torch.export needs nothing beyond PyTorch: the .pt2 is written, and one line names the
    skipped ONNX file, the missing packages and their install command."""
    real_find_spec = export_module.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in ("onnx", "onnxscript") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(export_module.importlib.util, "find_spec", find_spec)
    cfg = Config(image_size=32, load_size=32, ngf=8, ndf=8)
    G = UNetGenerator(**generator_kwargs(cfg))
    assert export_generator(G, cfg, tmp_path / "model.onnx") == [tmp_path / "model.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert skipped == [
        f"skipped {tmp_path / 'model.onnx'}: the ONNX export needs the optional packages onnx and "
        f"onnxscript: pip install -r requirements-export.txt"
    ]
    x = torch.rand(1, 3, 64, 32) * 2 - 1
    expected = export_copy(G, cfg.eval_mode)(x).detach()
    assert (torch.export.load(str(tmp_path / "model.pt2")).module()(x) - expected).abs().max() < 1e-4


def test_onnx_carries_metadata_and_each_written_file_is_named(tmp_path, capsys):
    onnx = require("onnx")
    path, cfg = export(tmp_path, direction="AtoB", input_nc=1)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed if line.startswith("wrote ")] == [
        str(path.with_suffix(".pt2")),
        str(path),
    ]
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert props["input_range"] == props["output_range"] == "[-1, 1]"
    assert props["size_multiple"] == "32" and props["direction"] == "AtoB" and props["eval_mode"] == "false"
    assert (props["input_channels"], props["output_channels"]) == ("1", "3") and props["epoch"] == "1"
    assert props["written_by"] == export_module.WRITER


def test_an_export_replaces_only_its_own_files_unless_forced(tmp_path, capsys):
    """Both files carry the export's mark; a file without it at either name (a checkpoint saved as
    model.pt2, say) is replaced only with --force."""
    for name in ("onnx", "onnxscript"):
        require(name)
    checkpoint = write_tiny_checkpoint(tmp_path / "latest.pt", load_size=32)
    argv = ["--checkpoint", str(checkpoint), "--export", str(tmp_path / "model")]
    predict.run(predict.parse_args(argv))
    predict.run(predict.parse_args(argv))  # its own files, known by their mark: replaced
    assert export_module.is_own_pt2(tmp_path / "model.pt2")
    assert export_module.is_own_onnx(tmp_path / "model.onnx")
    theirs = {"model.onnx": b"someone's model", "model.pt2": checkpoint.read_bytes()}
    for name in ("model.onnx", "model.pt2"):  # the .pt2 is checked first
        (tmp_path / name).write_bytes(theirs[name])
        with pytest.raises(PathError) as err:
            predict.run(predict.parse_args(argv))
        assert str(err.value) == (
            f"--export {tmp_path / 'model'}: {tmp_path / name} exists and was not written by "
            f"predict.py --export; give --force to replace it, or a new name"
        )
    assert all((tmp_path / name).read_bytes() == data for name, data in theirs.items())
    predict.run(predict.parse_args([*argv, "--force"]))
    assert export_module.is_own_pt2(tmp_path / "model.pt2")
    assert export_module.is_own_onnx(tmp_path / "model.onnx")
