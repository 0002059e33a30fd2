"""The command line of a run: a Config from the defaults, then ``--config FILE.json``'s fields, then
``--field value`` pairs (``parse_args``); ``python -m training.cli --lr 1e-4`` prints the resolved
config, ``python -m training.cli --markdown`` the page of every field, docs/config.md.

An unknown field says which one was probably meant; a value not of its field's type is one line.
``--config FILE.json`` is read safely: a bounded read, a bounded depth, and every value of
exactly its field's JSON type.

A config file is a flat object of fields (or a run's results/<name>/config.json, whose sections
are a few levels deep), so anything much larger or deeper is not one: reading stops at MAX_BYTES
(a file such as /dev/zero never ends) and nesting beyond MAX_DEPTH is refused before the parser
recurses into it. Values are never coerced: a list, an object or null is not a string, 1 is not
true, true is not 1; only an integer stands for a float, as in the JSON the project writes.

Standard library, config.py and settings.py only: ``--help`` and a bad setting stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import stat
import sys
from dataclasses import fields
from typing import Sequence

from config import SWITCH_MODES, Config
from training.settings import ConfigError, validate

MAX_BYTES = 1 << 20  # 1 MiB: a config.json of a run is about 3 KB
MAX_DEPTH = 8  # a run's config.json nests 3 levels

# A JSON string (with its escapes): skipped when counting the brackets that nest.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def read_json(path: str) -> object:
    """The JSON value in `path`; ValueError (a message without the path) when it is not a regular
    file, not JSON within the bounds, or when an object names a key twice."""
    # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer, and is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"
        raise ValueError(f"it is {kind}, not a regular file")
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 20} MiB, so not a config file")
    text = raw.decode("utf-8")
    if nesting(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels, so not a config file")
    return json.loads(text, object_pairs_hook=_no_twice)


def nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON `text` (brackets inside strings skipped)."""
    depth = deepest = 0
    for char in re.findall(r"[\[\]{}]", _STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_twice(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json's object hook: a key given twice is ambiguous (json would keep the last silently)."""
    data: dict[str, object] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"field {key!r} is given twice")
        data[key] = value
    return data


def shown(value: object) -> str:
    """A JSON value as a message names it: null, true, the number 2.0, the string 'x', an array."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return "an array" if isinstance(value, list) else "an object"


def typed_value(name: str, kind: str, value: object) -> object:
    """`value` as field `name` of type `kind` ("bool", "int", "float" or "str") takes it, or a
    ValueError that says which JSON type the field needs (in the words of the command line's)."""
    if kind == "float" and type(value) in (int, float):
        if not math.isfinite(value):
            raise ValueError(f"--{name}: expected a finite number, got {value}")
        return float(value)
    needs = {
        "bool": (bool, "JSON true or false"),
        "int": (int, "int (a whole JSON number)"),
        "float": (float, "float (a JSON number)"),
        "str": (str, "a JSON string"),
    }
    expected, words = needs[kind]
    if type(value) is not expected:  # type(): True is an int to isinstance, not to a config
        raise ValueError(f"--{name}: expected {words}, got {shown(value)}")
    if kind == "str":
        _check_text(name, value)
    return value


def _check_text(name: str, value: str) -> None:
    """Text fields end up in paths and file names: JSON escapes can spell what no path holds."""
    if "\0" in value:
        raise ValueError(f"--{name}: holds a NUL character, which no file name or setting may")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise ValueError(f"--{name}: holds a lone surrogate (\\ud800-\\udfff), which is not text") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _convert(field: dataclasses.Field, text: str):
    """Turn the command-line text for `field` into a value of the field's declared type."""
    kind = field.type  # a string such as "int", because of `from __future__ import annotations`
    try:
        if kind == "bool":
            return _parse_bool(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {text!r}")
            return value
        return text
    except ValueError as err:
        message = str(err) if kind == "bool" or "finite" in str(err) else f"expected {kind}, got {text!r}"
        raise ConfigError(f"--{field.name}: {message}") from None


def _help(f: dataclasses.Field, default) -> str:
    """One line of --help: the field's description, its allowed values and its default."""
    choices = f.metadata.get("choices")
    allowed = f" One of: {', '.join(c for c in choices if c)}." if choices else ""
    text = f.metadata.get("help", "")
    return f"{text}{'' if text.endswith('.') else '.'}{allowed} Default: {default!r}".replace("%", "%%")


def did_you_mean(option: str) -> str:
    """ "; did you mean --epochs?" for a near miss of a field's name (--epoch), else ""."""
    name = option.lstrip("-").split("=", 1)[0]
    close = difflib.get_close_matches(name, [f.name for f in fields(Config)] + ["config"], n=1)
    return f"; did you mean --{close[0]}?" if close else ""


def _from_file(path: str) -> dict[str, object]:
    """Fields from a JSON file: a plain {field: value} object, or a run's results/<name>/config.json
    (its "config" section). Values keep their JSON types and are checked like the rest."""
    try:
        data = read_json(path)  # at most 1 MiB and 8 levels deep
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"--config {path}: cannot read a JSON object ({err})") from None
    data = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields")
    by_name = {f.name: f for f in fields(Config)}
    unknown = sorted(set(data) - set(by_name))
    if unknown:
        raise ConfigError(f"--config {path}: unknown field {unknown[0]!r}{did_you_mean(unknown[0])}")
    try:  # exactly the field's JSON type: no list, object or null as text, no 1 as true
        return {k: typed_value(k, by_name[k].type, v) for k, v in upgraded_fields(data).items()}
    except ValueError as err:
        raise ConfigError(f"--config {path}: {err}") from None


def upgraded_fields(config: dict) -> dict:
    """Config fields of an older config.json or checkpoint (format 1) in today's types, the rest
    as they are: cuda_graphs was a bool before it became an auto/true/false switch, so true and
    false name the same choice."""
    switches = {f.name for f in fields(Config) if f.metadata.get("choices") == SWITCH_MODES}
    return {
        name: ("true" if value else "false") if name in switches and isinstance(value, bool) else value
        for name, value in config.items()
    }


def parse_args(argv: Sequence[str] | None = None, description: str | None = None) -> Config:
    """Build a Config from defaults, then --config FILE's fields, then ``--field value`` pairs,
    then validate it.

    Raises ConfigError (one line, naming the field) for an unknown field, a value that is not of
    the field's type, or a value that cannot work. Scripts turn it into exit status 2.
    """
    parser = argparse.ArgumentParser(
        description=description,
        allow_abbrev=False,
        exit_on_error=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.json",
        help="start from the fields of this JSON file "
        "(e.g. results/<name>/config.json); options given here still override them",
    )
    defaults = Config()
    for f in fields(Config):
        parser.add_argument(
            f"--{f.name}", default=None, metavar=f.type.upper(), help=_help(f, getattr(defaults, f.name))
        )
    # argparse would print its usage and exit on a bad option; we want our own one-line error.
    try:
        known, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigError(f"{err.argument_name}: {err.message}") from None
    if unknown:
        option = next((u for u in unknown if u.startswith("-")), unknown[0])
        raise ConfigError(
            f"{option}: unknown setting{did_you_mean(option)} (see --help for the fields of config.py)"
        )
    values = _from_file(known.config) if known.config else {}
    values.update(
        {
            f.name: _convert(f, getattr(known, f.name))
            for f in fields(Config)
            if getattr(known, f.name) is not None
        }
    )
    # A new Config, not a replace of the defaults: fields left empty follow the chosen dataset.
    cfg = Config(**values)
    validate(cfg)
    return cfg


def parse_or_exit(argv: Sequence[str] | None = None, description: str | None = None) -> Config:
    """parse_args for scripts: a bad setting prints one line and exits with status 2."""
    try:
        return parse_args(argv, description)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    """Every field as a row of a Markdown table, from the same field metadata as --help."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for f in fields(Config):
        choices = ", ".join(f"`{c}`" for c in f.metadata["choices"] if c) if f.metadata.get("choices") else ""
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{f.default!r}` | {choices} | {meaning} |")
    return "\n".join(rows) + "\n"


CONFIG_PAGE = """\
# Configuration

All hyperparameters are one typed dataclass, `Config` in `config.py`; its defaults are the paper's
facades recipe. Edit the file, or override any field as `--field value` (booleans `true`/`false`),
or start from a JSON file of fields: `python train.py --config configs/maps.json --lr 1e-4`
(the options given after it still win). An unknown field, a wrong type or a value that cannot work
stops at once with one line naming the field (exit status 2). `python train.py --help` shows the
same descriptions and allowed values.

Ready config files, in `configs/`:

- `smoke.json`: a first run of a few minutes on the CPU, 40 facades pairs for 2 epochs, named `smoke`.
- `facades.json`: the paper's facades recipe, every setting written out (the defaults).
- `maps.json`: the paper's maps recipe, aerial photo -> map (AtoB), 200 epochs at batch 1, lambda_l1 100.

A run's own `results/<name>/config.json` is a config file too: `--config results/<name>/config.json`
takes that run's settings, its name included.

This page is generated from the fields' metadata: `python -m training.cli --markdown > docs/config.md`.

"""


def config_page() -> str:
    """docs/config.md: how a run is configured, and the table of every field."""
    return CONFIG_PAGE + markdown_table()


def main() -> None:
    """Print the resolved config of the given options, or with ``--markdown`` docs/config.md."""
    if sys.argv[1:] == ["--markdown"]:
        print(config_page(), end="")
        return
    cfg = parse_or_exit(description=__doc__)
    for f in fields(cfg):
        print(f"{f.name:16s} {getattr(cfg, f.name)!r}")


if __name__ == "__main__":
    main()
