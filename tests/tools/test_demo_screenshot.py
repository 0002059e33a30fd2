"""tools/demo_screenshot.py: the README's demo screenshot made end to end (demo.py started, a test
label map loaded in headless Chromium, the page saved once its photo shows), and its one-line
errors."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, error_lines, require_browser, run_script, write_tiny_checkpoint
from PIL import Image

TOOL = "tools/demo_screenshot.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections closing on it do not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.slow  # the demo in a process of its own, driven in a headless browser
def test_the_screenshot_shows_the_examples_photo(synthetic_split, tmp_path):
    require_browser()
    data_root = synthetic_split(n=2, size=256, name="test").parent  # two 256 px pairs: test/1.png, test/2.png
    checkpoint = write_tiny_checkpoint(
        tmp_path / "best.pt", image_size=64, load_size=72, name="tiny", data_root="no/such/folder"
    )
    output, port = tmp_path / "shots" / "demo.png", free_port()
    # A temporary folder of a short path: Chromium's socket in it must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="shot-") as scratch:
        done = run_script(
            TOOL,
            *("--checkpoint", checkpoint, "--data_root", data_root, "--output", output),
            *("--example", 1, "--port", port, "--width", 1200, "--height", 880),
            cwd=tmp_path,  # the tool starts the demo in the repository root whatever the caller's folder
            env={**os.environ, "TMPDIR": scratch},
        )
        demo_leftovers = list(Path(scratch).glob("pix2pix-demo-*"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"wrote {output} (1200x880): test/2.png and the photo of best.pt, in ")
    assert port_is_free(port), "the demo is stopped once the screenshot is saved"
    # The demo's temporary folder is removed (Chromium's own may stay).
    assert demo_leftovers == [], "the demo stopped as on Ctrl-C"
    with Image.open(output) as shot:
        assert shot.size == (1200, 880)
        pixels = np.asarray(shot.convert("RGB")).astype(int)
    # The photo (256 px) sits at the top of the right-hand column, centred in it.
    photo = pixels[160:260, 820:920]
    assert photo.std() > 5 and len(np.unique(photo.reshape(-1, 3), axis=0)) > 500, "no photo shown"
    assert [p.name for p in output.parent.iterdir()] == ["demo.png"], "no temporary file is left"


def test_a_missing_checkpoint_is_one_line_and_no_file(tmp_path):
    output = tmp_path / "demo.png"
    done = run_script(TOOL, "--checkpoint", tmp_path / "nope.pt", "--output", output, cwd=ROOT)
    assert done.returncode == 1
    assert error_lines(done) == [f"error: --checkpoint {tmp_path / 'nope.pt'}: no such checkpoint file"]
    assert done.stderr.strip().count("\n") == 0 and done.stdout == ""
    assert not output.exists()
