"""Shared fixtures: the real facades data, and small synthetic aligned datasets."""

from __future__ import annotations

import collections
import functools
import http.server
import importlib
import io
import os
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from training.setup import setup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a flat set of modules, as nanoGPT

# Where the real facades set is looked for, in this order: PIX2PIX_FACADES, then data/facades
# (where `python train.py` downloads it), then the copy beside the checkout of the team's machines.
FACADES_PLACES = [Path(p) for p in [os.environ.get("PIX2PIX_FACADES")] if p] + [
    ROOT / "data" / "facades",
    ROOT.parent / "shared" / "datasets" / "facades",
]
FACADES_SKIP = "real facades data not found in"  # how the skip of a real-data test begins


def find_facades() -> Path | None:
    if os.environ.get("PIX2PIX_FACADES"):  # an explicit place is the only place
        return FACADES_PLACES[0] if (FACADES_PLACES[0] / "train").is_dir() else None
    return next((p for p in FACADES_PLACES if (p / "train").is_dir()), None)


@pytest.fixture(scope="session")
def facades() -> Path:
    """The real facades folder; in CI its absence is a failure, elsewhere the test is skipped and
    the run ends with a line saying how to run it."""
    found = find_facades()
    if found is None:
        places = ", ".join(str(p) for p in FACADES_PLACES)
        if os.environ.get("CI"):
            pytest.fail(f"the real facades data is required in CI; looked in {places}")
        pytest.skip(f"{FACADES_SKIP} {places}")
    return found


def skip_reason(report) -> str:
    """Why a test was skipped, from its report (pytest's longrepr: path, line, 'Skipped: why')."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def skip_summary(reports) -> list[str]:
    """One line per reason of the skipped tests' reports, with how many it skipped, most first;
    the real-data reason also says how to get the data."""
    counts = collections.Counter(skip_reason(report) for report in reports)
    lines = []
    for reason, count in counts.most_common():
        line = f"note: {count} skipped: {reason}"
        if reason.startswith(FACADES_SKIP):
            line += (
                "; put it in data/facades (`python train.py` downloads it there) "
                "or set PIX2PIX_FACADES=<folder>"
            )
        lines.append(line)
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    """The skipped tests counted by reason, one visible line each (also under -q): the real data,
    CUDA, a browser, an optional package..."""
    for line in skip_summary(terminalreporter.stats.get("skipped", [])):
        terminalreporter.write_line(line, yellow=True)


def write_pair(path: Path, a: np.ndarray, b: np.ndarray) -> None:
    """Save A|B side by side as one image file (the aligned format)."""
    Image.fromarray(np.concatenate([a, b], axis=1)).save(path)


@pytest.fixture
def synthetic_split(tmp_path: Path):
    """Make a split folder of `n` lossless PNG pairs whose B is 255 - A; returns the folder."""

    def make(n: int = 3, size: int = 40, name: str = "train") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            write_pair(folder / f"{i + 1}.png", a, 255 - a)
        return folder

    return make


def require(module: str):
    """Import an optional test tool; skipped locally when missing, a failure in CI (which installs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(
                f"{module} is required in CI (pip install -r requirements-test.txt -r requirements-eval.txt)"
            )
        pytest.skip(f"{module} not installed")


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's


def require_browser():
    """Selenium and Debian's Chromium + driver (selenium.webdriver returned): a failure in CI
    (which installs them), locally a skip."""
    require("gradio")
    webdriver = require("selenium.webdriver")
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is required in CI (apt-get install chromium chromium-driver)")
            pytest.skip(f"{tool} not installed (apt-get install chromium chromium-driver)")
    return webdriver


def require_fid() -> None:
    """The optional FID package (requirements-eval.txt), required in CI like `require`."""
    from evaluation import metrics

    try:
        metrics.inception_weights_path()  # finds the weights without importing the package
    except metrics.MissingPackageError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs requirements-eval.txt: {err}")
        pytest.skip(str(err))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def html_links(page: Path) -> list[str]:
    """Parse an HTML page and return its src/href links, checking each is a relative path to an
    existing file (so the folder can be copied elsewhere)."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), f"{page}: absolute link {link}"
        assert (page.parent / unquote(link)).is_file(), f"{page}: broken link {link}"
    return parser.links


# ---------------------------------------------------------------------------------------------
# Running the scripts, and tiny configs
# ---------------------------------------------------------------------------------------------


# The networks of tiny_config, as settings: what a command line of a tiny run passes too.
TINY_NETWORKS = dict(image_size=32, load_size=36, ngf=8, ndf=8)


def tiny_config(**overrides):
    """A config of small networks that trains in seconds: 32 px (a U-Net without dropout) unless
    overridden; tests about dropout or the default recipe's randomness use 64 px or more."""
    from config import Config

    settings = dict(**TINY_NETWORKS, precision="fp32", num_samples=1)
    return Config(**{**settings, **overrides})


def run_config(tmp_path: Path, data_root: Path, **overrides):
    """tiny_config of run "run" on `data_root`, writing under tmp_path (ck/ and res/)."""
    folders = dict(name="run", checkpoint_dir=str(tmp_path / "ck"), results_dir=str(tmp_path / "res"))
    return tiny_config(**{"data_root": str(data_root), **folders, **overrides})


def tiny_run(synthetic_split, tmp_path: Path, **overrides):
    """run_config on 4 synthetic training pairs (4 iterations an epoch, a loss point every 2) and
    2 val pairs, a snapshot every epoch."""
    root = synthetic_split(n=4, size=40).parent
    synthetic_split(n=2, size=40, name="val")
    return run_config(tmp_path, root, **{"epochs": 2, "log_every": 2, "save_every": 1, **overrides})


def write_tiny_checkpoint(path: Path, epoch: int = 1, **overrides) -> Path:
    """A freshly initialised tiny run's full checkpoint at `epoch` (tiny_config with `overrides`):
    what the predict, demo, export and error tests need is weights, not a trained model."""
    import dataclasses

    from training.checkpoint import full_checkpoint, save_checkpoint

    state = dataclasses.replace(setup(tiny_config(**overrides)), epoch=epoch)
    save_checkpoint(full_checkpoint(state), path)
    return path


def cli_args(cfg) -> list[str]:
    """Every field of a Config as --field=value, for running a script with exactly that config."""
    import dataclasses

    return [f"--{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)]


def cli_flags(**settings) -> list[str]:
    """Only the settings named, as a user types them: cli_flags(epochs=2) is ["--epochs", "2"]."""
    return [word for name, value in settings.items() for word in (f"--{name}", str(value))]


def run_main(main, argv: list, cwd: Path, monkeypatch, capsys) -> tuple[int, str, list[str]]:
    """A script's main() with argv, called in this process in cwd: (exit status, stderr, its
    `error:` lines). For error paths that stop before any work; run_script's interpreter and
    torch import cost 2 s a test (one subprocess test per script keeps the real process path)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["script.py", *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return stop.value.code, err, [line for line in err.splitlines() if line.startswith("error:")]


def python_command(script: str, *args) -> list[str]:
    """`python <script> args`: `script` is a file of the checkout (train.py, tools/fid_of_pngs.py),
    or an option of the interpreter passed as it is: "-m" (args: the module and its arguments) or
    "-c" (args: the code)."""
    first = script if script.startswith("-") else str(ROOT / script)
    return [sys.executable, first, *map(str, args)]


def run_script(script: str, *args, cwd, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """python <script> args (see python_command), as a user runs it, its output captured as text
    unless `stdout` or `stderr` say where it goes; the timeout turns a hang into a failure."""
    captured = {} if {"stdout", "stderr"} & kwargs.keys() else {"capture_output": True}
    options = {"text": True, **captured, **kwargs}
    return subprocess.run(python_command(script, *args), cwd=cwd, timeout=timeout, **options)


def start_script(script: str, *args, cwd, **kwargs) -> subprocess.Popen:
    """python <script> args started (see python_command), its stdout and stderr pipes of text
    unless `kwargs` say otherwise (stderr=subprocess.STDOUT, say)."""
    options = {"text": True, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen(python_command(script, *args), cwd=cwd, **options)


def wait_for(path: Path, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait until `path` exists; fail at once if `process` ends first, or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended before {path} appeared: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines of a script's stderr; a traceback in it fails the test."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "slow: end-to-end runs of several processes (deselect with -m 'not slow')"
    )


# --- Shared by the download and dataset-family tests ---


def build_archive(path, counts, name="facades"):
    """<name>.tar.gz with `counts` tiny aligned JPEGs per split, laid out as the official archives."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        for split, count in counts.items():
            for i in range(1, count + 1):
                info = tarfile.TarInfo(f"{name}/{split}/{i}.jpg")
                info.size = len(jpeg)
                tar.addfile(info, io.BytesIO(jpeg))


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on a free port of 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --- Shared by the resume tests ---


def latest(cfg) -> dict:
    return torch.load(Path(cfg.checkpoint_dir) / cfg.name / "latest.pt", weights_only=True)


def without_seconds(history: dict) -> dict:
    return {
        **history,
        "epochs": [{k: v for k, v in row.items() if k != "seconds"} for row in history["epochs"]],
    }


def assert_same_run(a: dict, b: dict) -> None:
    assert without_seconds(a["history"]) == without_seconds(b["history"])
    for net in ("generator", "discriminator"):
        for key, tensor in a[net].items():
            assert torch.equal(tensor, b[net][key]), f"{net} {key}"


def train_killed_at(cfg, cwd, at: int, match: str = "", when: str = "before"):
    """train.py ended as by kill -9 at the at-th write whose path contains `match`."""
    env = {**os.environ, "FAULT_AT": str(at), "FAULT_MATCH": match, "FAULT_WHEN": when}
    return run_script("tests/fault_injection.py", *cli_args(cfg), cwd=cwd, env=env)


def flip_a_byte_of_tensor_data(path: Path) -> None:
    """Invert one byte in the middle of the largest tensor record of a torch.save zip file."""
    with zipfile.ZipFile(path) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
    with open(path, "r+b") as f:
        f.seek(record.header_offset + 26)  # a local file header: 30 bytes, the name, the extra field
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        at = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))
