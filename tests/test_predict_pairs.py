"""predict.py given an A|B pair file of the run's aligned dataset: the input half is translated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import write_pair
from PIL import Image

import predict
from config import Config
from training.checkpoint import full_checkpoint, save_checkpoint
from training.setup import setup


@pytest.fixture(scope="module")
def run_of(tmp_path_factory):
    """A tiny run's checkpoint with the given data_layout and direction."""

    def make(data_layout: str = "aligned", direction: str = "BtoA") -> Path:
        cfg = Config(
            image_size=32,
            load_size=32,
            ngf=8,
            ndf=8,
            precision="fp32",
            data_layout=data_layout,
            direction=direction,
        )
        path = tmp_path_factory.mktemp("run") / "latest.pt"
        save_checkpoint(full_checkpoint(dataclasses.replace(setup(cfg), epoch=1)), path)
        return path

    return make


def pair_file(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    write_pair(folder / "pair.png", a, b)
    return folder / "pair.png", a, b


def translated(out: Path) -> np.ndarray:
    with Image.open(out) as image:
        return np.array(image)


def alone(checkpoint: Path, half: np.ndarray, folder: Path, *options: str) -> np.ndarray:
    """What predict.py writes for `half` given as an image file of its own."""
    Image.fromarray(half).save(folder / "half.png")
    predict.run(
        predict.parse_args(
            [
                "--checkpoint",
                str(checkpoint),
                str(folder / "half.png"),
                "--output",
                str(folder / "alone"),
                *options,
            ]
        )
    )
    return translated(folder / "alone" / "half.png")


@pytest.mark.parametrize("direction,side", [("BtoA", 1), ("AtoB", 0)])
def test_the_input_half_is_translated_with_a_line_saying_so(direction, side, run_of, tmp_path, capsys):
    checkpoint = run_of(direction=direction)
    path, *halves = pair_file(tmp_path)
    out = predict.run(
        predict.parse_args(["--checkpoint", str(checkpoint), str(path), "--output", str(tmp_path / "out")])
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "pair.png" in line]
    assert len(lines) == 1 and f"translating its {'B (right)' if side else 'A (left)'} half" in lines[0]
    result = translated(out / "pair.png")
    assert result.shape == (32, 32, 3)  # the half's size
    np.testing.assert_array_equal(result, alone(checkpoint, halves[side], tmp_path))


def test_direction_option_and_whole(run_of, tmp_path, capsys):
    checkpoint = run_of(direction="BtoA")
    path, a, _ = pair_file(tmp_path)
    argv = ["--checkpoint", str(checkpoint), str(path)]
    out = predict.run(predict.parse_args([*argv, "--direction", "AtoB", "--output", str(tmp_path / "AtoB")]))
    np.testing.assert_array_equal(translated(out / "pair.png"), alone(checkpoint, a, tmp_path))
    capsys.readouterr()
    out = predict.run(predict.parse_args([*argv, "--whole", "--output", str(tmp_path / "whole")]))
    assert translated(out / "pair.png").shape == (32, 64, 3)
    assert "A|B pair" not in capsys.readouterr().out


def test_paired_folders_runs_and_other_shapes_keep_inputs_whole(run_of, tmp_path, capsys):
    path, _, _ = pair_file(tmp_path)
    out = predict.run(
        predict.parse_args(
            ["--checkpoint", str(run_of("paired_folders")), str(path), "--output", str(tmp_path / "o")]
        )
    )
    assert translated(out / "pair.png").shape == (32, 64, 3)
    Image.fromarray(np.zeros((32, 63, 3), dtype=np.uint8)).save(tmp_path / "wide.png")  # not 2:1
    out = predict.run(
        predict.parse_args(
            ["--checkpoint", str(run_of()), str(tmp_path / "wide.png"), "--output", str(tmp_path / "w")]
        )
    )
    assert translated(out / "wide.png").shape == (32, 63, 3)
    assert "A|B pair" not in capsys.readouterr().out
