r"""Make the README's demo screenshot (docs/demo.png) from a trained checkpoint: demo.py is started
on this machine, one label map of the test split is loaded into its page in headless Chromium, and
once the generator's photo is shown the page is saved as a PNG.

    python tools/demo_screenshot.py --checkpoint checkpoints/facades/best.pt \
        --data_root data/facades --output docs/demo.png [--example N] [--port P] \
        [--width 1280] [--height H]

--example N picks the N-th label map of the test split (0: the first, as the demo lists them);
--data_root is where the demo finds them (default: the run's data_root). The screenshot is
--width pixels wide (1280 unless given) and as tall as the app, all of it and nothing below it,
unless --height says otherwise (a warning says when that cuts the app off). The demo listens on
127.0.0.1 only, on a free port unless --port says which, with --live on, and is stopped when the
screenshot is saved, when anything fails and on Ctrl-C or SIGTERM. --output is written under a
temporary name and renamed into place: it is whole or not written at all.

Needs the demo's extra (pip install -r requirements-demo.txt), Selenium (pip install
'selenium>=4.10') and Debian's Chromium with its driver (apt-get install chromium
chromium-driver). Every failure is one line ``error: ...`` naming what did not come up, exit
status 1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as tools/demo_screenshot.py

from files.writing import atomic_write  # noqa: E402
from utils import ArgumentParser, OutputError, exit_on_errors, first_line, on_signals  # noqa: E402

# Debian's packages (apt-get install chromium chromium-driver), as the demo's browser tests use them.
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
HOST = "127.0.0.1"
STOP_SECONDS = 15  # how long the demo gets to stop and remove its files before it is killed
LAST_LINES = 3  # how many of the demo's last output lines an error quotes
DEFAULT_HEIGHT = 900  # the window's height until the app's own is known
MAX_SIDE = 4320  # the largest --width and --height (8K's height): no README needs more


class ScreenshotError(RuntimeError):
    """What stopped the screenshot; the message names the file, tool or page that did not come up."""


# ---------------------------------------------------------------------------------------------
# Command line and what must be there before anything starts
# ---------------------------------------------------------------------------------------------


def bounded_int(low: int, high: int, what: str):
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low}-{high})")
        return int(text)

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument("--output", required=True, type=Path, help="the PNG to write, e.g. docs/demo.png")
    parser.add_argument(
        "--data_root", type=Path, help="where the demo finds the test split (default: the run's data_root)"
    )
    parser.add_argument(
        "--example",
        type=bounded_int(0, 10**6, "an index"),
        default=0,
        help="which label map of the test split to load, counted from 0 (default 0)",
    )
    parser.add_argument(
        "--port", type=bounded_int(1, 65535, "a port number"), help="the demo's port (default: a free one)"
    )
    parser.add_argument(
        "--width", type=bounded_int(320, MAX_SIDE, "a width"), default=1280, help="in pixels (default 1280)"
    )
    parser.add_argument(
        "--height",
        type=bounded_int(240, MAX_SIDE, "a height"),
        help="in pixels (default: the app's own height, all of it and nothing below it)",
    )
    parser.add_argument(
        "--timeout",
        type=bounded_int(1, 3600, "a number of seconds"),
        default=180,
        help="seconds to wait for the demo's page, and then for the photo (default 180)",
    )
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """The files named on the command line, before anything is started."""
    if not args.checkpoint.is_file():
        raise ScreenshotError(f"--checkpoint {args.checkpoint}: no such checkpoint file")
    if args.data_root is not None and not args.data_root.is_dir():
        raise ScreenshotError(f"--data_root {args.data_root}: no such folder")


def check_tools() -> None:
    """The demo's extra, Selenium and Chromium with its driver, each named with how to install it."""
    if importlib.util.find_spec("gradio") is None:
        raise ScreenshotError("gradio is not installed: pip install -r requirements-demo.txt")
    if importlib.util.find_spec("selenium") is None:
        raise ScreenshotError("selenium is not installed: pip install 'selenium>=4.10'")
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.exists():
            raise ScreenshotError(f"{tool} not found: apt-get install chromium chromium-driver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The demo, in a process of its own
# ---------------------------------------------------------------------------------------------


class Demo:
    """`python demo.py ...` running on HOST:port; its last output lines kept for an error."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.url = f"http://{HOST}:{port}"
        command = [sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(args.checkpoint.resolve())]
        if args.data_root is not None:  # resolved: the demo runs in the repository root, not here
            command += ["--data_root", str(args.data_root.resolve())]
        # --live on: the photo follows the loaded label map however long one generation takes here.
        command += ["--host", HOST, "--port", str(port), "--live", "on"]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        # A session of its own: a Ctrl-C in the terminal reaches this tool only, which then stops the
        # demo once (a second SIGINT would cut its clean-up short).
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the demo inherits it
        self.lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        # Read all the time, so that a chatty demo never blocks on a full pipe.
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip():
                self.lines.append(line.strip().removeprefix("error: "))

    def last_output(self) -> str:
        return " | ".join(self.lines) or "nothing"

    def stop(self) -> None:
        """Stop the demo as Ctrl-C stops it, so that it removes its temporary folder; kill it if it
        hangs."""
        if self.process.poll() is None:
            # SIGINT is demo.py's Ctrl-C at every stage, SIGTERM only once it serves (before, it
            # would leave its folder behind); a demo that inherited SIGINT ignored gets SIGTERM.
            self.process.send_signal(signal.SIGINT if self.interruptible else signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        except KeyboardInterrupt:  # a second Ctrl-C while it stops: no demo is left behind either
            self.process.kill()
            raise


@contextlib.contextmanager
def running_demo(args: argparse.Namespace) -> Iterator[Demo]:
    """The demo for the screenshot, stopped when the block ends however it ends."""
    demo = Demo(args, args.port or free_port())
    try:
        yield demo
    finally:
        demo.stop()


def page_config(demo: Demo, timeout: float) -> dict[str, Any]:
    """The Gradio configuration the page is built from, once the demo answers; ScreenshotError
    with the demo's last output when it exits first or does not answer within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.process.poll() is not None:
            raise ScreenshotError(
                f"demo.py exited (status {demo.process.returncode}) before its page came up at "
                f"{demo.url}; its last output: {demo.last_output()}"
            )
        try:
            with urllib.request.urlopen(f"{demo.url}/config", timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)  # still loading the checkpoint and timing a generation
    raise ScreenshotError(
        f"the demo's page at {demo.url} did not answer within {timeout} s (--timeout); "
        f"its last output: {demo.last_output()}"
    )


def starting_points(config: dict[str, Any]) -> tuple[list[str], str | None]:
    """The names the page's "start from" list offers, and the one it starts with."""
    for component in config.get("components", []):
        props = component.get("props", {})
        if props.get("elem_id") == "start":
            names = [choice[1] if isinstance(choice, list) else choice for choice in props["choices"]]
            return names, props.get("value")
    raise ScreenshotError("the demo's page has no 'start from' list (#start)")


def pick_example(names: list[str], index: int, data_root: Path | None) -> str:
    """The index-th label map of the test split among the page's starting points."""
    tests = [name for name in names if name.startswith("test/")]
    if not tests:
        where = f"{data_root}/test" if data_root else "test/ in the run's data_root (--data_root)"
        raise ScreenshotError(f"the demo offers no label maps of the test split: no {where}")
    if index >= len(tests):
        raise ScreenshotError(
            f"--example {index}: the demo offers {len(tests)} label maps of the test split "
            f"(--example 0 to {len(tests) - 1})"
        )
    return tests[index]


# ---------------------------------------------------------------------------------------------
# The page, in headless Chromium
# ---------------------------------------------------------------------------------------------


def chromium_options(width: int, height: int) -> Any:
    """Headless Chromium in a window of width x height, with no scrollbars over the page."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = [
        "--headless=new",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ]
    if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root (containers, CI)
        flags.append("--no-sandbox")
    for flag in flags:
        options.add_argument(flag)
    return options


@contextlib.contextmanager
def headless_chromium(width: int, height: int) -> Iterator[Any]:
    """A Selenium driver of Debian's Chromium showing pages at width x height; anything Selenium
    or Chromium fails at is a ScreenshotError."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=chromium_options(width, height))
    except WebDriverException as err:
        raise ScreenshotError(f"{CHROMIUM} did not start through {CHROMEDRIVER}: {first_line(err)}") from None
    try:
        set_page_size(driver, width, height)
        driver.set_page_load_timeout(60)
        yield driver
    except WebDriverException as err:
        raise ScreenshotError(f"{CHROMIUM} (through Selenium): {first_line(err)}") from None
    finally:
        driver.quit()


def set_page_size(driver, width: int, height: int) -> None:
    """Make the page area exactly width x height screen pixels, one per CSS pixel, whatever the
    window's frame and the screen's scale: the screenshot's size."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def shown_photo(driver) -> str | None:
    """The src of the generated photo once the browser has it decoded, else None. One script
    call: Gradio replaces the <img> as images arrive, so a found element could go stale."""
    return driver.execute_script(
        "const image = document.querySelector('#output img');"
        "return image && image.complete && image.naturalWidth > 0 ? image.src : null;"
    )


def wait_for_photo(driver, old: str | None, timeout: float, what: str) -> str:
    """The src of the generated photo once it is shown and is not `old` (Gradio names its files
    by their content, so a new photo has a new src)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        src = shown_photo(driver)
        if src and src != old:
            return src
        time.sleep(0.2)
    raise ScreenshotError(
        f"the demo's page showed no generated photo of {what} within {timeout} s (--timeout)"
    )


def choose_start(driver, name: str) -> None:
    """Choose `name` in the "start from" list, as a person types it there."""
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("css selector", "#start input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(name, Keys.ENTER)
    chosen = field.get_attribute("value")
    if chosen != name:
        raise ScreenshotError(f"the demo's 'start from' list took {chosen!r} instead of {name!r}")


def show_example(driver, url: str, name: str, first: str | None, timeout: float) -> None:
    """Open the page, load the label map `name` and wait until its photo is shown."""
    driver.get(url)
    # The page generates a photo of its first starting point on load; only after that one is the
    # next new photo the example's.
    old = wait_for_photo(driver, None, timeout, first or "the starting point")
    if name != first:
        choose_start(driver, name)
        wait_for_photo(driver, old, timeout, name)
    driver.execute_script("document.activeElement?.blur();")  # no focus ring on the list


def app_height(driver) -> int | None:
    """The page height that shows the whole app and no more: the bottom of Gradio's app area plus
    the margin above it (the footer below is left out). None where the page has no such area."""
    return driver.execute_script(
        "const app = document.querySelector('.gradio-container .contain');"
        "if (!app) return null;"
        "const box = app.getBoundingClientRect();"
        "return Math.ceil(box.bottom + box.top + window.scrollY);"
    )


def fit_height(driver, width: int, asked: int | None) -> int:
    """The screenshot's height: `asked`, or else the app's own (the page area is resized to it);
    a warning when `asked` cuts the app off."""
    needed = app_height(driver)
    if asked is None:
        height = min(needed or DEFAULT_HEIGHT, MAX_SIDE)
        set_page_size(driver, width, height)
        return height
    if needed and needed > asked:
        print(
            f"warning: the app is {needed} px tall: --height {asked} cuts off its bottom "
            "(leave --height out to show all of it)",
            file=sys.stderr,
        )
    return asked


def save_screenshot(driver, output: Path, width: int, height: int) -> None:
    from PIL import Image

    time.sleep(1)  # the canvas draws the label map, and a resized page its layout, in their own time
    png = driver.get_screenshot_as_png()
    with Image.open(io.BytesIO(png)) as shot:
        if shot.size != (width, height):
            raise ScreenshotError(
                f"Chromium made a {shot.width}x{shot.height} screenshot, not {width}x{height}"
            )
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(png))


# ---------------------------------------------------------------------------------------------


def stop_on_signal(signum: int) -> None:
    """SIGTERM (kill) and SIGHUP (the terminal closed) stop the tool as Ctrl-C does, so that the
    demo and the browser are stopped too."""
    raise KeyboardInterrupt


def take_screenshot(args: argparse.Namespace) -> tuple[str, int]:
    """Everything from the checks to the written file; returns the example's name and the
    screenshot's height."""
    check_inputs(args)
    check_tools()
    with running_demo(args) as demo:
        names, first = starting_points(page_config(demo, args.timeout))
        name = pick_example(names, args.example, args.data_root)
        with headless_chromium(args.width, args.height or DEFAULT_HEIGHT) as driver:
            show_example(driver, demo.url, name, first, args.timeout)
            height = fit_height(driver, args.width, args.height)
            save_screenshot(driver, args.output, args.width, height)
    return name, height


def main(argv: list[str] | None = None) -> None:
    """Make one screenshot and say in one line what it shows and how long it took."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.monotonic()
    with (
        exit_on_errors((), (ScreenshotError, OutputError)),
        on_signals((signal.SIGTERM, signal.SIGHUP), stop_on_signal, False),
    ):
        name, height = take_screenshot(args)
    print(
        f"wrote {args.output} ({args.width}x{height}): {name} and the photo of "
        f"{args.checkpoint.name}, in {time.monotonic() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
