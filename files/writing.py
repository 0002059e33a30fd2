"""Writing a run's files so that nothing is ever half-written or lost: every output file goes to a
temporary file in the same folder, named so that no user's file has its name, and is then moved
into place with ``os.replace``; a crash or kill at any moment leaves either the previous complete
file or the new complete file. Files are opened without following a link the project did not
create (utils.open_own_file). A write that fails is one OutputError line naming the file."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import Callable

from utils import OutputError, first_line

# The temporary files of atomic_write: .pix2pix-tmp.<pid>.<16 hex digits>.<the name's first 32
# characters>.tmp<the name's extension>. No file of a user's has such a name, so a run that finds
# one in its folders knows it for a leftover of a killed write (is_temporary_name) and removes it.
TEMPORARY_PREFIX = ".pix2pix-tmp."
_TEMPORARY_NAME = re.compile(r"\.pix2pix-tmp\.[0-9]+\.[0-9a-f]{16}\..{1,32}\.tmp(\.[^./]{1,15})?", re.DOTALL)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then move it onto `path`.

    A failure leaves the previous `path` as it was, removes the temporary file and raises
    OutputError naming `path`. The temporary file is new (never a file or link already there) and
    named as is_temporary_name recognises; the name stays short whatever the length of `path`'s,
    so that any name the file system allows can be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(path)
        write(tmp)
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as err:
        left = _remove_temporary(tmp)
        raise OutputError(f"cannot write {path}: {first_line(err) or type(err).__name__}{left}") from None
    except BaseException:  # Ctrl-C, or a bug in `write`: no temporary file stays behind either
        _remove_temporary(tmp)
        raise


def temporary_name(path: Path) -> str:
    """A name for a temporary file of `path` (in its folder), of this process, random."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}.{secrets.token_hex(8)}.{path.name[:32]}{_temporary_suffix(path)}"


def is_temporary_name(name: str) -> bool:
    """Whether `name` is that of a temporary file made by atomic_write (of any process)."""
    return _TEMPORARY_NAME.fullmatch(name) is not None


def _new_temporary(path: Path) -> str:
    """Create a new, empty temporary file beside `path` and return its path. O_EXCL: never a file
    (or link) that is already there; the mode is what open() gives a new file (0o666 less the umask)."""
    for _ in range(100):
        tmp = str(path.parent / temporary_name(path))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # 64 random bits taken: try other ones
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def _temporary_suffix(path: Path) -> str:
    """.tmp plus `path`'s extension, which writers such as PIL and ONNX read the format from; a
    long "extension" (a name with a dot near its start) is left out to keep the name short."""
    return f".tmp{path.suffix}" if len(path.suffix) <= 16 else ".tmp"


def _remove_temporary(tmp: str | None) -> str:
    """Remove a failed write's temporary file; '' when it is gone, else the words saying it is left.

    In a folder that became read-only it cannot be removed: it is emptied instead, so that it holds
    no disk space, and named (a run removes such files when it starts)."""
    if tmp is None:
        return ""
    try:
        os.remove(tmp)
        return ""
    except FileNotFoundError:
        return ""
    except OSError as err:
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
        return f" (and its temporary file {tmp} could not be removed: {err.strerror or err}; remove it)"


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file (JSON, HTML) atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
