"""predict.py on single images, folders and a paired split; its pages and its errors."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import html_links, require, require_fid, run_main, run_script, write_tiny_checkpoint
from PIL import Image

import predict
import utils
from evaluation.generate import translate
from reporting.split_report import metrics_line
from training import trained_generator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised tiny run's checkpoint (predict needs weights, not a trained model)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run") / "latest.pt", load_size=32, name="tiny")


@pytest.fixture
def test_split(facades, tmp_path) -> Path:
    """A 'test' split of three real facades pairs."""
    split = tmp_path / "data" / "test"
    split.mkdir(parents=True)
    for name, copy in (("1.jpg", "1.jpg"), ("2.jpg", "2.jpg"), ("3.jpg", "a b&c.jpg")):
        shutil.copy(facades / "test" / name, split / copy)  # a name that HTML and URLs must escape
    return split


def run(*argv) -> Path:
    return predict.run(predict.parse_args([str(a) for a in argv]))


def run_on_split(checkpoint: Path, split: Path, output: Path, *options) -> Path:
    """predict.py on the paired `split` folder (its name under its parent as --data_root)."""
    split_args = ["--split", split.name, "--data_root", split.parent]
    return run("--checkpoint", checkpoint, *split_args, *options, "--output", output)


def save_png(path: Path, height: int, width: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(height * width)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_single_images_of_any_size_keep_their_size(checkpoint, tmp_path):
    save_png(tmp_path / "wide.png", 400, 600)  # 600x400: not multiples of the generator's 32
    save_png(tmp_path / "gray.png", 33, 32, mode="L")  # grayscale input is converted to RGB
    out = run(
        "--checkpoint", checkpoint, tmp_path / "wide.png", tmp_path / "gray.png", "--output", tmp_path / "out"
    )
    with Image.open(out / "wide.png") as wide, Image.open(out / "gray.png") as gray:
        assert wide.size == (600, 400) and gray.size == (32, 33)
    resized = run(
        "--checkpoint", checkpoint, tmp_path / "wide.png", "--resize", "--output", tmp_path / "resized"
    )
    with Image.open(resized / "wide.png") as image:
        assert image.size == (600, 400)


def test_translate_is_the_plain_generator_without_padding_and_crops_back_with_it(checkpoint, tmp_path):
    G, _, _ = trained_generator.load_run(checkpoint, torch.device("cpu"))
    x = torch.rand(1, 3, 64, 32) * 2 - 1
    with torch.no_grad():
        expected = G.eval()(x)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    assert torch.equal(translate(G, x, True, 0), expected)  # a multiple of 32: no padding at all
    padded = translate(G, torch.cat([x, x[..., :5, :]], dim=-2), True, 0)  # 69 rows -> pad to 96
    assert padded.shape == (1, 3, 69, 32) and torch.isfinite(padded).all()
    assert not torch.equal(padded[..., :64, :], expected), "the extra rows are seen by the generator"
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items()), "translate leaves G as it was"


def test_folder_of_inputs(checkpoint, tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        save_png(folder / name, 32, 32)
    (folder / "notes.txt").write_text("not an image")
    out = run("--checkpoint", checkpoint, folder, "--output", tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_split_writes_images_metrics_and_gallery(checkpoint, test_split, tmp_path, capsys):
    skimage_metrics = require("skimage.metrics")
    require_fid()
    out = run_on_split(checkpoint, test_split, tmp_path / "out", "--fid")
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 3 and report["epoch"] == 1 and report["eval_mode"] is False
    assert [item["name"] for item in report["per_image"]] == ["1", "2", "a b&c"]
    assert report["mean"]["FID_images"] == 3 and report["mean"]["FID"] > 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "FID" in line]
    assert f"FID {report['mean']['FID']:.1f} over 3 images" in line and "(means of 3 images)" in line
    # The numbers describe the PNG files as written.
    for item in report["per_image"]:
        fake = np.array(Image.open(out / f"{item['name']}.png").convert("RGB"))
        real = np.array(Image.open(out / "real_B" / f"{item['name']}.png").convert("RGB"))
        assert fake.shape == (32, 32, 3)
        assert abs(skimage_metrics.peak_signal_noise_ratio(real, fake, data_range=255) - item["PSNR"]) < 1e-3
    assert report["mean"]["L1"] == pytest.approx(np.mean([i["L1"] for i in report["per_image"]]))
    links = html_links(out / "index.html")
    assert len(links) == 9 and "real_A/1.png" in links and "real_B/a%20b%26c.png" in links
    # tools/fid_of_pngs.py: the same FID and KID from the PNG files alone (a GPU run's, say).
    scored = run_script("tools/fid_of_pngs.py", out, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    again = json.loads(scored.stdout)
    for key in ("FID", "KID", "KID_std", "FID_images"):
        assert again[key] == pytest.approx(report["mean"][key], rel=1e-6, abs=1e-12), key  # float rounding
    (out / "real_B" / "2.png").unlink()
    scored = run_script("tools/fid_of_pngs.py", out, cwd=tmp_path)
    assert scored.returncode == 1 and scored.stderr.strip().splitlines() == [
        f"error: {out / 'real_B' / '2.png'}: no such file "
        "(each generated PNG needs its target of the same name)"
    ]


def test_eval_mode_is_the_runs_unless_overridden(checkpoint, test_split, tmp_path):
    out = run_on_split(checkpoint, test_split, tmp_path / "out", "--eval_mode", "true")
    assert json.loads((out / "metrics.json").read_text())["eval_mode"] is True


@pytest.mark.parametrize(
    "case", ["missing checkpoint", "not a checkpoint", "no images", "no such input", "no split"]
)
def test_errors_are_one_line(case, checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    args = {
        "missing checkpoint": ["--checkpoint", tmp_path / "nope.pt", tmp_path / "empty"],
        "not a checkpoint": ["--checkpoint", tmp_path / "junk.pt", tmp_path / "empty"],
        "no images": ["--checkpoint", checkpoint, tmp_path / "empty"],
        "no such input": ["--checkpoint", checkpoint, tmp_path / "nothing.png"],
        "no split": ["--checkpoint", checkpoint, "--split", "test", "--data_root", tmp_path],
    }[case]
    expected = {
        "missing checkpoint": "nope.pt: no such checkpoint file",
        "not a checkpoint": "junk.pt: not a loadable checkpoint",
        "no images": "empty: no images in this folder",
        "no such input": "nothing.png: no such file or folder",
        "no split": "test: no such split folder",
    }[case]
    code, err, _ = run_main(predict.main, args, tmp_path, monkeypatch, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "results").exists()  # nothing written


def test_inputs_and_split_together_are_refused(checkpoint, tmp_path):
    result = run_script("predict.py", "--checkpoint", checkpoint, "--split", "test", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "one of them" in result.stderr.splitlines()[-1]


def test_the_console_line_of_a_split_says_over_how_many_images():
    report = {"images": 106, "mean": {"L1": 0.17684, "PSNR": 13.402, "SSIM": 0.23461}}
    line = "L1 0.1768  PSNR 13.40 dB  SSIM 0.2346 (means of 106 images)"
    assert metrics_line(report) == line
    report["mean"].update(FID=123.456, KID=0.01234, KID_std=0.00211, FID_images=106)
    assert metrics_line(report) == line + "  FID 123.5 over 106 images  KID 0.01234 ± 0.0021"
    report["mean"].update(FID=132.98)
    assert "  FID 133.0 over 106 images" in metrics_line(report)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal(checkpoint, tmp_path, monkeypatch, capsys):
    """Output to a file or a pipe gets no bar (its frames would fill the log); a terminal does."""
    for i in range(3):
        save_png(tmp_path / f"{i}.png", 32, 32)
    run("--checkpoint", checkpoint, *(tmp_path / f"{i}.png" for i in range(3)), "--output", tmp_path / "out")
    err = capsys.readouterr().err
    assert "translating" not in err and "\r" not in err
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert list(utils.progress(range(3), desc="translating")) == [0, 1, 2]
    assert "translating" in sys.stderr.getvalue()
