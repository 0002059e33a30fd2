"""files/paths.py, the one rule for output paths: names that name nothing, plain names, paths that
leave their root (by .., by a link, by an absolute path), entries of the wrong kind, inputs and
files a writer did not make."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from files.paths import (
    Inputs,
    PathError,
    check_target,
    check_targets,
    foreign_entry,
    html_mark,
    made_by,
    output_path,
    plain_name,
    save_png,
)

WRITER = "a writer"


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["", ".", "..", "/", "a/..", "./"])
def test_a_name_that_names_no_file_is_one_line_naming_the_setting(name):
    with pytest.raises(PathError) as err:
        output_path(name, "--export", kind=None)
    assert one_line(err).startswith(f"--export '{name}': names no file")


@pytest.mark.parametrize("name", ["", ".", "..", "../test", "a/b", "/abs", "a\\b", "nul\0"])
def test_a_plain_name_has_no_separator_and_is_not_special(name, tmp_path):
    with pytest.raises(PathError) as err:
        output_path(name, "--split", root=tmp_path, plain=True, kind="folder")
    assert one_line(err).startswith(f"--split '{name}': must be a plain folder name inside {tmp_path}")
    with pytest.raises(PathError):
        plain_name(name, "--split")
    assert output_path("test", "--split", root=tmp_path, plain=True) == tmp_path / "test"


def test_a_path_that_leaves_its_root_is_refused(tmp_path):
    root = tmp_path / "results"
    (root / "m").mkdir(parents=True)
    (root / "m" / "up").symlink_to(tmp_path)  # a link leading out
    (root / "m" / "here").symlink_to(".")  # a link leading to the root itself
    for name, words in [
        ("../x", "outside"),
        (str(tmp_path / "x"), "outside"),  # an absolute path
        ("up/x", "outside"),
        ("here", "itself"),
        ("sub/..", "names no"),
    ]:
        with pytest.raises(PathError) as err:
            output_path(name, "--name", root=root / "m", kind="folder")
        assert words in one_line(err) and one_line(err).startswith(f"--name '{name}'"), name
    assert output_path("a/../b", "--name", root=root, kind="folder") == root / "a/../b"  # stays inside


def test_a_file_is_placed_where_its_link_is_and_a_folder_where_its_link_leads(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "file.png").symlink_to(tmp_path / "outside" / "x.png")  # a rename replaces the link
    assert output_path("file.png", "--output", root=root) == root / "file.png"
    (root / "folder").symlink_to(tmp_path / "outside")  # files written in it land outside
    with pytest.raises(PathError, match="outside"):
        output_path("folder", "--output", root=root, kind="folder")


def test_an_entry_of_the_wrong_kind_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        ("pipe", "file", "is a FIFO (named pipe), not a regular file"),
        ("folder", "file", "is a folder, not a regular file"),
        ("file", "folder", "exists and is not a folder"),
        ("pipe", "folder", "exists and is not a folder"),
    ]
    for name, kind, words in cases:
        with pytest.raises(PathError) as err:
            output_path(tmp_path / name, "--output", kind=kind)
        assert words in one_line(err) and "--output" in one_line(err), name
    assert output_path(tmp_path / "file", "--output") == tmp_path / "file"
    assert output_path(tmp_path / "missing" / "deeper", "--output") == tmp_path / "missing" / "deeper"
    assert output_path(tmp_path / "file" / "under", "--output")  # the write itself names that problem


def test_a_target_is_never_an_input_nor_in_the_data_root_even_with_force(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    image = tmp_path / "in.png"
    image.write_bytes(b"input")
    (tmp_path / "soft.png").symlink_to(image)
    os.link(image, tmp_path / "hard.png")
    (tmp_path / "folder_link").symlink_to(tmp_path)
    inputs = Inputs([image], [data])
    for target in [image, tmp_path / "soft.png", tmp_path / "hard.png", tmp_path / "folder_link" / "in.png"]:
        with pytest.raises(PathError) as err:
            check_target(target, "--output", inputs=inputs, force=True)
        assert f"would overwrite the input {image}; give a new name" in one_line(err), target
    with pytest.raises(PathError, match="is inside the data root"):
        check_target(data / "new.png", "--output", inputs=inputs, force=True)
    check_target(tmp_path / "new.png", "--output", inputs=inputs)


def test_a_file_the_writer_did_not_make_needs_force(tmp_path):
    mine, theirs = tmp_path / "mine.png", tmp_path / "theirs.png"
    save_png(Image.new("RGB", (4, 4)), mine, WRITER)
    Image.new("RGB", (4, 4)).save(theirs)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(theirs)
    own = {"made_here": lambda path: made_by(path, WRITER), "writer": WRITER}
    check_target(mine, "--output", **own)
    check_target(tmp_path / "link.png", "--output", **own)  # the rename replaces the link, not theirs
    with pytest.raises(PathError) as err:
        check_target(theirs, "--output", **own)
    assert one_line(err) == (
        f"--output: {theirs} exists and was not written by {WRITER}; "
        "give --force to replace it, or a new name"
    )
    check_target(theirs, "--output", force=True, **own)
    with pytest.raises(PathError, match="FIFO"):
        check_target(tmp_path / "pipe.png", "--output", force=True, **own)
    with pytest.raises(PathError, match="theirs.png"):
        check_targets([mine, theirs], "--output", **own)


def test_a_writer_knows_its_files_by_their_mark(tmp_path):
    save_png(Image.new("RGB", (4, 4)), tmp_path / "a.png", WRITER)
    (tmp_path / "a.json").write_text(json.dumps({"written_by": WRITER, "x": 1}))
    (tmp_path / "a.html").write_text(f"<html><body>{html_mark(WRITER)}</body></html>")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "b.json").write_text("[1, 2]")
    (tmp_path / "b.html").write_text("<p>a page</p>")
    (tmp_path / "c.png").write_bytes(b"not a png")
    (tmp_path / "c.json").write_text("{broken")
    assert [p.name for p in sorted(tmp_path.iterdir()) if made_by(p, WRITER)] == ["a.html", "a.json", "a.png"]
    assert not made_by(tmp_path / "a.png", "another writer")


def test_a_folder_holding_what_the_writer_did_not_make_is_found(tmp_path):
    def own(path: Path) -> bool:
        return made_by(path, WRITER)

    assert foreign_entry(tmp_path / "missing", own) is None
    save_png(Image.new("RGB", (4, 4)), tmp_path / "1.png", WRITER)
    (tmp_path / "sub").mkdir()
    save_png(Image.new("RGB", (4, 4)), tmp_path / "sub" / "1.png", WRITER)
    (tmp_path / ".1.png.123.tmp.png").write_bytes(b"a killed write's temporary file")
    assert foreign_entry(tmp_path, own, ["sub"]) is None
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "2.png")
    assert foreign_entry(tmp_path, own, ["sub"]) == tmp_path / "sub" / "2.png"
    assert foreign_entry(tmp_path, own) == tmp_path / "sub"  # a folder it does not write in
