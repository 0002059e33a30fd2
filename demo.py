"""Draw a facade, get a photo: a local web app around a trained generator.

    pip install -r requirements-demo.txt
    python demo.py --checkpoint checkpoints/facades/best.pt [--host 127.0.0.1] [--port 7860] [--share]

It listens on 127.0.0.1 (this machine only) unless --host says otherwise, and makes no public
Gradio share link unless --share is given. For a facades run, the canvas paints with the 12 CMP
classes in the exact colours of the label maps (demo_app/palette.py); for a run on any other data
it takes an uploaded image or an example from the run's data folder. Inputs are translated exactly
as predict.py translates a file (the same function, eval_mode and padding), up to 4.2 megapixels
(e.g. 2048x2048), 4096 px a side and 32 MiB a file (demo_app/page.py). What Gradio stores
(uploads, the images it serves) is kept in a temporary folder of its own, removed when the demo
stops (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from demo_app.model import Model
from demo_app.page import (
    LIVE_SECONDS,
    MAX_UPLOAD_BYTES,
    DemoError,
    build_app,
    class_css,
    import_gradio,
    to_rgb,
)
from demo_app.palette import blank_facade

MAX_EXAMPLES = 500  # a longer dropdown of starting points is no help (edges2shoes has 200 val images)
BLANK = "a blank facade"


# ---------------------------------------------------------------------------------------------
# The project: everything demo.py uses of train/predict/dataset is in these two functions, so a
# change of where checkpoints are loaded (or images read) touches only them.
# ---------------------------------------------------------------------------------------------


def load_model(checkpoint: Path, device_name: str) -> Model:
    """The checkpoint's generator behind a numpy-in, numpy-out translate (predict.py's path)."""
    from PIL import Image

    from evaluation.generate import translate_image
    from files.images import DatasetError, read_image, to_tensor
    from training.checkpoint import CheckpointError
    from training.trained_generator import inference_precision, load_run
    from utils import resolve_device

    try:
        device = resolve_device(device_name)
    except ValueError as err:  # a device this machine lacks; the message names --device
        raise DemoError(str(err)) from None
    except RuntimeError:  # torch does not know the name
        raise DemoError(f"--device {device_name}: not a device name (auto, cpu, mps, cuda, cuda:N)") from None
    try:
        G, cfg, epoch = load_run(checkpoint, device)
    except (CheckpointError, ValueError) as err:  # ValueError: a config the networks cannot be built from
        raise DemoError(str(err)) from None
    amp = inference_precision(G, device)

    def translate(image: np.ndarray, seed: int, resize: bool) -> np.ndarray:
        real_A = to_tensor(Image.fromarray(image), cfg.input_nc)  # as predict reads a file: gray or RGB
        resize_to = cfg.image_size if resize else None
        fake_B = translate_image(G, real_A, cfg.eval_mode, seed, device, amp, resize_to)
        return fake_B.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()

    def read(path: Path) -> np.ndarray:
        try:
            return read_image(path, cfg.input_nc).permute(1, 2, 0).numpy()
        except DatasetError as err:  # not an image, or a broken one; the message names the file
            raise ValueError(str(err)) from None

    return Model(vars(cfg), epoch, translate, read)


def example_inputs(config: dict[str, Any], data_root: Path) -> dict[str, Callable[[], np.ndarray]]:
    """'split/file' -> a loader of the input side of that pair, for the val/ and test/ splits of
    data_root (train/ when it has neither), at most MAX_EXAMPLES."""
    from dataset import match_pairs
    from files.images import DatasetError, list_images, read_image, read_pair

    side = 1 if config["direction"] == "BtoA" else 0  # which half of a pair the generator reads
    splits = [s for s in ("val", "test") if (data_root / s).is_dir()] or ["train"]
    examples: dict[str, Callable[[], np.ndarray]] = {}
    for split in splits:
        folder = data_root / split
        try:
            if config["data_layout"] == "paired_folders":
                files = [pair[side] for pair in match_pairs(folder)]
                read = read_image
            else:
                files = list_images(folder)
                read = lambda path: read_pair(path)[side]  # noqa: E731 (the A|B half of an aligned file)
        except (DatasetError, OSError):
            continue  # an unreadable split just offers no examples; upload still works
        for path in files[: MAX_EXAMPLES - len(examples)]:
            examples[f"{split}/{path.name}"] = example_loader(read, path)
    return examples


def example_loader(read: Callable, path: Path) -> Callable[[], np.ndarray]:
    """A loader of one example; a file that cannot be read is a ValueError naming it (the page's message)."""
    from files.images import DatasetError

    def load() -> np.ndarray:
        try:
            return to_rgb(read(path).permute(1, 2, 0).numpy())
        except DatasetError as err:
            raise ValueError(str(err)) from None

    return load


def time_generation(model: Model, image: np.ndarray) -> float:
    """Seconds for one generation of `image`, after a first untimed one (lazy initialisation)."""
    model.translate(image, 0, False)
    start = time.perf_counter()
    model.translate(image, 0, False)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from utils import ArgumentParser

    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; 0.0.0.0 exposes the demo to the network)",
    )
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public Gradio share link")
    parser.add_argument(
        "--data_root", type=Path, help="where the example inputs come from (default: the run's data_root)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N")
    parser.add_argument(
        "--live",
        choices=("auto", "on", "off"),
        default="auto",
        help="generate after every "
        f"stroke (auto: when one generation takes under {LIVE_SECONDS:g} s); the page can change it",
    )
    return parser.parse_args(argv)


def check_port(host: str, port: int) -> None:
    """DemoError unless host:port can be listened on now, so a busy port fails before loading anything."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise DemoError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the server sets it: connections closing on the port do not count as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            why = "in use" if err.errno == 98 else err.strerror  # EADDRINUSE
            raise DemoError(
                f"--port {port}: cannot listen on {host}:{port}, {why} (choose another --port)"
            ) from None


def starting_points(config: dict[str, Any], examples: dict[str, Callable[[], np.ndarray]]):
    """The choices of 'start from': a blank facade for a facades run, then the examples."""
    if config["dataset"] != "facades":
        return dict(examples)
    # The blank is at least 256 px so there is room to paint; any size translates (padding).
    return {BLANK: functools.partial(blank_facade, max(config["image_size"], 256)), **examples}


def prepare(args: argparse.Namespace):
    """Everything that can fail, before anything starts: gradio, the port, the checkpoint; then the app
    and the seconds one generation takes."""
    import_gradio()
    check_port(args.host, args.port)
    if args.data_root and not args.data_root.is_dir():  # the run's own data_root may be missing here
        raise DemoError(f"--data_root {args.data_root}: no such folder")
    model = load_model(args.checkpoint, args.device)
    data_root = args.data_root or Path(model.config["data_root"])
    examples = example_inputs(model.config, data_root)
    starts = starting_points(model.config, examples)
    try:
        first = next(iter(starts.values()))() if starts else np.full((256, 256, 3), 255, np.uint8)
    except ValueError as err:  # the first example cannot be read; the message names it
        raise DemoError(str(err)) from None
    note = "" if examples else f"No example inputs in {data_root}: upload an image."
    seconds = time_generation(model, first)
    live = seconds < LIVE_SECONDS if args.live == "auto" else args.live == "on"
    return build_app(model, starts, first, seconds, live, note), seconds


@contextlib.contextmanager
def own_temp_folder() -> Iterator[Path]:
    """Gradio's files (uploads, the images it serves) in a folder of this demo's own, removed
    with everything in it when the demo stops."""
    folder = Path(tempfile.mkdtemp(prefix="pix2pix-demo-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)  # read when the app is built and launched
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def stop_on_sigterm(signum: int) -> None:
    """SIGTERM (kill, a service manager) stops the demo as Ctrl-C does, so its files are removed."""
    raise KeyboardInterrupt


def serve(app, args: argparse.Namespace, seconds: float) -> None:
    """Launch the app on host:port and serve until Ctrl-C or SIGTERM; `seconds`: one generation's."""
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            quiet=True,
            prevent_thread_lock=True,
            css=class_css(),
            max_file_size=MAX_UPLOAD_BYTES,  # a larger upload is refused before it is stored
        )
    except OSError as err:  # the port was taken between check_port and now
        raise DemoError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({err})") from None
    try:
        print(
            f"demo running at http://{args.host}:{args.port} (one generation: {seconds:.2f} s; "
            "Ctrl-C stops it)",
            flush=True,
        )
        if args.share:  # quiet=True keeps Gradio from printing it
            print(f"public share link: {app.share_url or 'none (Gradio could not make one)'}", flush=True)
        app.block_thread()  # returns on Ctrl-C (KeyboardInterrupt)
    finally:
        app.close(verbose=False)


def main(argv: list[str] | None = None) -> None:
    from utils import exit_on_errors, on_signals

    args = parse_args(sys.argv[1:] if argv is None else argv)
    # An unexpected error's traceback goes to a pix2pix-error-*.log in the temporary folder, named
    # in its one line (exit_on_errors). SIGTERM stops it as Ctrl-C does from the first moment its
    # folder exists, also while the generator loads, so that the folder is always removed.
    sigterm = on_signals((signal.SIGTERM,), stop_on_sigterm, once=False)
    with exit_on_errors((), (DemoError,)), sigterm, own_temp_folder():
        app, seconds = prepare(args)
        serve(app, args, seconds)


if __name__ == "__main__":
    main()
