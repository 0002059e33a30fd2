"""demo.py: the translate path it shares with predict.py, the facades palette, its errors, and the
app itself driven in headless Chromium (Debian's chromium + chromium-driver, through Selenium)."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CHROMEDRIVER,
    CHROMIUM,
    ROOT,
    require,
    require_browser,
    start_script,
    write_tiny_checkpoint,
)
from PIL import Image

import demo
import predict
from demo_app import page as demo_app
from demo_app import palette as facades_palette
from evaluation.generate import translate_image
from files.images import read_image
from training import trained_generator


def tiny_checkpoint(path: Path, **config) -> Path:
    """A tiny 64 px run: the demo's dropout and palette need more than the default 32 px."""
    return write_tiny_checkpoint(path, image_size=64, load_size=72, **config)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny facades run whose data is not on this machine (the demo then offers the blank only)."""
    return tiny_checkpoint(
        tmp_path_factory.mktemp("run") / "best.pt", data_root="no/such/folder", name="tiny"
    )


@pytest.fixture(scope="module")
def facades_checkpoint(facades, tmp_path_factory) -> Path:
    """A tiny facades run whose data_root is the real facades set (its val/test maps are the examples)."""
    return tiny_checkpoint(
        tmp_path_factory.mktemp("facades") / "best.pt", data_root=str(facades), name="tiny"
    )


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint of a 'custom' paired_folders run (A -> B) and its data folder: val/A, val/B."""
    root = tmp_path_factory.mktemp("custom")
    rng = np.random.default_rng(1)
    for side in ("A", "B"):
        (root / "val" / side).mkdir(parents=True)
        for name in ("p1", "p2"):
            Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(
                root / "val" / side / f"{name}.png"
            )
    checkpoint = tiny_checkpoint(
        root / "best.pt", dataset="custom", data_root=str(root), data_layout="paired_folders", name="shoes"
    )
    return checkpoint, root


# ---------------------------------------------------------------------------------------------
# The translate function, on its own
# ---------------------------------------------------------------------------------------------


def test_translate_image_is_predicts_file_path(checkpoint, tmp_path):
    """evaluation.translate_image on a decoded image is exactly what predict.py writes for the file,
    at any size."""
    G, cfg, _ = trained_generator.load_run(checkpoint, torch.device("cpu"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)  # 90x70: not multiples of the generator's 64
    Image.fromarray(image).save(tmp_path / "in.png")
    real_A = torch.from_numpy(image).permute(2, 0, 1)
    for resize in (False, True):
        resize_to = cfg.image_size if resize else None
        from_tensor = translate_image(
            G, real_A, cfg.eval_mode, cfg.seed, torch.device("cpu"), None, resize_to
        )
        predict.predict_files(
            G, cfg, [tmp_path / "in.png"], tmp_path / "out", torch.device("cpu"), None, resize
        )
        with Image.open(tmp_path / "out" / "in.png") as written:
            from_file = torch.from_numpy(np.array(written)).permute(2, 0, 1)
        assert from_tensor.shape == (3, 70, 90)
        # the 8-bit levels save_image writes: (x + 1) / 2 * 255 + 0.5, clamped, truncated
        assert torch.equal(((from_tensor + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8), from_file)
        assert from_tensor.min() >= -1 and from_tensor.max() <= 1


def test_demo_translate_keeps_size_and_follows_the_seed(checkpoint):
    model = demo.load_model(checkpoint, "cpu")
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    out = model.translate(image, 0, False)
    assert out.shape == (70, 90, 3) and out.dtype == np.uint8
    cpu = torch.device("cpu")
    G, cfg, _ = trained_generator.load_run(checkpoint, cpu)
    amp = trained_generator.inference_precision(G, cpu)  # as predict.run translates
    direct = translate_image(G, torch.from_numpy(image).permute(2, 0, 1), cfg.eval_mode, 0, cpu, amp)
    assert np.array_equal(out, direct.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    assert np.array_equal(model.translate(image, 0, False), out)  # a seed gives one image ...
    assert not np.array_equal(model.translate(image, 1, False), out)  # ... and dropout varies with it
    assert model.translate(image, 0, True).shape == (70, 90, 3)  # --resize: back to the input's size


def test_uploads_are_read_and_translated_as_predict_does(checkpoint, tmp_path):
    """An upload (here RGBA, 45x30) through the demo equals predict.py on that file."""
    rgba = np.random.default_rng(3).integers(0, 256, (30, 45, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "upload.png")
    model = demo.load_model(checkpoint, "cpu")
    image = demo.to_rgb(model.read(tmp_path / "upload.png"))
    cpu = torch.device("cpu")
    G, cfg, _ = trained_generator.load_run(checkpoint, cpu)
    amp = trained_generator.inference_precision(G, cpu)
    upload = read_image(tmp_path / "upload.png", cfg.input_nc)
    expected = translate_image(G, upload, cfg.eval_mode, cfg.seed, cpu, amp)
    assert np.array_equal(
        model.translate(image, cfg.seed, False),
        expected.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy(),
    )
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        model.read(tmp_path / "notes.png")


def test_gray_input_run_takes_rgb_canvas(tmp_path):
    """A 1-channel run gets the editor's RGB image converted as predict converts a file."""
    model = demo.load_model(
        tiny_checkpoint(tmp_path / "gray.pt", input_nc=1, output_nc=1, dataset="custom"), "cpu"
    )
    out = model.translate(np.full((40, 50, 3), 128, np.uint8), 0, False)
    assert out.shape == (40, 50, 1)
    assert demo.to_rgb(out).shape == (40, 50, 3)


# ---------------------------------------------------------------------------------------------
# Palette, starting points, examples
# ---------------------------------------------------------------------------------------------


def test_palette_is_derived_from_the_label_maps(facades):
    """The constants are what k-means finds in the training label maps (here on a sample of them)."""
    colours = facades_palette.derive_palette(
        facades_palette.training_label_maps(facades, limit=20), samples=50_000, restarts=2
    )
    expected = np.array([rgb for _, rgb in facades_palette.FACADES_CLASSES])
    assert colours.shape == (12, 3)
    assert np.abs(colours.astype(int) - expected).max() <= 3
    names = [name for name, _ in facades_palette.FACADES_CLASSES]
    assert names == [
        "background",
        "facade",
        "window",
        "door",
        "cornice",
        "sill",
        "balcony",
        "blind",
        "deco",
        "molding",
        "pillar",
        "shop",
    ]


def test_facades_starting_points_are_a_blank_and_the_label_maps(facades, facades_checkpoint):
    model = demo.load_model(facades_checkpoint, "cpu")
    starts = demo.starting_points(model.config, demo.example_inputs(model.config, facades))
    names = list(starts)
    assert names[0] == demo.BLANK and "val/1.jpg" in names and "test/1.jpg" in names
    assert len(names) == 1 + 100 + 106  # the val and test splits, not train
    blank = starts[demo.BLANK]()
    colours = dict(facades_palette.FACADES_CLASSES)
    assert blank.shape == (256, 256, 3)
    assert tuple(blank[-1, -1]) == colours["facade"] and tuple(blank[0, 0]) == colours["background"]
    with Image.open(facades / "val" / "1.jpg") as pair:
        label_map = np.asarray(pair.convert("RGB"))[:, 256:]  # BtoA: the B half is the input
    assert np.array_equal(starts["val/1.jpg"](), label_map)


def test_a_run_whose_data_is_elsewhere_offers_the_blank(checkpoint):
    model = demo.load_model(checkpoint, "cpu")
    examples = demo.example_inputs(model.config, Path(model.config["data_root"]))
    assert examples == {} and list(demo.starting_points(model.config, examples)) == [demo.BLANK]


def test_other_runs_offer_their_inputs_and_no_blank(custom_run):
    checkpoint, root = custom_run
    model = demo.load_model(checkpoint, "cpu")
    starts = demo.starting_points(model.config, demo.example_inputs(model.config, root))
    assert list(starts) == ["val/p1.png", "val/p2.png"]  # AtoB: the A side
    with Image.open(root / "val" / "A" / "p1.png") as image:
        assert np.array_equal(starts["val/p1.png"](), np.asarray(image))
    assert demo.example_inputs(model.config, root / "missing") == {}  # no data here: upload only


# ---------------------------------------------------------------------------------------------
# Errors: one line each, before anything starts
# ---------------------------------------------------------------------------------------------


def run_main(argv: list, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        demo.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return exit_info.value.code, err


def assert_one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in parts:
        assert part in lines[0], err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_and_invalid_checkpoints(tmp_path, capsys):
    require("gradio")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    for name, why in (
        ("nope.pt", "no such checkpoint file"),
        ("junk.pt", "not a loadable checkpoint"),
        ("other.pt", "not a pix2pix checkpoint"),
    ):
        code, err = run_main(["--checkpoint", tmp_path / name, "--port", free_port()], capsys)
        assert code != 0
        assert_one_error_line(err, name, why)


def test_gradio_not_installed(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    code, err = run_main(["--checkpoint", checkpoint], capsys)
    assert code != 0
    assert_one_error_line(err, "gradio is not installed", "requirements-demo.txt")


def test_port_in_use(checkpoint, capsys):
    require("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_main(["--checkpoint", checkpoint, "--port", port], capsys)
    assert code != 0
    assert_one_error_line(err, f"--port {port}", "in use")


def test_bad_settings(checkpoint, tmp_path, capsys):
    code, err = run_main(["--checkpoint", checkpoint, "--port", "70000"], capsys)
    assert code == 2
    assert_one_error_line(err, "--port", "70000", "not a port number")
    code, err = run_main(["--checkpoint", checkpoint, "--live", "sometimes"], capsys)
    assert code == 2
    assert_one_error_line(err, "--live", "sometimes")
    require("gradio")
    port = ["--port", free_port()]
    for args, parts in (
        (["--host", "no-such-host.invalid"], ["--host no-such-host.invalid"]),
        (["--data_root", tmp_path / "nowhere"], ["--data_root", "nowhere: no such folder"]),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], ["--device"]),
        (["--device", "abacus"], ["--device abacus: not a device name"]),
    ):
        code, err = run_main(["--checkpoint", checkpoint, *port, *args], capsys)
        assert code != 0
        assert_one_error_line(err, *parts)


def test_palette_script_needs_the_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        facades_palette.main(["--data_root", str(tmp_path)])
    assert exit_info.value.code != 0
    assert_one_error_line(capsys.readouterr().err, str(tmp_path / "train"), "no such folder")


def test_seeds_out_of_range_get_a_message_not_a_console_error(checkpoint, tmp_path):
    """The seed box takes what --seed takes, [0, 2^32): beyond it, the page says so (gr.Error) instead
    of torch raising in the console. Driven through the app's own event, without a browser."""
    gr = require("gradio")
    model = demo.load_model(checkpoint, "cpu")
    starts = demo.starting_points(model.config, {})
    app = demo.build_app(model, starts, next(iter(starts.values()))(), 0.1, False)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "canvas.png")
    canvas = {
        "background": str(tmp_path / "canvas.png"),
        "layers": [],
        "composite": str(tmp_path / "canvas.png"),
    }
    assert Path(app(canvas, 2**32 - 1, False, api_name="generate")).is_file()  # the largest seed works
    for seed in (2**32, 2**64, -1):
        with pytest.raises(gr.Error, match=re.escape(str(seed))):
            app(canvas, seed, False, api_name="generate")
    for seed in (2**64, -1, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="whole number from 0 to 4294967295"):
            demo_app.dropout_seed(seed)
    assert demo_app.dropout_seed(None) == 0 and demo_app.dropout_seed(7.0) == 7


def event_handler(app, name: str):
    """The function behind one of the app's events (stateful events cannot be called as app(...))."""
    return next(fn.fn for fn in app.fns.values() if fn.name == name)


def demo_app_of(checkpoint):
    model = demo.load_model(checkpoint, "cpu")
    starts = demo.starting_points(model.config, {})
    return model, demo.build_app(model, starts, next(iter(starts.values()))(), 0.1, False)


def test_a_huge_upload_is_refused_from_its_header(checkpoint, tmp_path, monkeypatch):
    """A 6000x6000 PNG (35 KB of zeros) would take minutes and gigabytes: refused before decoding,
    one message on the page that names the file and the limit, no console traceback."""
    gr = require("gradio")
    _, app = demo_app_of(checkpoint)
    load_upload = event_handler(app, "load_upload")
    Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(tmp_path / "huge.png")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pytest.raises(gr.Error) as err:
        load_upload(str(tmp_path / "huge.png"))
    assert not decoded, "refused from the header, before the pixels are decoded"
    assert err.value.print_exception is False
    assert err.value.message == (
        "huge.png: 6000x6000 pixels is larger than the demo translates (at most 4096 px a side and "
        "4.2 megapixels, e.g. 2048x2048); make it smaller first"
    )
    Image.fromarray(np.zeros((10, 5000), np.uint8)).save(tmp_path / "long.png")  # few pixels, a long side
    with pytest.raises(gr.Error, match="10 pixels is larger"):
        load_upload(str(tmp_path / "long.png"))
    monkeypatch.undo()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "fine.png")
    image, origin = load_upload(str(tmp_path / "fine.png"))
    assert image.shape == origin.shape == (30, 40, 3)
    size = (tmp_path / "fine.png").stat().st_size
    monkeypatch.setattr(demo_app, "MAX_UPLOAD_BYTES", size - 1)  # and by its bytes, before anything
    with pytest.raises(
        gr.Error, match=f"fine.png: {size:,} bytes is larger than the demo takes .at most {size - 1:,} bytes"
    ):
        load_upload(str(tmp_path / "fine.png"))


def test_errors_on_the_page_print_no_console_traceback(checkpoint, tmp_path, capsys, monkeypatch):
    """Every error the page shows is a gr.Error that Gradio does not print; a bug is one line on
    the page and in the console, its traceback in a file it names."""
    gr = require("gradio")
    model, app = demo_app_of(checkpoint)
    generate = event_handler(app, "generate")
    canvas = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(gr.Error) as err:
        generate(canvas, -1, False)
    assert err.value.print_exception is False and "seed -1" in err.value.message

    def bug(image, seed, resize):
        raise RuntimeError("a bug")

    monkeypatch.setattr(model, "translate", bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(gr.Error) as err:
        generate(canvas, 0, False)
    assert err.value.print_exception is False
    assert err.value.message.startswith("unexpected RuntimeError in tests/demo_app/test_demo.py:")
    (line,) = capsys.readouterr().err.splitlines()
    saved = Path(line.split("the full traceback is in ")[1])
    assert line == f"error: {err.value.message}" and "RuntimeError: a bug" in saved.read_text()
    with pytest.raises(gr.Error, match="the input: 5000x10 pixels is larger"):
        generate(np.zeros((10, 5000, 3), np.uint8), 0, False)


def test_a_bug_before_the_demo_starts_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "prepare", lambda args: {}["app"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err = run_main(["--checkpoint", checkpoint], capsys)
    assert code == 1
    assert_one_error_line(
        err, "unexpected KeyError in tests/demo_app/test_demo.py:", "'app'; the full traceback"
    )
    assert [p.name.startswith("pix2pix-error-") for p in tmp_path.iterdir()] == [True], (
        "the demo's folder is gone"
    )


def test_sigterm_while_the_generator_loads_removes_the_demos_folder(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """A service manager may stop the demo before it serves: its folder goes as after Ctrl-C."""
    seen = []

    def loading(args):
        seen.extend(tmp_path.iterdir())  # the demo's folder exists while the generator loads
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this

    monkeypatch.setattr(demo, "prepare", loading)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err = run_main(["--checkpoint", checkpoint], capsys)
    assert code == 130 and err.startswith("error: interrupted"), err
    assert [p.name.startswith("pix2pix-demo-") for p in seen] == [True]
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back


def test_the_intro_counts_epochs_as_a_person_says_them():
    config = {
        "name": "facades",
        "dataset": "facades",
        "direction": "BtoA",
        "image_size": 256,
        "eval_mode": False,
    }
    for epoch, said in ((1, "trained 1 epoch at 256 px"), (200, "trained 200 epochs at 256 px")):
        model = types.SimpleNamespace(config=config, epoch=epoch)
        assert said in demo_app.intro_text(model, 0.05, (256, 256), live=True)


def test_the_demo_serves_errors_quietly_and_removes_its_files(checkpoint, tmp_path):
    """Through the running server: an upload too large is the page's message with no traceback in
    the console, and everything Gradio stored (uploads included) is removed when the demo stops
    (SIGTERM, as a service manager stops it)."""
    require("gradio")
    client_module = require("gradio_client")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "GRADIO_ANALYTICS_ENABLED": "False"}
    port = free_port()
    args = ["--checkpoint", checkpoint, "--port", port, "--live", "off"]
    process = start_script("demo.py", *args, cwd=ROOT, env=env, stderr=subprocess.STDOUT)
    try:
        assert process.stdout.readline().startswith("demo running at "), process.communicate(timeout=30)[0]
        (folder,) = (tmp_path / "tmp").iterdir()
        Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(tmp_path / "huge.png")
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="huge.png: 6000x6000 pixels is larger than the demo translates"):
            client.predict(client_module.handle_file(str(tmp_path / "huge.png")), api_name="/load_upload")
        assert any(p.name == "huge.png" for p in folder.rglob("*")), "the upload is in the demo's folder"
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0 and "Traceback" not in output, output
    assert not folder.exists() and list((tmp_path / "tmp").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The app in a real browser
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    webdriver = require_browser()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)  # --no-sandbox: CI runs as root, where Chromium's sandbox refuses
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Server:
    """`python demo.py ...` on a free port; its address once it says it is running."""

    def __init__(self, *args) -> None:
        self.port = free_port()
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        # --live on: the photo follows each stroke however busy the machine is while it times a generation.
        args = [*args, "--port", self.port, "--live", "on"]
        self.process = start_script("demo.py", *args, cwd=ROOT, env=env, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True
        ).start()

    def url(self, timeout: float = 90) -> str:
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            if line.startswith("demo running at "):
                return line.split()[3]
        pytest.fail(f"demo did not start: {''.join(seen)}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def output_src(driver) -> str | None:
    # One script call: Gradio replaces the <img> as images arrive, so a found element can go stale.
    return driver.execute_script(
        "const image = document.querySelector('#output img'); return image ? image.src : null;"
    )


def wait_for_new_output(driver, old: str | None, timeout: float = 30) -> str:
    """The src of the generated image once it differs from `old` (Gradio names files by content)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        src = output_src(driver)
        if src and src != old:
            return src
        time.sleep(0.2)
    pytest.fail(f"no new generated image within {timeout} s")


def fetch_image(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def choose_start(driver, name: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("css selector", "#start input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(name, Keys.ENTER)


def upload_file(driver, path: Path) -> None:
    """Give `path` to the "upload an input image" button, as choosing it in the file dialog does."""
    field = driver.execute_script(  # the button's own file input, not the editor's
        "return [...document.querySelectorAll('input[type=file]')].find(i => !i.closest('#editor'));"
    )
    field.send_keys(str(path))


def paint_stroke(driver, dy: int = 0) -> None:
    """A diagonal stroke (with the tool in use), dy pixels below the middle of the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", "#editor .pixi-target canvas")
    (
        ActionChains(driver)
        .move_to_element_with_offset(canvas, -50, dy - 50)
        .click_and_hold()
        .move_by_offset(50, 20)
        .move_by_offset(50, 40)
        .release()
        .perform()
    )


def assert_photo(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.std() > 1 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # not blank


def pick_class(driver, name: str) -> None:
    next(
        label
        for label in driver.find_elements("css selector", "#classes label")
        if label.text.strip() == name
    ).click()
    time.sleep(0.5)  # the page selects the brush and the class's swatch in a few steps


def canvas_pixels(driver, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the canvas on screen have exactly this colour."""
    png = driver.find_element("css selector", "#editor .pixi-target canvas").screenshot_as_png
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return int((shown == np.array(rgb)).all(axis=-1).sum())


@pytest.mark.slow  # a headless browser drives the app
def test_facades_demo_in_a_browser(browser, facades, facades_checkpoint):
    colours = dict(facades_palette.FACADES_CLASSES)
    server = Server("--checkpoint", facades_checkpoint)
    try:
        url = server.url()
        assert url == f"http://127.0.0.1:{server.port}"
        browser.get(url)
        first = wait_for_new_output(browser, None)  # the blank facade's photo, made on load
        assert_photo(fetch_image(first), 256, 256)
        labels = [label.text.strip() for label in browser.find_elements("css selector", "#classes label")]
        assert labels == list(colours)

        choose_start(browser, "test/2.jpg")
        example = wait_for_new_output(browser, first)  # live: the example's photo without a click
        door_before = canvas_pixels(browser, colours["door"])
        pick_class(browser, "door")
        paint_stroke(browser)
        painted = wait_for_new_output(browser, example)  # live: the stroke reached the generator
        assert canvas_pixels(browser, colours["door"]) > door_before + 200  # painted in door's exact colour

        browser.find_element("css selector", "#live input").click()  # live off: now only the button
        pick_class(browser, "shop")
        paint_stroke(browser, dy=60)
        assert canvas_pixels(browser, colours["shop"]) > 200
        browser.find_element("id", "generate").click()
        generated = wait_for_new_output(browser, painted)
        with Image.open(facades / "test" / "2.jpg") as pair:
            height, width = pair.height, pair.width // 2
        assert_photo(fetch_image(generated), height, width)
        assert not np.array_equal(fetch_image(painted), fetch_image(example))
    finally:
        server.stop()


@pytest.mark.slow  # a headless browser drives the app
def test_other_data_demo_uploads_in_a_browser(browser, custom_run, tmp_path):
    """A run on other data: no palette, its own examples, and an upload of any size translated at it."""
    checkpoint, root = custom_run
    server = Server("--checkpoint", checkpoint)
    try:
        browser.get(server.url())
        first = wait_for_new_output(browser, None)
        assert_photo(fetch_image(first), 48, 80)  # the first example, val/A/p1.png
        assert browser.find_elements("css selector", "#classes") == []  # no facades palette
        upload = np.random.default_rng(2).integers(0, 256, (90, 150, 3), dtype=np.uint8)
        Image.fromarray(upload).save(tmp_path / "mine.png")
        upload_file(browser, tmp_path / "mine.png")
        uploaded = wait_for_new_output(browser, first)
        assert_photo(fetch_image(uploaded), 90, 150)
    finally:
        server.stop()
