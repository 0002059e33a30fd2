"""No traceback ever reaches a user: output that cannot be printed (a pipe closed early, a full
disk, a terminal that cannot show a character) never stops a run, a write that fails is one
line naming the file with its temporary file cleaned up, and a bug is one line naming the file
that holds its traceback."""

from __future__ import annotations

import errno
import io
import os
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import run_main, run_script, start_script, write_tiny_checkpoint

import predict
import train
import utils
from files.writing import atomic_write
from utils import OutputError


def tiny_args(synthetic_split, tmp_path: Path, name: str = "run") -> list[str]:
    """A run of one epoch on 4 tiny pairs, writing under tmp_path (ck/ and res/)."""
    root = synthetic_split(n=4, size=72).parent
    synthetic_split(n=2, size=72, name="val")
    return [
        "--data_root", root, "--max_images", "4", "--image_size", "64", "--load_size", "72",
        "--ngf", "8", "--ndf", "8", "--lr_decay_epochs", "0", "--tensorboard", "false", "--epochs", "1",
        "--name", name, "--checkpoint_dir", tmp_path / "ck", "--results_dir", tmp_path / "res",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Output that cannot be printed never stops a run
# ---------------------------------------------------------------------------------------------


def test_a_run_piped_into_head_goes_on_to_its_checkpoint(synthetic_split, tmp_path):
    """`train.py ... | head -1`: the pipe closes after the first line; the run goes on to its end."""
    process = start_script("train.py", *tiny_args(synthetic_split, tmp_path), cwd=tmp_path)
    first = process.stdout.readline()
    process.stdout.close()  # as head -1 does once it has its line
    _, err = process.communicate(timeout=240)
    assert first.startswith("run: reading")
    assert process.returncode == 0 and "Traceback" not in err and "Exception ignored" not in err, err
    assert (tmp_path / "ck" / "run" / "latest.pt").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_run_printing_to_a_full_disk_goes_on_to_its_checkpoint(synthetic_split, tmp_path):
    """`train.py ... > /dev/full` (every write fails with ENOSPC), and stderr too."""
    with open("/dev/full", "w") as full:
        result = run_script(
            "train.py", *tiny_args(synthetic_split, tmp_path), cwd=tmp_path, stdout=full, stderr=full
        )
    assert result.returncode == 0
    assert (tmp_path / "ck" / "run" / "latest.pt").is_file()
    assert "epoch 1/1" in (tmp_path / "res" / "run" / "train.log").read_text(), "the log has it all"


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped(synthetic_split, tmp_path):
    """PYTHONIOENCODING=ascii and --name café: printed as caf\\xe9, the run written as café."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    # As bytes: what the terminal gets, undecoded.
    args = tiny_args(synthetic_split, tmp_path, name="café")
    result = run_script("train.py", *args, cwd=tmp_path, env=env, text=False)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr[-3000:]
    assert b"caf\\xe9" in result.stdout
    assert (tmp_path / "ck" / "café" / "latest.pt").is_file()
    assert "café" in (tmp_path / "res" / "café" / "train.log").read_text(encoding="utf-8")


class Broken(io.StringIO):
    """A stream whose writes fail as a closed pipe's do."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_the_console_drops_what_it_cannot_write(monkeypatch):
    monkeypatch.setattr(sys, "stdout", Broken())
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    utils.never_failing_console()
    utils.never_failing_console()  # once: not wrapped twice
    assert isinstance(sys.stdout, utils._Console) and not isinstance(sys.stdout._stream, utils._Console)
    print("lost, silently")
    print("and again", flush=True)
    print("café", file=sys.stderr, flush=True)
    assert sys.stderr.buffer.getvalue() == b"caf\\xe9\n"


# ---------------------------------------------------------------------------------------------
# A write that fails: one line naming the file, its temporary file cleaned up
# ---------------------------------------------------------------------------------------------


def read_only(monkeypatch, folder: Path, remove_too: bool = True) -> None:
    """Simulate `folder` turning read-only (tests run as root, which permissions do not stop):
    renames into it fail, and so do removals when `remove_too`."""
    real_replace, real_remove = os.replace, os.remove

    def denied(path) -> OSError:
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    def replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().is_relative_to(folder.resolve()):
            raise denied(dst)
        return real_replace(src, dst, *args, **kwargs)

    def remove(path, *args, **kwargs):
        if remove_too and Path(path).resolve().is_relative_to(folder.resolve()):
            raise denied(path)
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "remove", remove)


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "out.csv").write_text("previous")
    read_only(monkeypatch, tmp_path, remove_too=False)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'out.csv'}: .*Permission denied"):
        atomic_write(tmp_path / "out.csv", lambda tmp: Path(tmp).write_text("new"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"] and (
        tmp_path / "out.csv"
    ).read_text() == "previous"


def test_a_temporary_file_that_cannot_be_removed_is_emptied_and_named(tmp_path, monkeypatch):
    """In a folder made read-only mid-write the clean-up fails too: no second error, the same
    one line, which names the emptied temporary file (a run removes such files when it starts)."""
    read_only(monkeypatch, tmp_path)
    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "out.bin", lambda tmp: Path(tmp).write_bytes(b"x" * 10_000))
    (left,) = [p for p in tmp_path.iterdir() if p.name != "out.bin"]
    assert str(err.value).startswith(f"cannot write {tmp_path / 'out.bin'}: [Errno 13] Permission denied")
    assert f"its temporary file {left} could not be removed" in str(err.value) and "\n" not in str(err.value)
    assert left.stat().st_size == 0 and left.name.startswith(".") and ".tmp" in left.name


def test_a_results_folder_made_read_only_mid_run_is_one_line(synthetic_split, tmp_path, monkeypatch, capsys):
    args = tiny_args(synthetic_split, tmp_path)
    read_only(monkeypatch, tmp_path / "res" / "run" / "samples")  # the epoch's pictures: mid-run
    code, _, (line,) = run_main(train.main, args, tmp_path, monkeypatch, capsys)
    assert code == 1 and f"error: cannot write {tmp_path / 'res' / 'run' / 'samples'}" in line
    assert "Permission denied" in line and "could not be removed" in line


def test_a_long_file_name_can_be_written(tmp_path):
    """A 255-byte name is legal; the temporary name beside it must not be longer."""
    name = "x" * 251 + ".png"
    atomic_write(tmp_path / name, lambda tmp: Path(tmp).write_bytes(b"png"))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_predict_writes_a_245_character_file_name(tmp_path):
    from PIL import Image

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt", epoch=1, name="tiny")
    name = "y" * 241 + ".png"
    Image.new("RGB", (32, 32), (200, 100, 50)).save(tmp_path / name)
    result = run_script(
        "predict.py", tmp_path / name, "--checkpoint", checkpoint, "--output", tmp_path / "out", cwd=tmp_path
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (tmp_path / "out" / name).is_file()


# ---------------------------------------------------------------------------------------------
# A bug: one line, the traceback in a file it names
# ---------------------------------------------------------------------------------------------


def test_a_bug_mid_run_has_its_traceback_in_train_log(synthetic_split, tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("no such loss")

    monkeypatch.setattr(train, "train_step", bug)
    code, _, (line,) = run_main(
        train.main, tiny_args(synthetic_split, tmp_path), tmp_path, monkeypatch, capsys
    )
    log = tmp_path / "res" / "run" / "train.log"
    assert code == 1 and line.startswith("error: unexpected KeyError in tests/test_no_traceback.py:")
    assert line.endswith(f"(bug): 'no such loss'; the full traceback is in {log}")
    text = log.read_text()
    assert "the full traceback of the error above:" in text and "Traceback (most recent call last)" in text
    assert "in train_one_epoch" in text and text.rstrip().endswith("KeyError: 'no such loss'")


def test_a_bug_in_predict_names_the_file_of_its_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "run", lambda args: [][1])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, _, (line,) = run_main(
        predict.main, ["--checkpoint", "x.pt", "in.png"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and line.startswith("error: unexpected IndexError in tests/test_no_traceback.py:")
    saved = Path(line.split("the full traceback is in ")[1])
    assert saved.parent == tmp_path and "IndexError: list index out of range" in saved.read_text()


def test_a_traceback_that_cannot_be_saved_is_still_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "run", lambda args: 1 / 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    code, err, (line,) = run_main(
        predict.main, ["--checkpoint", "x.pt", "in.png"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and "unexpected ZeroDivisionError" in line and "its traceback could not be saved" in line
    assert len(err.splitlines()) == 1
