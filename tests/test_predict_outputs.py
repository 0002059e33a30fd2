"""Nothing predict.py writes replaces a file it did not create: its outputs never land on its
inputs or in the run's data, export names never collide, the default output folder stays in
the results folder whatever a checkpoint says, and many inputs are checked in linear time.
Every path goes through files/paths.py's one rule: a --split is a plain folder name, an export
name names a file, a FIFO is no file, and a file predict did not write is replaced only with
--force (tests/files/test_paths.py has the rule itself)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_main, tiny_config
from PIL import Image

import predict
from training.checkpoint import full_checkpoint, save_checkpoint
from training.setup import setup


def save_checkpoint_with(path: Path, **config) -> Path:
    """A freshly initialised tiny run's checkpoint whose saved config has `config` changed."""
    saved = full_checkpoint(dataclasses.replace(setup(tiny_config(name="tiny")), epoch=1))
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


# ---------------------------------------------------------------------------------------------
# The one rule for paths (files/paths.py)
# ---------------------------------------------------------------------------------------------


def aligned_pair(path: Path, seed: int = 0) -> Path:
    """A 32x64 A|B pair file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def run_m(tmp_path) -> Path:
    """A run "m" in tmp_path: its checkpoint, and its results folder with the pages training wrote."""
    (tmp_path / "checkpoints" / "m").mkdir(parents=True)
    checkpoint = save_checkpoint_with(tmp_path / "checkpoints" / "m" / "latest.pt", name="m", data_root="D")
    for name in ("loss.png", "metrics.png", "samples/epoch_001.png"):
        save_png(tmp_path / "results" / "m" / name)
    (tmp_path / "results" / "m" / "index.html").write_text("<p>the run's page</p>")
    return checkpoint


def test_an_export_over_its_own_checkpoint_is_refused(checkpoint, tmp_path, monkeypatch, capsys):
    shutil.copy(checkpoint, tmp_path / "gen.pt2")
    before = (tmp_path / "gen.pt2").read_bytes()
    for force in ([], ["--force"]):  # an input is never replaced
        argv = ["--checkpoint", "gen.pt2", "--export", "gen", *force]
        code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
        assert code == 2 and line == (
            "error: --export gen: writing gen.pt2 would overwrite the input gen.pt2; give a new name"
        )
        assert [p.name for p in tmp_path.iterdir()] == ["gen.pt2"]
        assert (tmp_path / "gen.pt2").read_bytes() == before


@pytest.mark.parametrize("split", [".", "..", "../test", "../../test", "test/", "a/b", ""])
def test_a_split_is_a_plain_folder_name_of_the_data_root(split, run_m, tmp_path, monkeypatch, capsys):
    aligned_pair(tmp_path / "pairs" / "loss.jpg")
    aligned_pair(tmp_path / "pairs" / "metrics.jpg")
    aligned_pair(tmp_path / "D" / "train" / "1.png")
    aligned_pair(tmp_path / "D" / "test" / "1.png")
    before = contents(tmp_path)
    for data_root in ("pairs", "D/train"):
        argv = ["--checkpoint", run_m, "--data_root", data_root, "--split", split]
        code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
        assert code == 2 and line == (
            f"error: --split '{split}': must be a plain folder name inside the data root (no /, \\, . or ..)"
        )
    assert contents(tmp_path) == before, "nothing written, the run's own pages least of all"


@pytest.mark.parametrize("case", ["a link to the run's folder", "a link out", "the run's samples"])
def test_the_default_output_folder_is_never_the_runs_own_nor_holds_others_files(
    case, run_m, tmp_path, monkeypatch, capsys
):
    for split in ("test", "samples"):
        aligned_pair(tmp_path / "D" / split / "1.png")
    (tmp_path / "elsewhere").mkdir()
    split, expected = {
        "a link to the run's folder": ("test", "resolves to results/m itself; give --output"),
        "a link out": ("test", f"resolves to {tmp_path / 'elsewhere'}, outside results/m; give --output"),
        "the run's samples": (
            "samples",
            "the default output folder results/m/samples holds results/m/samples/epoch_001.png, which "
            "predict.py did not write; give --force to write there anyway, or a new --output",
        ),
    }[case]
    link = {"a link to the run's folder": ".", "a link out": tmp_path / "elsewhere"}.get(case)
    if link:
        (tmp_path / "results" / "m" / "test").symlink_to(link)
    before = contents(tmp_path)
    argv = ["--checkpoint", run_m, "--split", split]
    code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and line.startswith("error: ") and line.endswith(expected), line
    assert contents(tmp_path) == before


def test_predict_replaces_its_own_files_and_others_only_with_force(run_m, tmp_path, monkeypatch, capsys):
    aligned_pair(tmp_path / "D" / "test" / "1.png")
    aligned_pair(tmp_path / "D" / "test" / "2.png", seed=1)
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(run_m), "--split", "test"]
    out = predict.run(predict.parse_args(argv))
    assert out == Path("results/m/test")
    written = contents(out)
    assert sorted(written) == ["1.png", "2.png", "index.html", "metrics.json"] + [
        f"real_{side}/{n}.png" for side in "AB" for n in (1, 2)
    ]
    assert predict.run(predict.parse_args(argv)) == out  # its own files: replaced
    save_png(out / "real_B" / "2.png")  # someone else's file at one of its names
    theirs = (out / "real_B" / "2.png").read_bytes()
    code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and "holds results/m/test/real_B/2.png, which predict.py did not write" in line
    code, _, (line,) = run_main(predict.main, [*argv, "--output", out], tmp_path, monkeypatch, capsys)
    assert code == 2 and line == (
        "error: --output: results/m/test/real_B/2.png exists and was not written by predict.py; "
        "give --force to replace it, or a new name"
    )
    assert (out / "real_B" / "2.png").read_bytes() == theirs
    predict.run(predict.parse_args([*argv, "--force"]))
    assert (out / "real_B" / "2.png").read_bytes() != theirs
    assert predict.run(predict.parse_args(argv)) == out  # predict's own again


def test_files_predict_did_not_write_beside_its_outputs_stay_and_at_its_names_need_force(
    checkpoint, tmp_path, monkeypatch, capsys
):
    image = save_png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    save_png(out / "a.png", size=8)
    (out / "notes.txt").write_text("mine")
    argv = ["--checkpoint", checkpoint, image, "--output", out]
    code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and f"{out / 'a.png'} exists and was not written by predict.py" in line
    assert "--force" in line and Image.open(out / "a.png").size == (8, 8)
    predict.run(predict.parse_args([*map(str, argv), "--force"]))
    assert Image.open(out / "a.png").size == (32, 32) and (out / "notes.txt").read_text() == "mine"
    predict.run(predict.parse_args(list(map(str, argv))))  # its own file now


@pytest.mark.parametrize("name", [".", "", "/"])
def test_an_export_name_that_names_no_file_is_one_line(name, checkpoint, tmp_path, monkeypatch, capsys):
    code, err, (line,) = run_main(
        predict.main, ["--checkpoint", checkpoint, "--export", name], tmp_path, monkeypatch, capsys
    )
    assert (
        code == 2 and line == f"error: --export '{name}': names no file (empty, ., .. or /); give a file name"
    )
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["input", "output file", "export target", "checkpoint"])
def test_a_fifo_is_named_as_not_a_regular_file(case, checkpoint, tmp_path, monkeypatch, capsys):
    image = save_png(tmp_path / "a.png")
    fifo = {
        "input": tmp_path / "pipe.png",
        "output file": tmp_path / "out" / "a.png",
        "export target": tmp_path / "model.pt2",
        "checkpoint": tmp_path / "pipe.pt",
    }[case]
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    argv = {
        "input": ["--checkpoint", checkpoint, fifo],
        "output file": ["--checkpoint", checkpoint, image, "--output", tmp_path / "out", "--force"],
        "export target": ["--checkpoint", checkpoint, "--export", tmp_path / "model"],
        "checkpoint": ["--checkpoint", fifo, image],
    }[case]
    code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == (1 if case in ("input", "checkpoint") else 2)
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in line or (
        f"{fifo} is a FIFO (named pipe), not a regular file" in line
    ), line
    assert not (tmp_path / "results").exists() and fifo.is_fifo()
