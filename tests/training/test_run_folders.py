"""A run owns exactly its two folders, checkpoints/<name>/ and results/<name>/ (docs/recovery.md):
one lock each, by the folder's real path; a new start moves both aside, by rename only, to free
names; neither folder may be or hold what the run reads; and start-up deletes only the temporary
files of the project's own killed writes, in those folders, following no link."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import os
import re
import shutil
import types
from pathlib import Path

import pytest
from conftest import cli_args, error_lines, latest, run_main, run_script, start_script, tiny_run, wait_for

import train
from files.writing import atomic_write, is_temporary_name, temporary_name
from training import preflight, run_control, session
from utils import OutputError


@pytest.fixture
def tiny(synthetic_split, tmp_path):
    """tiny_run at a constant lr without TensorBoard: run "run" in tmp_path/ck and tmp_path/res."""
    return tiny_run(synthetic_split, tmp_path, epochs=1, lr_decay_epochs=0, tensorboard="false")


def no_work(*args, **kwargs):
    raise AssertionError("work started: the error had to come before it")


def contents(*tops: Path) -> dict[str, str]:
    """Every file and link under `tops` (links not followed), with a digest of what it holds."""
    found = {}
    for top in tops:
        for root, dirs, files in os.walk(top):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                path = Path(root, name)
                data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
                found[str(path)] = hashlib.sha256(data).hexdigest()
    return found


def moved_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "the previous run's files in" in line]


# ---------------------------------------------------------------------------------------------
# A new start moves both folders aside, whatever is missing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("removed", ["latest.pt", "the checkpoint folder"])
def test_a_new_start_from_resume_from_moves_the_old_run_aside_never_over_it(tiny, tmp_path, capsys, removed):
    """Run m (2 epochs), run other; then m's latest.pt (or its whole checkpoint folder) is
    deleted and m starts again from other's best.pt: m's old files are moved aside, both
    folders, and said; none of them is overwritten, and the new train.log is the new run's alone."""
    ck, res = tmp_path / "ck", tmp_path / "res"
    m = dataclasses.replace(tiny, name="m", epochs=2)
    train.train(m)
    train.train(dataclasses.replace(tiny, name="other", lr=1e-3))
    if removed == "latest.pt":
        (ck / "m" / "latest.pt").unlink()
    else:
        shutil.rmtree(ck / "m")
    old = contents(ck / "m", res / "m")
    old_log = (res / "m" / "train.log").read_text()
    capsys.readouterr()
    train.train(dataclasses.replace(m, resume_from=str(ck / "other" / "best.pt")))
    lines = moved_lines(capsys.readouterr().out)
    folders = [res / "m"] if removed != "latest.pt" else [ck / "m", res / "m"]
    assert len(lines) == len(folders) and all(line.startswith("a new run: ") for line in lines)
    for folder, line in zip(folders, lines):
        (aside,) = folder.parent.glob("m.old-*")
        assert f"files in {folder} are now in {aside}" in line
        assert {p.replace(str(aside), str(folder)): h for p, h in contents(aside).items()} == {
            p: h for p, h in old.items() if p.startswith(str(folder) + os.sep)
        }, "moved aside as they were"
    assert old_log not in (res / "m" / "train.log").read_text()
    assert [row["epoch"] for row in latest(m)["history"]["epochs"]] == [1, 2]  # other's epoch 1, then 2
    assert len((res / "m" / "history.csv").read_text().splitlines()) == 1 + 2


def test_resume_from_inside_the_runs_own_folder_is_read_before_it_is_moved_aside(tiny, tmp_path, capsys):
    """--resume false --resume_from <its own snapshot> (what an unloadable latest.pt suggests):
    the snapshot is read first, then kept in the folder moved aside."""
    train.train(dataclasses.replace(tiny, save_every=1))
    snapshot = tmp_path / "ck" / "run" / "epoch_001.pt"
    digest = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    train.train(dataclasses.replace(tiny, resume=False, resume_from=str(snapshot), epochs=2))
    (aside,) = (tmp_path / "ck").glob("run.old-*")
    assert hashlib.sha256((aside / "epoch_001.pt").read_bytes()).hexdigest() == digest
    out = capsys.readouterr().out
    assert latest(tiny)["epoch"] == 2 and len(moved_lines(out)) == 2
    assert f"resuming {aside / 'epoch_001.pt'}: epoch 2" in out, "named where it is now"


def test_one_folder_for_checkpoints_and_results_is_locked_and_moved_once(tiny, tmp_path, capsys):
    same = dataclasses.replace(tiny, results_dir=tiny.checkpoint_dir)
    train.train(same)
    train.train(dataclasses.replace(same, resume=False))
    (aside,) = (tmp_path / "ck").glob("run.old-*")
    assert len(moved_lines(capsys.readouterr().out)) == 1
    assert (aside / "latest.pt").is_file() and (aside / "history.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["run", aside.name]  # no lock left


# ---------------------------------------------------------------------------------------------
# Moving aside is a rename, to a free name, or nothing at all
# ---------------------------------------------------------------------------------------------


def old_run(tmp_path: Path) -> tuple[Path, Path]:
    folders = (tmp_path / "ck" / "run", tmp_path / "res" / "run")
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "file").write_text(f"the old run's {folder.parent.name}")
    return folders


def rename_failing(monkeypatch, at: Path, code: int) -> None:
    """os.rename of `at` fails as a mount point (EBUSY) or another file system (EXDEV) does; any
    copy-and-delete fails the test."""
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(src) == at:
            raise OSError(code, os.strerror(code), str(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    for name in ("move", "copytree", "rmtree", "copy2"):
        monkeypatch.setattr(shutil, name, no_work)


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV])
@pytest.mark.parametrize("failing", [0, 1])  # the checkpoint folder, or the results folder after it
def test_a_folder_that_cannot_be_renamed_moves_nothing(tmp_path, monkeypatch, code, failing):
    folders = old_run(tmp_path)
    before = contents(tmp_path)
    rename_failing(monkeypatch, folders[failing], code)
    with pytest.raises(OutputError) as err:
        run_control.move_aside(*folders)
    line = str(err.value)
    assert line.startswith(f"{folders[failing]}: cannot be moved aside") and os.strerror(code) in line
    assert "moved nothing" in line and "\n" not in line
    assert contents(tmp_path) == before and not list(tmp_path.glob("*/run.old-*"))


def test_a_mount_point_refuses_resume_false_in_one_line_and_keeps_the_run(
    tiny, tmp_path, monkeypatch, capsys
):
    train.train(tiny)
    before = contents(tmp_path / "ck", tmp_path / "res")
    rename_failing(monkeypatch, tmp_path / "ck" / "run", errno.EBUSY)
    code, _, (line,) = run_main(
        train.main, [*cli_args(tiny), "--resume", "false"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and f"{tmp_path / 'ck' / 'run'}: cannot be moved aside" in line, line
    assert "Device or resource busy" in line and "moved nothing" in line
    assert contents(tmp_path / "ck", tmp_path / "res") == before


class Fixed(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2024, 1, 2, 3, 4, 5)


def test_taken_old_names_are_passed_over_for_the_first_free_one_of_both(tiny, tmp_path, monkeypatch, capsys):
    """run.old-<stamp> taken in ck/ (a folder of an earlier move), run.old-<stamp>-2 in res/ (a
    file): both folders go to run.old-<stamp>-3, and the names taken stay as they were."""
    monkeypatch.setattr(run_control, "datetime", types.SimpleNamespace(datetime=Fixed))
    train.train(tiny)
    stamp = "20240102-030405"
    (tmp_path / "ck" / f"run.old-{stamp}").mkdir()
    (tmp_path / "ck" / f"run.old-{stamp}" / "kept").write_text("an earlier run")
    (tmp_path / "res" / f"run.old-{stamp}-2").write_text("a file of the user's")
    taken = contents(tmp_path / "ck" / f"run.old-{stamp}", tmp_path / "res" / f"run.old-{stamp}-2")
    train.train(dataclasses.replace(tiny, resume=False))
    for top in ("ck", "res"):
        assert (tmp_path / top / f"run.old-{stamp}-3").is_dir()
    assert (tmp_path / "ck" / f"run.old-{stamp}-3" / "latest.pt").is_file()
    assert (tmp_path / "res" / f"run.old-{stamp}-2").read_text() == "a file of the user's"
    assert contents(tmp_path / "ck" / f"run.old-{stamp}") == {
        k: v for k, v in taken.items() if f"run.old-{stamp}{os.sep}" in k
    }
    assert len(moved_lines(capsys.readouterr().out)) == 2


# ---------------------------------------------------------------------------------------------
# One lock per folder, by its real path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["../res/.", "link to res", "the folder a link"])
def test_a_second_run_writing_in_a_locked_results_folder_stops_before_writing(
    tiny, tmp_path, monkeypatch, capsys, spelling
):
    """The same results folder, whatever its spelling, under another --checkpoint_dir: one line
    naming the folder and its holder, and nothing of either run moved or written."""
    train.train(tiny)
    res = tmp_path / "res"
    args = [*cli_args(tiny), "--checkpoint_dir", tmp_path / "ck2"]
    if spelling == "../res/.":
        args += ["--results_dir", f"{tmp_path / 'ck'}/../res/."]
    elif spelling == "link to res":
        (tmp_path / "link").symlink_to(res)
        args += ["--results_dir", tmp_path / "link"]
    else:
        (res / "alias").symlink_to(res / "run")
        args += ["--name", "alias"]
    with run_control.run_lock(tmp_path / "ck" / "run", res / "run"):  # the first run, training
        before = contents(tmp_path)
        code, _, (line,) = run_main(train.main, args, tmp_path, monkeypatch, capsys)
        assert contents(tmp_path) == before
    assert code == 1 and f"being trained by process {os.getpid()}" in line, line
    folder = res / "alias" if spelling == "the folder a link" else Path(args[-1]) / "run"
    assert line.startswith(f"error: {folder}: "), line
    assert "writes in this folder" in line and not (tmp_path / "ck2" / "run").exists()


def test_both_folders_are_locked_and_the_locks_are_gone_after(tmp_path):
    ck, res = tmp_path / "ck" / "run", tmp_path / "res" / "run"
    with run_control.run_lock(ck, res):
        assert (tmp_path / "ck" / ".run.lock").is_file() and (tmp_path / "res" / ".run.lock").is_file()
        for other in (res, tmp_path / "ck" / ".." / "res" / "run", ck):
            with pytest.raises(
                run_control.RunLockError, match=f"^{re.escape(str(other))}: a run being trained"
            ):
                with run_control.run_lock(tmp_path / "elsewhere" / "run", other):
                    pass
        assert not (tmp_path / "elsewhere" / ".run.lock").exists(), (
            "a refused run lets go of the locks it took"
        )
    assert not list((tmp_path / "ck").iterdir()) and not list((tmp_path / "res").iterdir())


def test_a_folder_that_is_a_link_is_locked_by_its_target_and_by_its_own_name(tmp_path):
    base = tmp_path.resolve()
    (base / "big" / "run").mkdir(parents=True)
    (base / "ck").mkdir()
    (base / "ck" / "run").symlink_to(base / "big" / "run")
    locks = [lock for lock, _ in run_control.lock_files([base / "ck" / "run", base / "big" / "run"])]
    assert locks == [base / "big" / ".run.lock", base / "ck" / ".run.lock"]


@pytest.mark.slow  # two training processes
def test_two_runs_of_one_results_folder_at_once_the_second_stops(tiny, tmp_path):
    first = start_script("train.py", *cli_args(dataclasses.replace(tiny, epochs=200)), cwd=tmp_path)
    try:
        wait_for(tmp_path / "ck" / "run" / "latest.pt", first)
        second = run_script("train.py", *cli_args(tiny), "--checkpoint_dir", tmp_path / "ck2", cwd=tmp_path)
        (line,) = error_lines(second)
        assert second.returncode == 1 and line.startswith(f"error: {tmp_path / 'res' / 'run'}: "), line
        assert f"being trained by process {first.pid}" in line
        assert not (tmp_path / "ck2" / "run").exists() and not list((tmp_path / "res").glob("run.old-*"))
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------------------------------------
# The run's folders hold nothing it reads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,words",
    [
        (["--results_dir", "data", "--name", "facades"], "is --data_root data/facades"),
        (["--checkpoint_dir", ".", "--name", "data"], "holds --data_root data/facades"),
        (["--results_dir", "data/facades", "--name", "val"], "is --data_root's val/"),
        (["--results_dir", "link", "--name", "facades"], "is --data_root data/facades"),
        (["--checkpoint_dir", "code/..", "--name", "code"], "is the project's code"),
        (["--checkpoint_dir", "out", "--results_dir", "out/run"], "holds the other"),
    ],
)
def test_an_output_folder_that_is_or_holds_an_input_is_refused_before_any_work(
    synthetic_split, tmp_path, monkeypatch, capsys, args, words
):
    synthetic_split(n=2, name="data/facades/train")
    synthetic_split(n=1, name="data/facades/val")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("# the project")
    monkeypatch.setattr(preflight, "PROJECT", tmp_path / "code")
    monkeypatch.setattr(session, "prepare_data_root", no_work)
    monkeypatch.setattr(session, "build_data", no_work)
    before = contents(tmp_path)
    argv = ["--data_root", "data/facades", "--tensorboard", "false", "--name", "run", *args]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and words in line and "--name" in line, line
    assert contents(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "code",
        "data",
        "link",
    ]


# ---------------------------------------------------------------------------------------------
# Start-up deletes only the project's own temporaries, in the run's folders
# ---------------------------------------------------------------------------------------------


def test_temporary_names_are_recognised_exactly():
    for name in ("latest.pt", "x" * 251 + ".png", "a", "weird\nname.png", "é" * 40 + ".json", "a.b.c"):
        made = temporary_name(Path("/nowhere") / name)
        assert is_temporary_name(made) and made.startswith(".pix2pix-tmp.") and len(made.encode()) < 200
    for user in (".my.tmpl", ".weights_backup.tmp.pt", ".latest.pt.abc123.tmp.pt", ".x.tmp", "tmp",
                 ".pix2pix-tmp.", ".pix2pix-tmp.12.abcdef.latest.pt.tmp.pt",
                 ".pix2pix-tmp.x1.0123456789abcdef.latest.pt.tmp.pt"):  # fmt: skip
        assert not is_temporary_name(user), user


def test_atomic_write_leaves_its_temporary_under_a_recognised_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "out.png", lambda tmp: seen.append(Path(tmp).name) or Path(tmp).write_bytes(b"x"))
    assert is_temporary_name(seen[0]) and f".{os.getpid()}." in seen[0] and seen[0].endswith(".tmp.png")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def plant_leftovers(run: Path, outside: Path) -> tuple[list[Path], list[Path]]:
    """Leftovers of killed writes in the run's folders (to go) and the user's files (to stay):
    names like a temporary's, and everything in the target of a symlinked samples/."""
    ck, res = run
    stale = [ck / temporary_name(ck / "latest.pt"), res / temporary_name(res / "history.csv")]
    kept = [res / ".my.tmpl", ck / ".weights_backup.tmp.pt", ck / ".latest.pt.abc123.tmp.pt"]
    outside.mkdir(parents=True, exist_ok=True)
    kept += [outside / ".epoch_001.png.abc.tmp.png", outside / temporary_name(outside / "epoch_002.png")]
    for path in stale + kept:
        path.write_bytes(b"half a file")
    return stale, kept


def test_only_the_projects_temporaries_in_the_runs_folders_are_removed(tmp_path):
    ck, res = tmp_path / "ck" / "run", tmp_path / "res" / "run"
    for folder in (ck, res):
        folder.mkdir(parents=True)
    stale, kept = plant_leftovers((ck, res), tmp_path / "elsewhere")
    (res / "samples").symlink_to(tmp_path / "elsewhere")
    (res / "sub").mkdir()
    deeper = res / "sub" / temporary_name(res / "sub" / "x.png")  # not a folder the run writes
    deeper.write_bytes(b"")
    removed = run_control.remove_stale_temporaries(ck) + run_control.remove_stale_temporaries(res, "samples")
    assert sorted(removed) == sorted(stale) and not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half a file" for p in kept) and deeper.exists()


def test_a_continued_run_removes_its_leftovers_and_nothing_else(tiny, tmp_path):
    train.train(tiny)
    ck, res = tmp_path / "ck" / "run", tmp_path / "res" / "run"
    shutil.move(res / "samples", tmp_path / "elsewhere")
    (res / "samples").symlink_to(tmp_path / "elsewhere")
    stale, kept = plant_leftovers((ck, res), tmp_path / "elsewhere")
    train.train(dataclasses.replace(tiny, epochs=2))
    assert latest(tiny)["epoch"] == 2 and not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half a file" for p in kept)
    assert (tmp_path / "elsewhere" / "epoch_002.png").is_file()  # written through the link
