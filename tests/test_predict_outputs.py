"""Nothing predict.py writes replaces a file it did not create: its outputs never land on its
inputs or in the run's data, export names never collide, the default output folder stays in
the results folder whatever a checkpoint says, and many inputs are checked in linear time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_main, tiny_config
from PIL import Image

import predict
import train
from training.checkpoint import full_checkpoint, save_checkpoint


def save_checkpoint_with(path: Path, **config) -> Path:
    """A freshly initialised tiny run's checkpoint whose saved config has `config` changed."""
    saved = full_checkpoint(dataclasses.replace(train.setup(tiny_config(name="tiny")), epoch=1))
    saved["config"].update(config)
    save_checkpoint(saved, path)
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root with a 'test' split of two aligned pairs (A | B side by side)."""
    root = tmp_path_factory.mktemp("data")
    (root / "test").mkdir()
    rng = np.random.default_rng(0)
    for name in ("1.png", "2.png"):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(root / "test" / name)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_root) -> Path:
    return save_checkpoint_with(tmp_path_factory.mktemp("run") / "latest.pt", data_root=str(data_root))


def save_png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 100, dtype=np.uint8)).save(path)
    return path


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "case", ["output is the input folder", "output holds an input", "a link to an input folder", "split"]
)
def test_outputs_never_land_on_inputs_or_in_the_data_root(
    case, checkpoint, data_root, tmp_path, monkeypatch, capsys
):
    labels = tmp_path / "labels"
    save_png(labels / "a.png")
    save_png(labels / "b.jpg")
    (tmp_path / "link").symlink_to(labels)
    argv = {
        "output is the input folder": [labels, "--output", tmp_path / "labels" / ".." / "labels"],
        "output holds an input": [labels / "a.png", "--output", labels],
        "a link to an input folder": [labels, "--output", tmp_path / "link"],
        "split": ["--split", "test", "--output", data_root / "test"],
    }[case]
    before = {"labels": contents(labels), "data": contents(data_root)}
    code, _, (line,) = run_main(
        predict.main, ["--checkpoint", checkpoint, *argv], tmp_path, monkeypatch, capsys
    )
    expected = "is inside the data root" if case == "split" else "would overwrite"
    assert code == 2 and expected in line and "--output" in line, line
    assert {"labels": contents(labels), "data": contents(data_root)} == before, "nothing written"


def test_inputs_in_the_data_root_may_be_translated_elsewhere(checkpoint, data_root, tmp_path):
    out = predict.run(
        predict.parse_args(
            ["--checkpoint", str(checkpoint), str(data_root / "test"), "--output", str(tmp_path)]
        )
    )
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png"]


def test_output_inside_the_data_root_is_refused_for_input_files_too(checkpoint, data_root, tmp_path):
    save_png(tmp_path / "a.png")
    args = predict.parse_args(
        ["--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--output", str(data_root / "new")]
    )
    with pytest.raises(predict.ConfigError, match="is inside the data root"):
        predict.run(args)
    assert not (data_root / "new").exists()


@pytest.mark.parametrize("name", ["model.pt2", "model.pt", "model.v2"])
def test_export_names_that_would_collide_are_refused(name, checkpoint, tmp_path, monkeypatch, capsys):
    code, _, (line,) = run_main(
        predict.main, ["--checkpoint", checkpoint, "--export", tmp_path / name], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and f"--export {tmp_path / name}" in line and ".onnx" in line
    assert not list(tmp_path.iterdir())


def test_export_of_a_stem_writes_onnx_and_pt2_once_each(checkpoint, tmp_path, capsys):
    for package in ("onnx", "onnxscript"):
        require(package)
    predict.run(predict.parse_args(["--checkpoint", str(checkpoint), "--export", str(tmp_path / "model")]))
    written = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert written == [str(tmp_path / "model.pt2"), str(tmp_path / "model.onnx")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt2"]


def test_default_output_stays_in_the_results_folder_whatever_the_checkpoint_says(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    crafted = save_checkpoint_with(tmp_path / "crafted.pt", results_dir=str(elsewhere))
    monkeypatch.chdir(save_png(tmp_path / "work" / "x.png").parent)
    out = predict.run(predict.parse_args(["--checkpoint", str(crafted), "x.png"]))
    assert out == Path("results") / "tiny" / "predict" and (out / "x.png").is_file()
    # An explicit --results_dir is the only other place it goes.
    out = predict.run(predict.parse_args(["--checkpoint", str(crafted), "x.png", "--results_dir", "mine"]))
    assert out == Path("mine") / "tiny" / "predict" and (out / "x.png").is_file()
    assert not elsewhere.exists()


def test_name_clashes_among_many_inputs_are_found(tmp_path, monkeypatch):
    """50 000 names from one folder and one more file: the clash is found and both files named
    (a check that compared every pair of names would take minutes here)."""
    big = tmp_path / "big"
    big.mkdir()
    many = [big / f"x{i}.png" for i in range(50_000)]
    monkeypatch.setattr(predict, "list_images", lambda folder: list(many))
    assert predict.collect_inputs([big]) == many
    other = save_png(tmp_path / "other" / "x49999.jpg")
    with pytest.raises(predict.DatasetError) as err:
        predict.collect_inputs([big, other])
    assert str(big / "x49999.png") in str(err.value) and str(other) in str(err.value)
    assert "x49999.png" in str(err.value).split("written as ")[1]
