"""Small helpers the project shares: seeding and RNG states, device and precision, opening a file
the run keeps open without following a link (open_own_file), signals, the one-line error exit
(with a console that output which cannot be shown never stops) and a progress bar shown only on
a terminal. Writing whole files atomically is files/writing.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import io
import os
import random
import signal
import stat
import sys
import tempfile
import traceback
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, NoReturn, TextIO

import numpy as np
import torch
from tqdm import tqdm

# ---------------------------------------------------------------------------------------------
# Seeding, devices and precision
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The state of every random-number generator, as tensors and plain data (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mps": torch.mps.get_rng_state() if mps_available() else None,  # dropout's stream on a Mac's GPU
    }


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("mps") is not None and mps_available():  # older checkpoints have no "mps"
        torch.mps.set_rng_state(state["mps"])


def mps_available() -> bool:
    """Whether Apple silicon's GPU can be used: a PyTorch built with MPS, on a Mac that has it."""
    return torch.backends.mps.is_built() and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """ "auto" picks the first CUDA GPU when there is one, else Apple silicon's GPU (MPS), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not mps_available():
        raise ValueError(
            f"--device {name}: MPS (the GPU of Apple silicon Macs) is not available on this machine"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(
            f"--device {name}: this machine has {count} GPU{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})"
        )
    return device


# oneDNN's instruction-set limits (ONEDNN_MAX_CPU_ISA) below its first native-bf16 level.
_ONEDNN_ISAS_WITHOUT_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX) and PyTorch may use
    them: limiting the instruction sets to emulate another CPU (ATEN_CPU_CAPABILITY=avx2, or
    ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16; benchmark.py --emulate) counts as not having them.

    oneDNN also runs bf16 on plain AVX-512 by emulation, but slower than fp32 (docs/performance.md).
    """
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return False
    onednn_limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return (
        "AVX512" in torch.backends.cpu.get_cpu_capability() and onednn_limit not in _ONEDNN_ISAS_WITHOUT_BF16
    )


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for "auto"/"fp32"/"bf16"/"fp16"; "auto" takes bf16 where it is fast.

    On MPS "auto" is fp32: bf16 there needs macOS 14 and M1/M2 chips only emulate it, fp16 would
    need loss scaling, and neither has been measured on a Mac; --precision bf16 can be asked for."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16: only supported on CUDA; use bf16 or fp32 on {device.type}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward passes; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Writing outputs atomically
# ---------------------------------------------------------------------------------------------


class OutputError(RuntimeError):
    """An output file could not be written (disk full, no permission); the message names it."""


def open_own_file(path: str | Path, mode: str, **kwargs) -> IO:
    """open(path, mode) for a file kept open and written in place (the run's lock, train.log), with
    mode "a" or "r+" (both create a missing file). A symbolic link at `path` (O_NOFOLLOW), a hard
    link to another file or anything but a regular file is refused with OutputError: writing
    through it would change a file the project did not create. Files written by atomic_write need
    none of this: a rename replaces a link, not its target."""
    flags = {"a": os.O_WRONLY | os.O_APPEND, "r+": os.O_RDWR}[mode] | os.O_CREAT | os.O_NOFOLLOW
    try:
        # O_NONBLOCK: a FIFO planted at the name fails or opens at once instead of waiting.
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise OutputError(
            f"{path}: is a symbolic link; remove it (the project writes only its own files)"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise OutputError(f"{path}: is {what}; remove it (the project writes only its own files)")
    return os.fdopen(fd, mode, **kwargs)


@contextlib.contextmanager
def on_signals(signals: tuple[int, ...], handle: Callable[[int], None], once: bool) -> Iterator[None]:
    """Call handle(signum) instead of the default action of `signals` (e.g. KeyboardInterrupt);
    with once, a second signal gets the previous action again (a second Ctrl-C stops at once)."""

    def handler(signum, frame) -> None:
        handle(signum)
        if once:
            signal.signal(signum, previous[signum])

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, action in previous.items():
            signal.signal(s, action)


# Where exit_on_errors writes the traceback of an unexpected error: set by its caller, or by the
# run's log once it is open (keep_tracebacks_in); None: a new file in the temporary folder.
_traceback_file: list[Path | None] = [None]


def keep_tracebacks_in(path: str | Path) -> None:
    """Name the file (a run's train.log) the enclosing exit_on_errors appends the full traceback
    of an unexpected error to; until then, or where it cannot be written, it goes to a new file."""
    _traceback_file[0] = Path(path)


@contextlib.contextmanager
def exit_on_errors(
    usage: tuple[type[BaseException], ...],
    failures: tuple[type[BaseException], ...],
    traceback_file: str | Path | None = None,
) -> Iterator[None]:
    """For a script's main(): an expected error becomes one line ``error: ...`` on stderr and exit
    status 2 (a bad setting, `usage`) or 1 (the work failed, `failures`, or memory ran out), and
    a Ctrl-C before the script handles signals itself exits 130; never a traceback.

    Any other exception is a bug: one line names it and where it happened, exit status 1, and its
    full traceback is appended to `traceback_file` (or the file keep_tracebacks_in named), else
    written to a new pix2pix-error-*.log in the temporary folder; the line names the file.
    From here on, console output can never stop the script (never_failing_console)."""
    never_failing_console()
    previous, _traceback_file[0] = _traceback_file[0], Path(traceback_file) if traceback_file else None
    try:
        yield
    except usage as err:
        fail(str(err), 2)
    except failures as err:
        fail(str(err), 1)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C): every file written so far is whole (none is left half-written)", 130)
    except Exception as err:
        if is_out_of_memory(err):
            text = first_line(err) or type(err).__name__
            fail(f"out of memory ({text}); try a smaller --image_size, --batch_size or --ngf/--ndf", 1)
        fail(unexpected_error_line(err, save_traceback(err, _traceback_file[0])), 1)
    finally:
        _traceback_file[0] = previous


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` says memory ran out: MemoryError, or torch's allocators' RuntimeErrors."""
    text = first_line(err)
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text


def unexpected_error_line(err: BaseException, saved: str) -> str:
    """``unexpected <Type> in <file>:<line> (<function>): <message>; <saved>``: the deepest frame
    of the project's own code names what failed."""
    frames = traceback.extract_tb(err.__traceback__)
    project = Path(__file__).resolve().parent
    own = [
        f
        for f in frames
        if Path(f.filename).resolve().is_relative_to(project) and "site-packages" not in f.filename
    ] or frames
    where = ""
    if own:
        frame = own[-1]
        name = Path(frame.filename).resolve()
        shown = name.relative_to(project) if name.is_relative_to(project) else name.name
        where = f" in {shown}:{frame.lineno} ({frame.name})"
    return f"unexpected {type(err).__name__}{where}: {first_line(err) or '(no message)'}; {saved}"


def save_traceback(err: BaseException, path: Path | None) -> str:
    """Append err's full traceback to `path` (a run's log) or else to a new file in the
    temporary folder; returns the words that say where it is."""
    text = "".join(traceback.format_exception(err))
    stamp = datetime.datetime.now()
    if path is not None:
        try:
            with open_own_file(path, "a", encoding="utf-8") as log:
                log.write(f"{stamp:%Y-%m-%d %H:%M:%S}  the full traceback of the error above:\n{text}")
            return f"the full traceback is in {path}"
        except (OSError, OutputError):
            pass  # a new file, below
    try:
        fd, name = tempfile.mkstemp(prefix=f"pix2pix-error-{stamp:%Y%m%d-%H%M%S}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(f"{stamp:%Y-%m-%d %H:%M:%S}  {' '.join(sys.argv)}\n{text}")
        return f"the full traceback is in {name}"
    except OSError as write_err:
        return f"its traceback could not be saved ({write_err})"


class _Console:
    """sys.stdout or sys.stderr that never raises: text the encoding cannot show is escaped
    (\\xe9), and once the stream cannot be written (a closed pipe: `| head`, a full disk:
    `> /dev/full`), it is pointed at os.devnull and the rest is dropped. Everything else (isatty,
    fileno, encoding) is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self._dropped = stream, False

    def write(self, text: str) -> int:
        if not self._dropped:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    encoding = getattr(self._stream, "encoding", None) or "ascii"
                    self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self._dropped:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._drop()

    def _drop(self) -> None:
        """Point the stream's file descriptor at os.devnull: what is still buffered, and what the
        interpreter flushes when it exits, then goes nowhere instead of raising again."""
        self._dropped = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def never_failing_console() -> None:
    """Make printing safe for the rest of the process: sys.stdout and sys.stderr become _Console
    wrappers (once), so output that cannot be shown never stops the work."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Console):
            setattr(sys, name, _Console(stream))


def progress(items: Iterable, total: int | None = None, desc: str = "") -> Iterable:
    """A progress bar over `items` on a terminal; without one (output to a file or a pipe) the
    items alone: a bar's redrawn frames would fill a log with one long line."""
    return tqdm(items, total=total, desc=desc, dynamic_ncols=True, disable=None)  # None: off without a TTY


def map_tensors(tree, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Nested dicts, lists and tuples with `fn` applied to every tensor; other leaves (numbers,
    strings: immutable) are shared."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: map_tensors(value, fn) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(value, fn) for value in tree)
    return tree


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, '' when it has none: enough for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def fail(message: str, status: int) -> None:
    """Print ``error: message`` on stderr and exit with `status`."""
    never_failing_console()
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts: a bad argument is one ``error: ...`` line and exit status 2, as
    every other bad setting is (train.py's fields go through training.cli.parse_args, which says the same)."""

    def __init__(self, description: str | None = None, **kwargs) -> None:
        never_failing_console()  # --help into a closed pipe (| head) is no error either
        super().__init__(
            description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
        )

    def error(self, message: str) -> NoReturn:
        fail(message, 2)
