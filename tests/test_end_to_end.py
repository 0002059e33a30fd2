"""`python train.py` as a user runs it, on a few real facades images."""

import csv
import json
import os

import pytest
import torch
from conftest import ROOT, TINY_NETWORKS, cli_flags, html_links, run_script
from PIL import Image

from reporting.figures import HEADER_HEIGHT


@pytest.mark.slow
def test_train_py_writes_every_per_epoch_file(facades, tmp_path):
    args = cli_flags(
        data_root=facades, epochs=2, max_images=4, **TINY_NETWORKS, num_samples=3, save_every=2,
        name="e2e", checkpoint_dir=tmp_path / "checkpoints", results_dir=tmp_path / "results",
    )  # fmt: skip
    result = run_script("train.py", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout + result.stderr

    results, checkpoints = tmp_path / "results" / "e2e", tmp_path / "checkpoints" / "e2e"
    for epoch in (1, 2):
        with Image.open(results / "samples" / f"epoch_{epoch:03d}.png") as grid:
            grid.verify()
        with Image.open(results / "samples" / f"epoch_{epoch:03d}.png") as grid:
            # 3 rows (input | generated | target) of 32 px images with 2 px padding, under the captions
            assert grid.size == (3 * 34 + 2, HEADER_HEIGHT + 3 * 34 + 2)
    with Image.open(results / "loss.png") as plot:
        plot.verify()
    with open(results / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"G_GAN", "G_L1", "D_real", "D_fake", "lr", "seconds"} <= set(rows[0])
    for row in rows:  # validation on the 4 val images every epoch
        assert (
            0 < float(row["val_L1"]) < 1
            and 0 < float(row["val_PSNR"]) < 60
            and -1 < float(row["val_SSIM"]) < 1
        )
    with Image.open(results / "metrics.png") as plot:
        plot.verify()
    links = html_links(results / "index.html")
    assert links[:2] == ["loss.png", "metrics.png"]
    assert links[2:] == ["samples/epoch_002.png", "samples/epoch_001.png"]  # newest first
    best = min(rows, key=lambda row: float(row["val_L1"]))
    assert torch.load(checkpoints / "best.pt", weights_only=True)["epoch"] == int(best["epoch"])
    assert json.loads((results / "config.json").read_text())["config"]["image_size"] == 32
    assert "epoch 2/2" in (results / "train.log").read_text()

    checkpoint = torch.load(checkpoints / "latest.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and (checkpoints / "epoch_002.pt").exists()
    assert not (checkpoints / "epoch_001.pt").exists()
    assert {"generator", "discriminator", "opt_G", "opt_D", "sched_G", "sched_D", "config", "history"} <= set(
        checkpoint
    )

    # The generator can be rebuilt from the checkpoint alone.
    from generator import UNetGenerator

    G = UNetGenerator(**checkpoint["generator_kwargs"])
    G.load_state_dict(checkpoint["generator"])
    assert G(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_a_run_without_the_real_data_says_so_in_one_visible_line(tmp_path):
    """Outside CI, the real-data tests skip where no facades set is found, and the run ends with a
    line (also under -q) saying how to enable them."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PIX2PIX_FACADES"] = str(tmp_path / "nowhere")
    test = "tests/files/test_dataset.py::test_real_facades_pair"
    result = run_script("-m", "pytest", "-q", "-p", "no:cacheprovider", test, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert line.startswith("note: 1 skipped: real facades data not found in ") and line.endswith(
        "PIX2PIX_FACADES=<folder>"
    )
