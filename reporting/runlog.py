"""What a run records of itself: the record of how it was made (results/<name>/config.json:
the config as asked and as resolved, the versions, where and when) and the log of everything it
prints (results/<name>/train.log)."""

from __future__ import annotations

import dataclasses
import datetime
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

import torch

from utils import keep_tracebacks_in, open_own_file

PROJECT_DIR = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# The record of the run: config.json
# ---------------------------------------------------------------------------------------------


def git_version(folder: Path = PROJECT_DIR, timeout: float = 5.0) -> dict | None:
    """{"commit", "dirty"} of the project's checkout, or None where git or the checkout is missing
    (an unpacked copy, no git installed, a repository owned by someone else)."""

    def git(*args: str) -> subprocess.CompletedProcess:
        # --no-optional-locks: asking must not write .git/index under another git process.
        return subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, text=True, timeout=timeout
        )

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return None
        # Tracked files only: untracked data, checkpoints and results are not the code.
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": commit.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(state, train_pairs: int, val_pairs: int | None) -> dict:
    """config.json: the Config fields as asked ("config", which `train.py --config FILE` reads
    back), what they resolved to on this machine, the versions, and when and where it started."""
    import torchvision

    cfg, world = state.cfg, state.world
    resolved = {
        "device": str(state.device),
        "precision": str(state.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "world_size": world.size,
        "global_batch": cfg.batch_size * world.size,
        "generator_depth": state.generator_kwargs["num_downs"],
        "lr_decay_epochs": min(cfg.lr_decay_epochs, cfg.epochs),  # as train.lr_factor clamps it
        "data_root": str(Path(cfg.data_root).resolve()),
        "train_pairs": train_pairs,
        "val_pairs": val_pairs,
    }
    if state.device.type == "cuda":
        resolved["gpu"] = torch.cuda.get_device_name(state.device)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "project": git_version(),
    }
    return {
        "config": dataclasses.asdict(cfg),
        "resolved": resolved,
        "versions": versions,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "start": {
            "epoch": state.epoch,
            "iteration": state.progress.iteration,
            "resumed": bool(state.epoch or state.progress.iteration),
        },
        "changes": state.history.changes,  # settings changed when the run was continued
        "host": platform.node(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


# ---------------------------------------------------------------------------------------------
# train.log: everything the run prints, also in a file
# ---------------------------------------------------------------------------------------------

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour and cursor codes


class _Tee:
    """A stand-in for sys.stdout or sys.stderr: writes go to the stream and, line by line, to the
    run's log; everything else (isatty, fileno, encoding) is the stream's."""

    def __init__(self, stream: TextIO, log: "RunLog") -> None:
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._log.line(line)
        return written

    def finish(self) -> None:
        # An unfinished last line is still a line, unless it is a terminal frame (\r).
        if self._partial and "\r" not in self._partial:
            self._log.line(self._partial)
        self._partial = ""

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class RunLog:
    """`with RunLog(): ...` copies every line printed to stdout and stderr into the run's
    train.log, appended across resumes, each line stamped with the time.

    It is entered before the run prints anything (data warnings, "resuming ..."), but the file
    is only named later (open()), when the run's folder is settled: until then, lines wait in
    memory (--resume false first moves the old run's folder aside). Terminal frames (text
    before a carriage return) and colour codes are left out; progress bars draw on the real
    stream (`console_err`), not through here. An error that ends the run is logged as the
    `error: ...` line the script prints. Inactive (active=False, torchrun ranks > 0), it does
    nothing.
    """

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.console_out, self.console_err = sys.stdout, sys.stderr
        self.file: TextIO | None = None
        self.failed = False  # the file could not be written: lines go to the console only
        self.waiting: list[str] = []
        self.tees: list[_Tee] = []

    def __enter__(self) -> "RunLog":
        if self.active:
            self.console_out, self.console_err = sys.stdout, sys.stderr
            self.tees = [_Tee(sys.stdout, self), _Tee(sys.stderr, self)]
            sys.stdout, sys.stderr = self.tees
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.active:
            return
        for tee in self.tees:
            tee.finish()
        sys.stdout, sys.stderr = self.console_out, self.console_err
        if isinstance(error, Exception):  # the script prints it as one line once we are gone
            self.line(f"error: {error}")
        elif isinstance(error, KeyboardInterrupt):
            self.line("stopped at once (a second Ctrl-C)")
        if self.file is not None:
            self.file.close()
            self.file = None

    def open(self, path: Path) -> None:
        """Append from now on to `path`, starting with the lines printed so far."""
        if not self.active:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open_own_file(path, "a", encoding="utf-8", buffering=1)  # line-buffered: tail -f
        except OSError as err:
            self.console_err.write(f"warning: cannot write {path} ({err}); the run goes on without it\n")
            self.failed, self.waiting = True, []
            return
        keep_tracebacks_in(path)  # an unexpected error's traceback goes to the run's own log
        waiting, self.waiting = self.waiting, []
        for line in waiting:
            self._write(line)

    def line(self, text: str) -> None:
        text = _ESCAPES.sub("", text.rsplit("\r", 1)[-1]).rstrip()
        if not text.strip():
            return
        stamped = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {text}"
        if self.file is not None:
            self._write(stamped)
        elif not self.failed:
            self.waiting.append(stamped)

    def _write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
        except OSError as err:  # a full disk must not stop the training; the console still shows all
            self.console_err.write(
                f"warning: cannot append to {self.file.name} ({err}); stopped logging to it\n"
            )
            self.file.close()
            self.file, self.failed = None, True
