"""What the values of a checkpoint may be: each config field of its type and passing the
command line's own checks (training/settings.py), UNetGenerator's arguments of the sizes this
project builds and matching the weights, the epoch, the history and the progress within an
epoch of the shapes the run reads back. ``check_values`` raises ValueError (without the path)
naming the first value that is not; checkpoint_format.check_contents calls it on every load and
reseal, after the structure (keys, kind, tensors) and its bounds (integrity.py).
"""

from __future__ import annotations

import dataclasses

from config import NORMS, Config, unet_depth
from training.settings import MAX_INT, ConfigError, max_threads, validate
from training.state import LOSS_NAMES

# Each config field's type ("int", "str", ...) as the values that have it: an integer stands for
# a float, as in JSON.
_TYPES_OF = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
FIELD_TYPES = {f.name: _TYPES_OF[f.type] for f in dataclasses.fields(Config)}


def check_values(checkpoint: dict) -> None:
    """ValueError naming the first value of a checkpoint (of the current format, its keys and
    types checked) that a run could not use."""
    if not _is_count(checkpoint["epoch"]):
        raise ValueError(f"its epoch is {checkpoint['epoch']!r}, not a number of epochs trained (0 or more)")
    _check_config(checkpoint["config"])
    _check_generator_kwargs(checkpoint)
    _check_history(checkpoint["history"])
    if checkpoint["kind"] == "full":
        _check_progress(checkpoint)


def _is_count(value: object, least: int = 0) -> bool:
    return type(value) is int and least <= value <= MAX_INT


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _check_config(config: dict) -> None:
    """Each field of its type, and the values together through the command line's own checks
    (training/settings.py), so that a file cannot hold what --field could not."""
    for name, value in config.items():
        if name in FIELD_TYPES and type(value) not in FIELD_TYPES[name]:
            needs = FIELD_TYPES[name][-1].__name__
            raise ValueError(f"its config field {name} is {value!r}, not of type {needs}")
    values = {name: value for name, value in config.items() if name in FIELD_TYPES}
    # Two checks are not about the run: its name is checked where it becomes a path (predict.py
    # offers --output instead), and the most threads depends on the machine the file is read on.
    values.pop("name", None)
    if "threads" in values:
        values["threads"] = min(values["threads"], max_threads())
    try:
        validate(Config(**values))
    except ConfigError as err:
        raise ValueError(f"its config field {str(err).removeprefix('--')}") from None


# generator_kwargs: each argument's types and the values this project builds (settings.py's rules).
GENERATOR_ARGUMENTS = {
    "in_channels": ((int,), lambda v: v in (1, 3), "1 or 3"),
    "out_channels": ((int,), lambda v: v in (1, 3), "1 or 3"),
    "ngf": ((int,), lambda v: 1 <= v <= MAX_INT, "a number of filters (1 or more)"),
    "num_downs": ((int,), lambda v: 5 <= v <= 12, "5 to 12 levels (image sides up to 4096)"),
    "norm": ((str,), lambda v: v in NORMS, " or ".join(NORMS)),
    "dropout": ((int, float), lambda v: 0 <= v < 1, "in [0, 1)"),
}
# Config fields that say the same as an argument of generator_kwargs.
SAME_AS_ARGUMENT = {"input_nc": "in_channels", "output_nc": "out_channels", "ngf": "ngf", "norm": "norm",
                    "dropout": "dropout"}  # fmt: skip


def _check_generator_kwargs(checkpoint: dict) -> None:
    """UNetGenerator's arguments: each a value it is built with, matching the generator's weights
    (so that nothing larger than the file is ever built) and the config's fields."""
    kwargs, config = checkpoint["generator_kwargs"], checkpoint["config"]
    if missing := [key for key in GENERATOR_ARGUMENTS if key not in kwargs]:
        raise ValueError(f"its generator_kwargs lack {missing[0]}")
    if unknown := [key for key in kwargs if key not in GENERATOR_ARGUMENTS]:
        raise ValueError(f"its generator_kwargs hold {unknown[0]!r}, not an argument of the U-Net")
    for key, (types, fits, rule) in GENERATOR_ARGUMENTS.items():
        if type(kwargs[key]) not in types or not fits(kwargs[key]):
            raise ValueError(f"its generator_kwargs {key} is {kwargs[key]!r}, not {rule}")
    try:
        read = generator_kwargs_of_weights(checkpoint["generator"], {})
    except ValueError:  # weights without the layers it reads: check_state_dict names the first
        read = {}
    for key in ("in_channels", "out_channels", "ngf", "num_downs", "norm"):
        if key in read and read[key] != kwargs[key]:
            raise ValueError(
                f"its generator_kwargs {key} is {kwargs[key]!r}, its generator's weights {read[key]!r}"
            )
    said = {field: config[field] for field in SAME_AS_ARGUMENT if field in config}
    if "image_size" in config:  # the depth as setup.generator_kwargs derives it
        said["num_downs"] = config.get("num_downs", 0) or unet_depth(config["image_size"])
    for field, value in said.items():
        key = SAME_AS_ARGUMENT.get(field, field)
        if value != kwargs[key]:
            raise ValueError(
                f"its config says {field} {value!r}, but its generator_kwargs {key} {kwargs[key]!r}"
            )


def _check_history(history: dict) -> None:
    """What History.from_dict and the report read: rows of numbers, loss points of equal counts,
    changes {"epoch", "field", "from", "to"}. {} is a history not recorded (the authors' files)."""
    if not history:
        return
    for key, kind in (("epochs", list), ("steps", dict), ("changes", list), ("val_split", str)):
        if key not in history and key in ("epochs", "steps"):
            raise ValueError(f"its history has no {key}")
        if key in history and not isinstance(history[key], kind):
            raise ValueError(f"its history's {key} is a {type(history[key]).__name__}, not a {kind.__name__}")
    for row in history["epochs"]:
        if not isinstance(row, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in row.items()):
            raise ValueError(f"its history's epochs hold {row!r}, not a row of named numbers")
    steps = history["steps"]
    if missing := [name for name in ("epoch", *LOSS_NAMES) if name not in steps]:
        raise ValueError(f"its history's steps have no {missing[0]}")
    for name, points in steps.items():
        if (
            not isinstance(points, list)
            or len(points) != len(steps["epoch"])
            or not all(map(_is_number, points))
        ):
            raise ValueError(f"its history's steps {name!r} are not one number per logged point")
    for change in history.get("changes", []):
        if not isinstance(change, dict) or set(change) != {"epoch", "field", "from", "to"}:
            raise ValueError(f"its history's changes hold {change!r}, not {{epoch, field, from, to}}")
    if history.get("val_split", "") not in ("", "val", "test", "train"):
        raise ValueError(f"its history's val_split is {history['val_split']!r}, not val, test or train")


def _check_progress(checkpoint: dict) -> None:
    """Where the next epoch stands, and how many processes wrote it (a full checkpoint)."""
    progress = checkpoint["progress"]
    for key in ("iteration", "in_window", "batches", "total", "window"):
        if key not in progress:
            raise ValueError(f"its progress has no {key}")
        value, sums = progress[key], key in ("total", "window")
        if sums and not (
            isinstance(value, list) and len(value) == len(LOSS_NAMES) and all(map(_is_number, value))
        ):
            raise ValueError(f"its progress {key} is {value!r}, not the {len(LOSS_NAMES)} sums of the losses")
        if not sums and not _is_count(value):
            raise ValueError(f"its progress {key} is {value!r}, not a count (0 or more)")
    if not _is_count(checkpoint["world_size"], least=1):
        raise ValueError(f"its world_size is {checkpoint['world_size']!r}, not a number of processes")


def generator_kwargs_of_weights(weights: dict, config: dict) -> dict:
    """UNetGenerator's arguments read off its weights: files older than generator_kwargs."""
    try:
        # Shapes (ngf, in, 4, 4) and (2 ngf, out, 4, 4):
        first, last = weights["down.0.weight"], weights["final.1.weight"]
        return {
            "in_channels": first.shape[1],
            "out_channels": last.shape[1],
            "ngf": first.shape[0],
            "num_downs": 1 + sum(1 for k in weights if k.startswith("down.") and k.endswith(".1.weight")),
            "norm": "batch" if any(k.endswith("running_mean") for k in weights) else "instance",
            "dropout": config.get("dropout", 0.5),
        }
    except (KeyError, AttributeError, IndexError, TypeError) as err:
        raise ValueError(f"cannot rebuild the generator from it ({err!r})") from None
