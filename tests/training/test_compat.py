"""Checkpoints written by an earlier version keep working: tests/fixtures/v1_tiny holds a tiny run's
latest.pt (64 px, ngf/ndf 4, two epochs of four synthetic pairs, fp32) made with main 35b1735,
before the networks became plain torch.nn and the speed code a layer of its own, together with
what that version generated from it (expected.pt: the inputs, translate() of one image and of an
odd size, the batched validation path, predict.py's PNG in bf16, and the resumed third epoch)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_main
from PIL import Image

import predict
import train
from evaluation.generate import translate, translate_pairs
from reporting.figures import to_pixels
from speed import accelerate
from training.checkpoint import load_generator
from utils import resolve_precision

FIXTURE = ROOT / "tests" / "fixtures" / "v1_tiny"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE / "expected.pt", weights_only=True)


def old_generator():
    """The fixture's generator as validation and predict.py run it in fp32 (accelerated)."""
    G, _ = load_generator(FIXTURE / "latest.pt", CPU)
    accelerate([(G, None)], CPU, torch.float32)
    return G


def same_to_rounding(actual: torch.Tensor, old: torch.Tensor) -> None:
    """Equal to fp32 rounding: bit for bit on the kind of CPU the fixture was made on, about 1e-7
    apart on an Intel Xeon with AMX, whose MKL and oneDNN kernels add in another order."""
    torch.testing.assert_close(actual, old, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eval_mode", [False, True], ids=["paper-mode", "eval-mode"])
def test_generation_is_the_old_versions(expected, eval_mode):
    G = old_generator()
    real_A = expected["real_A"]  # (3, 3, 64, 64)
    same_to_rounding(translate(G, real_A[:1], eval_mode, 0), expected[f"single_{eval_mode}"])
    same_to_rounding(translate(G, expected["odd"], eval_mode, 0), expected[f"odd_{eval_mode}"])  # 50x70
    pairs = [(a, a) for a in real_A]
    batched = torch.stack([f for _, f, _ in translate_pairs(G, pairs, eval_mode, 0, None, CPU)])
    same_to_rounding(batched, expected[f"items_{eval_mode}"])


def test_predict_reproduces_the_old_image(expected, tmp_path, monkeypatch, capsys):
    picture = ((expected["real_A"][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte()
    Image.fromarray(picture.numpy()).save(tmp_path / "in.png")
    argv = ["--checkpoint", FIXTURE / "latest.pt", tmp_path / "in.png", "--output", tmp_path / "out"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["predict.py", *map(str, argv)])
    predict.main()
    written = np.array(Image.open(tmp_path / "out" / "in.png"))
    if resolve_precision("auto", CPU) == torch.bfloat16:  # the fixture's PNG was made on such a CPU
        assert np.array_equal(written, expected["predict_png_bf16"].numpy())
    else:  # fp32: the PNG of the old translate()
        assert np.array_equal(written, to_pixels(expected["single_False"][0]))


def write_fixture_data(root: Path) -> None:
    """The four synthetic 64 px pairs per split the fixture run trained on (B = 255 - A)."""
    for split, seed in (("train", 1), ("val", 2)):
        (root / split).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(4):
            a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(root / split / f"{i + 1}.png")


def test_training_resumes_from_the_old_checkpoint(expected, tmp_path, monkeypatch, capsys):
    """The third epoch, resumed from the old latest.pt, is the epoch the old version trained."""
    write_fixture_data(tmp_path / "data")
    (tmp_path / "checkpoints" / "v1_tiny").mkdir(parents=True)
    shutil.copy(FIXTURE / "latest.pt", tmp_path / "checkpoints" / "v1_tiny" / "latest.pt")
    argv = (
        "--data_root data --dataset custom --image_size 64 --load_size 72 --ngf 4 --ndf 4 --epochs 3 "
        "--lr_decay_epochs 1 --max_images 4 --name v1_tiny --tensorboard false "
        "--precision fp32 --num_samples 2"
    ).split()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    train.main()
    out = capsys.readouterr().out
    assert "resuming" in out and "val_images 0 -> 20" in out  # the old version scored the whole split
    with open(tmp_path / "results" / "v1_tiny" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]  # the old epochs kept, one more trained
    names = ("G_GAN", "G_L1", "D_real", "D_fake", "val_L1", "val_PSNR", "val_SSIM")
    resumed = torch.tensor([float(rows[2][name]) for name in names], dtype=torch.float64)
    torch.testing.assert_close(resumed, expected["resumed_epoch_3"], rtol=1e-5, atol=0)


def test_an_old_checkpoint_with_a_bad_argument_still_fails_in_one_line(tmp_path, monkeypatch, capsys):
    status, _, errors = run_main(
        predict.main,
        ["--checkpoint", FIXTURE / "latest.pt", tmp_path / "missing.png"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert status != 0 and len(errors) == 1 and "missing.png" in errors[0]
