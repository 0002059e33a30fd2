"""Draw a facade, get a photo: a local web app around a trained generator.

    pip install -r requirements-demo.txt
    python demo.py --checkpoint checkpoints/facades/best.pt [--host 127.0.0.1] [--port 7860] [--share]

It listens on 127.0.0.1 (this machine only) unless --host says otherwise, and makes no public
Gradio share link unless --share is given. For a facades run, the canvas paints with the 12 CMP
classes in the exact colours of the label maps (facades_palette.py); for a run on any other data
it takes an uploaded image or an example from the run's data folder. Inputs of any size are
translated exactly as predict.py translates a file (the same function, eval_mode and padding).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facades_palette import FACADES_CLASSES, blank_facade, hex_colour

MAX_EXAMPLES = 500  # a longer dropdown of starting points is no help (edges2shoes has 200 val images)
BLANK = "a blank facade"
LIVE_SECONDS = 1.0  # generate after every stroke only when one generation takes less than this
SEED_LIMIT = 2**32  # the seed box takes what train.py's --seed takes: 0 <= seed < 2^32


# ---------------------------------------------------------------------------------------------
# The project: everything demo.py uses of train/predict/dataset is in these two functions, so a
# change of where checkpoints are loaded (or images read) touches only them.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """A trained generator as the app sees it: plain data and numpy images, no project types."""

    config: dict[str, Any]  # the run's resolved config (dataset, data_root, direction, eval_mode, seed, ...)
    epoch: int  # epochs it was trained for
    translate: Callable[
        [np.ndarray, int, bool], np.ndarray
    ]  # (H, W, C) uint8, seed, resize -> (H, W, 3|1) uint8
    read: Callable[
        [Path], np.ndarray
    ]  # an input image file, decoded as predict.py decodes it -> (H, W, 3|1) uint8


class DemoError(RuntimeError):
    """Something that stops the demo before it starts; the message names the file or setting."""


def load_model(checkpoint: Path, device_name: str) -> Model:
    """The checkpoint's generator behind a numpy-in, numpy-out translate (predict.py's path)."""
    from PIL import Image

    import predict
    from checkpoint import CheckpointError
    from dataset import DatasetError, read_image, to_tensor
    from evaluation import translate_image
    from utils import resolve_device

    try:
        device = resolve_device(device_name)
    except ValueError as err:  # a device this machine lacks; the message names --device
        raise DemoError(str(err)) from None
    except RuntimeError:  # torch does not know the name
        raise DemoError(f"--device {device_name}: not a device name (auto, cpu, mps, cuda, cuda:N)") from None
    try:
        G, cfg, epoch = predict.load_run(checkpoint, device)
    except (CheckpointError, ValueError) as err:  # ValueError: a config the networks cannot be built from
        raise DemoError(str(err)) from None
    amp = predict.inference_precision(G, device)

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
    from dataset import DatasetError, list_images, match_pairs, read_image, read_pair

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
            examples[f"{split}/{path.name}"] = lambda path=path, read=read: to_rgb(
                read(path).permute(1, 2, 0).numpy()
            )
    return examples


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): the editor shows RGB."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def editor_image(value: Any) -> np.ndarray | None:
    """The painted image of an ImageEditor value (its composite), or None when there is none."""
    image = value.get("composite") if isinstance(value, dict) else value
    return None if image is None else to_rgb(np.asarray(image))


def dropout_seed(value: float | None) -> int:
    """The seed box's value as translate takes it (an empty box is 0); ValueError with the message
    the page shows for anything but a whole number in [0, SEED_LIMIT)."""
    if value is None:
        return 0
    if not (math.isfinite(value) and value == int(value) and 0 <= value < SEED_LIMIT):
        raise ValueError(f"seed {value}: must be a whole number from 0 to {SEED_LIMIT - 1}")
    return int(value)


def time_generation(model: Model, image: np.ndarray) -> float:
    """Seconds for one generation of `image`, after a first untimed one (lazy initialisation)."""
    model.translate(image, 0, False)
    start = time.perf_counter()
    model.translate(image, 0, False)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def import_gradio():
    """gradio, or a DemoError saying how to install it (it is an optional extra)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local demo phones nowhere
    try:
        import gradio
    except ImportError as err:
        raise DemoError(f"gradio is not installed ({err}): pip install -r requirements-demo.txt") from None
    return gradio


def class_css() -> str:
    """CSS that puts each class's colour beside its name in the class picker (the nth choice is
    the nth class), so the picker is the legend too."""
    rules = [
        f"#classes label:nth-of-type({i}) {{border-left: 18px solid {hex_colour(rgb)}}}"
        for i, (_, rgb) in enumerate(FACADES_CLASSES, start=1)
    ]
    return "\n".join(rules) + "\n"


def intro_text(model: Model, seconds: float, size: tuple[int, int], live: bool) -> str:
    cfg = model.config
    took = f"One generation of a {size[1]}x{size[0]} input takes **{seconds:.2f} s** on this machine"
    if live:
        speed = f"{took}; the photo follows every stroke."
    else:  # say why nothing happens after a stroke
        speed = (
            f"{took}{' (slow: a CPU)' if seconds >= LIVE_SECONDS else ''}; the photo is made when you press "
            f"**Generate**, or after every stroke once you tick that box."
        )
    mode = (
        "eval_mode true: running BatchNorm averages and no dropout, so the seed changes nothing."
        if cfg["eval_mode"]
        else "Dropout stays on as in the paper (eval_mode false): each seed gives another variant."
    )
    return (
        f"**{cfg['name']}**: {cfg['dataset']}, {cfg['direction']}, trained {model.epoch} epochs at "
        f"{cfg['image_size']} px. {speed} {mode}"
    )


def facades_brush(gr, name: str):
    """A brush of the class colours only (a free colour would be no class at all), set to `name`'s."""
    colours = [hex_colour(rgb) for _, rgb in FACADES_CLASSES]
    return gr.Brush(
        default_size=6,
        colors=colours,
        default_color=hex_colour(dict(FACADES_CLASSES)[name]),
        color_mode="fixed",
    )


def pick_swatch_js() -> str:
    """What choosing a class does, in the browser: select the editor's brush tool and click the
    class's swatch in its colour menu (same order as FACADES_CLASSES), then close the menu.

    In the browser because a brush update from the server re-renders the editor, which drops the
    strokes being made and reaches the page only after the queued generations. The toolbar's
    buttons and menu are Gradio 6.31's (requirements-demo.txt pins it; tests/test_demo.py checks it).
    """
    names = json.dumps([name for name, _ in FACADES_CLASSES])
    return f"""(name) => {{
        const index = {names}.indexOf(name);
        const editor = document.querySelector('#editor');
        if (index < 0 || !editor) return;
        const find = (selector) => editor.querySelectorAll(selector);
        let tries = 0;
        const step = () => {{  // each click re-renders the toolbar: wait for what it shows next
            const colour = find('button[aria-label="Color"]')[0];
            const swatch = find('menu.swatch button.color')[index];
            if (swatch) {{
                swatch.click();
                // Gradio closes the menu on a mousedown outside it.
                document.body.dispatchEvent(new MouseEvent('mousedown', {{bubbles: true}}));
                return;
            }}
            if (tries++ > 60) return;
            if (!colour) find('button[aria-label="Brush"]')[0]?.click();  // the colour menu is the brush's
            else if (!find('menu.swatch').length) colour.click();
            setTimeout(step, 50);
        }};
        step();
    }}"""


def input_panel(gr, starts: dict[str, Callable[[], np.ndarray]], first: np.ndarray, facades: bool) -> dict:
    """Starting point or upload, the canvas and (facades) the named class picker; returns the components."""
    ui = {
        "origin": gr.State(first),  # the image painting started from, for "start over"
        "start": gr.Dropdown(
            list(starts), value=next(iter(starts), None), label="start from", filterable=True, elem_id="start"
        ),
    }
    with gr.Row():
        # Uploads go through their own button: Gradio 6's editor takes a file dropped on it without
        # telling the server, so no photo would follow; an image loaded into it does trigger one.
        ui["upload"] = gr.UploadButton(
            "upload an input image", file_types=["image"], type="filepath", elem_id="upload"
        )
        ui["restart"] = gr.Button("start over", elem_id="restart")
    brush = (
        facades_brush(gr, "window") if facades else gr.Brush(default_size=4, colors=["#000000", "#ffffff"])
    )
    ui["editor"] = gr.ImageEditor(
        value=first,
        image_mode="RGB",
        type="numpy",
        format="png",
        sources=(),
        brush=brush,
        layers=False,
        transforms=(),
        label="input",
        interactive=True,
        height=420,
        elem_id="editor",
    )
    if facades:
        # Gradio's own colour swatches carry no names, so the classes are chosen here by name.
        ui["classes"] = gr.Radio(
            [name for name, _ in FACADES_CLASSES], value="window", label="paint with", elem_id="classes"
        )
    gr.Markdown(
        ("Pick a class and paint; " if facades else "Choose the brush (pencil) to paint; ")
        + "the last button beside the canvas sets the brush size; undo and redo are above it; "
        "**start over** goes back to the starting point or upload."
    )
    return ui


def output_panel(gr, cfg: dict[str, Any], live: bool) -> dict:
    """The generated photo and what changes it: Generate, the seed, live update, resizing."""
    ui = {
        "output": gr.Image(
            label="generated", type="numpy", format="png", interactive=False, elem_id="output"
        ),
        "generate": gr.Button("Generate", variant="primary", elem_id="generate"),
    }
    with gr.Row():
        # With eval_mode true there is no dropout, so the seed has nothing to change.
        ui["seed"] = gr.Number(
            value=cfg["seed"],
            precision=0,
            minimum=0,
            maximum=SEED_LIMIT - 1,
            label="seed (dropout noise)",
            interactive=not cfg["eval_mode"],
            elem_id="seed",
        )
        ui["dice"] = gr.Button("new seed", interactive=not cfg["eval_mode"], elem_id="dice")
    ui["follow"] = gr.Checkbox(value=live, label="generate after every stroke", elem_id="live")
    ui["resize"] = gr.Checkbox(
        value=False,
        label=f"resize to {cfg['image_size']} px and back (predict.py --resize) instead of padding",
        elem_id="resize",
    )
    return ui


def connect(gr, app, model: Model, starts: dict[str, Callable[[], np.ndarray]], ui: dict) -> None:
    """The events: what each control does."""

    def generate(value: Any, seed: float | None, resize: bool) -> np.ndarray | None:
        image = editor_image(value)
        try:
            seed = dropout_seed(seed)
        except ValueError as err:  # the box's limits stop most on the page; the message, not torch's
            raise gr.Error(str(err)) from None
        return None if image is None else to_rgb(model.translate(image, seed, resize))

    def generate_if_live(value: Any, seed: float | None, resize: bool, follow: bool):
        return generate(value, seed, resize) if follow else gr.skip()

    def load_start(name: str | None):
        image = starts[name]() if name in starts else None
        return (image, image) if image is not None else (gr.skip(), gr.skip())

    def load_upload(path: str):
        try:
            image = to_rgb(model.read(Path(path)))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return image, image

    inputs = [ui["editor"], ui["seed"], ui["resize"]]
    ui["generate"].click(generate, inputs, ui["output"])
    # Gradio 6's ImageEditor reports strokes and images loaded into it as `input` (its `change`
    # does not fire). always_last: strokes made while a generation runs
    # coalesce into one more generation instead of queueing up.
    for event in (app.load, ui["editor"].input, ui["seed"].change, ui["resize"].change):
        event(generate_if_live, [*inputs, ui["follow"]], ui["output"], trigger_mode="always_last")
    # `origin` is the image painting started from (a starting point or an upload): start over.
    ui["start"].change(load_start, ui["start"], [ui["editor"], ui["origin"]])
    ui["upload"].upload(load_upload, ui["upload"], [ui["editor"], ui["origin"]])
    ui["restart"].click(lambda image: image, ui["origin"], ui["editor"])
    ui["dice"].click(lambda: random.randrange(2**31), None, ui["seed"])
    if "classes" in ui:  # a new brush colour; the strokes already made stay
        ui["classes"].change(None, ui["classes"], None, js=pick_swatch_js())


def build_app(
    model: Model,
    starts: dict[str, Callable[[], np.ndarray]],
    first: np.ndarray,
    seconds: float,
    live: bool,
    note: str = "",
):
    """The Blocks app: starting point and canvas on the left, the photo and its controls on the right."""
    gr = import_gradio()
    cfg = model.config
    facades = cfg["dataset"] == "facades"
    with gr.Blocks(title="pix2pix demo") as app:
        gr.Markdown(intro_text(model, seconds, first.shape[:2], live) + (f" {note}" if note else ""))
        with gr.Row():
            with gr.Column():
                ui = input_panel(gr, starts, first, facades)
            with gr.Column():
                ui.update(output_panel(gr, cfg, live))
        connect(gr, app, model, starts, ui)
    return app


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
    first = next(iter(starts.values()))() if starts else np.full((256, 256, 3), 255, np.uint8)
    note = "" if examples else f"No example inputs in {data_root}: upload an image."
    seconds = time_generation(model, first)
    live = seconds < LIVE_SECONDS if args.live == "auto" else args.live == "on"
    return build_app(model, starts, first, seconds, live, note), seconds


def main(argv: list[str] | None = None) -> None:
    from utils import exit_on_errors

    args = parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_errors((), (DemoError,)):
        app, seconds = prepare(args)
        try:
            app.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                quiet=True,
                prevent_thread_lock=True,
                css=class_css(),
            )
        except OSError as err:  # the port was taken between check_port and now
            raise DemoError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({err})") from None
    print(
        f"demo running at http://{args.host}:{args.port} (one generation: {seconds:.2f} s; Ctrl-C stops it)",
        flush=True,
    )
    if args.share:  # quiet=True keeps Gradio from printing it
        print(f"public share link: {app.share_url or 'none (Gradio could not make one)'}", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
