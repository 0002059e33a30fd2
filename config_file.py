"""Reading ``--config FILE.json`` safely: a bounded read, a bounded depth, and every value of
exactly its field's JSON type.

A config file is a flat object of fields (or a run's results/<name>/config.json, whose sections
are a few levels deep), so anything much larger or deeper is not one: reading stops at MAX_BYTES
(a file such as /dev/zero never ends) and nesting beyond MAX_DEPTH is refused before the parser
recurses into it. Values are never coerced: a list, an object or null is not a string, 1 is not
true, true is not 1; only an integer stands for a float, as in the JSON the project writes.

Standard library only, like config.py: ``--help`` and a bad setting stay fast.
"""

from __future__ import annotations

import json
import math
import os
import re

MAX_BYTES = 1 << 20  # 1 MiB: a config.json of a run is about 3 KB
MAX_DEPTH = 8  # a run's config.json nests 3 levels

# A JSON string (with its escapes): skipped when counting the brackets that nest.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def read_json(path: str) -> object:
    """The JSON value in `path`; ValueError (a message without the path) when it is not one within
    the bounds, or when an object names a key twice."""
    with open(path, "rb") as file:
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
