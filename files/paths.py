"""The one rule for the paths a script writes to.

``output_path`` resolves every output path the same way (relative parts, ``..``, symbolic links,
absolute paths) and refuses, in one line naming the setting, a path that leaves the folder it
must stay in (its root, or the root itself), an empty or special name (``""``, ``.``, ``..``,
``/``), a name that must be one plain folder name but holds a separator, and an existing entry of
the wrong kind (a FIFO, device or folder where a file is expected, a file where a folder is).

``check_target`` then guards each file before it is written: never one of the writer's inputs
(compared resolved and by identity, so links and hard links count), never anything but a regular
file or a link (a link is replaced itself, never followed), and never a file the writer did not
make unless it was given ``--force`` (``check_targets`` checks them all before the first is
written). A writer's default output folder holds nothing but its own files (``check_own_folder``).
A writer recognises its own files by the mark it puts in them (``made_by``): a PNG text chunk, a
JSON key, an HTML comment; files of other formats carry their writer's own mark
(evaluation/export.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image, PngImagePlugin

from files.writing import atomic_write

MARK_KEY = "written_by"  # the JSON key of a writer's mark
PNG_MARK_KEY = "Software"  # the PNG text chunk of a writer's mark (a standard keyword)
HTML_HEAD_BYTES = 64 * 1024  # where an HTML page's mark is looked for
JSON_MAX_BYTES = 256 * 1024 * 1024  # a larger "JSON" file at a writer's target is not its own


class PathError(ValueError):
    """An output path that cannot be used; the message names the setting and says what to give."""


def plain_name(name: str | os.PathLike, setting: str, where: str = "") -> str:
    """`name` as one plain file or folder name (not empty, ., .., and without /, \\ or NUL)."""
    text = os.fspath(name)
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        inside = f" inside {where}" if where else ""
        raise PathError(f"{setting} '{text}': must be a plain folder name{inside} (no /, \\, . or ..)")
    return text


def output_path(
    name: str | os.PathLike,
    setting: str,
    *,
    root: str | os.PathLike | None = None,
    plain: bool = False,
    kind: str | None = "file",
    hint: str = "give another name",
) -> Path:
    """The path `name` names (under `root` when given), checked by the one rule for output paths;
    returned as given (root / name), not resolved, so that messages show what the user wrote.

    With `root`, the path resolved (links followed, `..` applied, an absolute `name` taken as it
    is) must lie strictly inside `root` resolved; `plain` asks for one plain name. `kind` is what
    the path must be when it exists: "file" (a regular file, or a link, which a write replaces
    itself), "folder", or None (a name from which the files written are derived). Raises
    PathError naming `setting` and ending with `hint`."""
    text = os.fspath(name)
    if plain:
        plain_name(text, setting, str(root) if root is not None else "")
    path = Path(root) / text if root is not None else Path(text)
    if not text or path.name in ("", ".", ".."):
        what = kind or "file"
        raise PathError(f"{setting} '{text}': names no {what} (empty, ., .. or /); give a {what} name")
    if root is not None:
        # A file is replaced by rename: a link at its name is replaced itself, so the link's own
        # place counts; a folder is written through, so the place it leads to counts.
        try:
            where = path.parent.resolve() / path.name if kind == "file" else path.resolve()
            top = Path(root).resolve()
        except (OSError, RuntimeError) as err:  # a loop of links (RuntimeError before Python 3.13)
            raise PathError(f"{setting} '{text}': {path} cannot be resolved ({err}); {hint}") from None
        if where == top or not where.is_relative_to(top):
            place = f"{root} itself" if where == top else f"{where}, outside {root}"
            raise PathError(f"{setting} '{text}': {path} resolves to {place}; {hint}")
    if kind is not None:
        _check_kind(path, f"{setting} '{text}'", kind, hint)
    return path


def _check_kind(path: Path, setting: str, kind: str, hint: str) -> None:
    """An existing `path` must be what the writer expects; a missing one (or one under a file:
    the write itself then names the problem) is fine."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if kind == "folder" and not path.is_dir():
        raise PathError(f"{setting}: {path} exists and is not a folder; {hint}")
    if kind == "file" and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise PathError(f"{setting}: {path} is {describe(mode)}; {hint}")


def describe(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder, not a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "a device or other special file, not a regular file"


class Inputs:
    """What a writer reads: files, recognised at any name that leads to them (the same name
    resolved: a link named as an input is replaced itself, its target through it; or the same
    file: a link or a hard link), and folders (the data root), nothing in which may be written.
    Built once, looked up per target, with each folder resolved once: many inputs and targets
    cost linear time (plain strings: pathlib's objects would triple it)."""

    def __init__(
        self, paths: Iterable[str | os.PathLike] = (), roots: Iterable[str | os.PathLike] = ()
    ) -> None:
        self.names: dict[str, Path] = {}
        self.files: dict[tuple[int, int], Path] = {}
        self.folders: dict[str, str] = {}
        self.roots = [(Path(root), os.path.realpath(root)) for root in roots]
        for given in map(Path, paths):
            for name in self.places(given):
                self.names.setdefault(name, given)
            with contextlib.suppress(OSError):  # a missing input is no file to protect
                info = os.stat(given)
                self.files.setdefault((info.st_dev, info.st_ino), given)

    def find(self, target: Path) -> Path | None:
        """The input that writing `target` would overwrite, or None."""
        for name in self.places(target):
            if name in self.names:
                return self.names[name]
        try:
            info = os.stat(target)
        except OSError:
            return None
        return self.files.get((info.st_dev, info.st_ino))

    def root_of(self, target: Path) -> Path | None:
        """The folder of `roots` in which the rename writing `target` would land, or None."""
        written = self.places(target)[0]  # a link at the name is replaced, not followed
        return next((given for given, top in self.roots if _inside(written, top)), None)

    def places(self, path: Path) -> list[str]:
        """Where writing or reading `path` lands: its own name in its folder resolved (a rename
        replaces a link there) and, for a link, where it leads (an open follows it)."""
        folder, name = os.path.split(os.fspath(path))
        if folder not in self.folders:
            self.folders[folder] = os.path.realpath(folder or ".")
        own = os.path.join(self.folders[folder], name)
        return [own, os.path.realpath(own)] if os.path.islink(own) else [own]


def _inside(path: str, folder: str) -> bool:
    """Whether the resolved `path` is the resolved `folder` or lies in it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_target(
    path: Path,
    setting: str,
    *,
    inputs: Inputs | None = None,
    made_here: Callable[[Path], bool] = lambda path: False,
    force: bool = False,
    writer: str = "this script",
) -> None:
    """Refuse to write the file `path` when it is one of `inputs` or lies in one of their roots
    (the data: never, --force or not), is not a regular file or link, or is a regular file that
    `made_here` does not recognise (unless `force`). Raises PathError naming `setting`."""
    inputs = inputs or Inputs()
    given = inputs.find(path)
    if given is not None:
        raise PathError(f"{setting}: writing {path} would overwrite the input {given}; give a new name")
    root = inputs.root_of(path)
    if root is not None:
        raise PathError(f"{setting}: {path} is inside the data root {root}; give a new name")
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(mode):
        return  # replaced by the rename itself; what it points to is never written
    if not stat.S_ISREG(mode):
        raise PathError(f"{setting}: {path} is {describe(mode)}; remove it or give a new name")
    if not force and not made_here(path):
        raise PathError(
            f"{setting}: {path} exists and was not written by {writer}; give --force to replace it, "
            f"or a new name"
        )


def check_targets(
    targets: Iterable[Path],
    setting: str,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    roots: Iterable[str | os.PathLike] = (),
    made_here: Callable[[Path], bool] = lambda path: False,
    force: bool = False,
    writer: str = "this script",
) -> None:
    """check_target for each of `targets`, before any is written (the inputs gathered once)."""
    given = Inputs(inputs, roots)
    for target in targets:
        check_target(target, setting, inputs=given, made_here=made_here, force=force, writer=writer)


def check_own_folder(
    folder: Path,
    made_here: Callable[[Path], bool],
    subfolders: Iterable[str] = (),
    writer: str = "this script",
) -> None:
    """Refuse a default output folder that holds anything its writer did not make (foreign_entry):
    the writer's defaults never mix its files with others' (a run's own pages, say)."""
    found = foreign_entry(folder, made_here, subfolders)
    if found is not None:
        raise PathError(
            f"the default output folder {folder} holds {found}, which {writer} did not write; "
            f"give --force to write there anyway, or a new --output"
        )


def foreign_entry(
    folder: Path, made_here: Callable[[Path], bool], subfolders: Iterable[str] = ()
) -> Path | None:
    """The first entry of `folder` (and of its `subfolders`) that the writer did not make, or None.

    Hidden entries (a killed write's temporary file, .DS_Store) are left aside; links, folders
    other than `subfolders` and regular files without the writer's mark are not the writer's."""
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise PathError(f"{folder}: cannot list this folder ({err.strerror or err})") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.name in subfolders and entry.is_dir() and not entry.is_symlink():
            found = foreign_entry(entry, made_here)
            if found is not None:
                return found
        elif entry.is_symlink() or not entry.is_file() or not made_here(entry):
            return entry
    return None


# ---------------------------------------------------------------------------------------------
# A writer's mark in the files it makes
# ---------------------------------------------------------------------------------------------


def png_mark(writer: str) -> PngImagePlugin.PngInfo:
    """The PNG text chunk (Software: `writer`) to pass to Image.save(..., pnginfo=...)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_MARK_KEY, writer)
    return info


def save_png(picture: Image.Image, path: Path, writer: str, compress_level: int = 1) -> None:
    """Write `picture` as a PNG at `path` (atomically) with `writer`'s mark."""
    mark = png_mark(writer)
    atomic_write(
        path, lambda tmp: picture.save(tmp, format="png", compress_level=compress_level, pnginfo=mark)
    )


def html_mark(writer: str) -> str:
    """The HTML comment that marks a page as `writer`'s (put it in the page's first 64 KB)."""
    return f"<!-- {MARK_KEY}: {writer} -->"


def made_by(path: Path, writer: str) -> bool:
    """Whether the regular file `path` carries `writer`'s mark: the Software text chunk of a PNG,
    the written_by key of a JSON object, or the comment of html_mark in an HTML page."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            with Image.open(path) as image:  # the header and text chunks only, not the pixels
                return image.format == "PNG" and image.info.get(PNG_MARK_KEY) == writer
        if suffix == ".json":
            if path.stat().st_size > JSON_MAX_BYTES:
                return False
            data = json.loads(path.read_bytes())
            return isinstance(data, dict) and data.get(MARK_KEY) == writer
        if suffix in (".html", ".htm"):
            with open(path, "rb") as file:
                return html_mark(writer).encode() in file.read(HTML_HEAD_BYTES)
    except Exception:  # noqa: BLE001  (any file that cannot be read as its kind is not the writer's)
        return False
    return False
