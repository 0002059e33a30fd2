"""The demo's page (demo.py starts it): the canvas and its class picker, the generated photo and
its controls, and what each control does, in Gradio. The model comes in as demo_app.model.Model: plain data
and numpy images, no project types."""

from __future__ import annotations

import functools
import html
import json
import math
import os
import random
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from demo_app.palette import FACADES_CLASSES, hex_colour
from utils import first_line, is_out_of_memory, save_traceback, unexpected_error_line

if TYPE_CHECKING:
    from demo_app.model import Model

LIVE_SECONDS = 1.0  # generate after every stroke only when one generation takes less than this
SEED_LIMIT = 2**32  # the seed box takes what train.py's --seed takes: 0 <= seed < 2^32
# What an input may be. Generating takes memory and time in proportion to the pixels (a 6000x6000
# image would take minutes and gigabytes on a CPU); a side is bounded too, as the generator pads
# each side to a multiple of its own size. Uploads are refused by their size in bytes before they
# are stored, and by the size their header states before they are decoded.
MAX_UPLOAD_BYTES = 32 << 20
MAX_SIDE = 4096
MAX_PIXELS = 2048 * 2048


class DemoError(RuntimeError):
    """Something that stops the demo before it starts; the message names the file or setting."""


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


def size_problem(width: int, height: int) -> str | None:
    """Why an image of width x height is too large to translate here, or None when it is not."""
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        return (
            f"{width}x{height} pixels is larger than the demo translates (at most {MAX_SIDE} px a side "
            f"and {MAX_PIXELS / 1e6:.1f} megapixels, e.g. 2048x2048); make it smaller first"
        )
    return None


def check_upload(path: Path) -> None:
    """ValueError naming the file and the limit when an upload is too large: its bytes, then the
    size its header states (PIL reads it without decoding the pixels). A file PIL cannot open is
    left to the reader, whose message says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"{path.name}: {size:,} bytes is larger than the demo takes (at most {MAX_UPLOAD_BYTES:,} bytes)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, in one line
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ValueError(f"{path.name}: {size_problem(MAX_SIDE + 1, MAX_SIDE + 1)}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return
    problem = size_problem(width, height)
    if problem:
        raise ValueError(f"{path.name}: {problem}")


def on_page(gr, handler: Callable) -> Callable:
    """`handler` for an event whose every error is one message on the page, never a console
    traceback: a ValueError's message as it is, running out of memory in words, and anything
    else (a bug) as the one line demo.py would print, whose traceback goes to a file it names."""

    @functools.wraps(handler)  # Gradio reads the parameters and the endpoint's name from it
    def shown(*args):
        try:
            return handler(*args)
        except gr.Error as err:
            err.print_exception = False
            raise
        except ValueError as err:
            raise gr.Error(html.escape(str(err)), print_exception=False) from None
        except Exception as err:
            if is_out_of_memory(err):
                message = f"out of memory ({first_line(err) or type(err).__name__}): try a smaller image"
                raise gr.Error(html.escape(message), print_exception=False) from None
            line = unexpected_error_line(err, save_traceback(err, None))
            print(f"error: {line}", file=sys.stderr, flush=True)
            raise gr.Error(html.escape(line), print_exception=False) from None

    return shown


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
    epochs = "1 epoch" if model.epoch == 1 else f"{model.epoch} epochs"
    return (
        f"**{cfg['name']}**: {cfg['dataset']}, {cfg['direction']}, trained {epochs} at "
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
    buttons and menu are Gradio 6.31's (requirements-demo.txt pins it; tests/demo_app/test_demo.py checks it).
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
        seed = dropout_seed(seed)  # the box's limits stop most on the page; the message, not torch's
        if image is None:
            return None
        problem = size_problem(image.shape[1], image.shape[0])  # a canvas sent by other means than the page
        if problem:
            raise ValueError(f"the input: {problem}")
        return to_rgb(model.translate(image, seed, resize))

    def generate_if_live(value: Any, seed: float | None, resize: bool, follow: bool):
        return generate(value, seed, resize) if follow else gr.skip()

    def load_start(name: str | None):
        image = starts[name]() if name in starts else None
        return (image, image) if image is not None else (gr.skip(), gr.skip())

    def load_upload(path: str):
        check_upload(Path(path))  # before decoding it
        image = to_rgb(model.read(Path(path)))
        return image, image

    generate, generate_if_live, load_start, load_upload = (
        on_page(gr, handler) for handler in (generate, generate_if_live, load_start, load_upload)
    )
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
