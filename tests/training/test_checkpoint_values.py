"""A checkpoint's values pass the command line's checks and its structure is bounded: a file
edited by hand (and resealed, or written with save_checkpoint) with a value --field could not
take, a nesting no checkpoint has, or the authors' layout with impossible channels is one line
naming the file and the value in predict.py, demo.py, --resume_from and the reseal tool; and the
messages of a file that cannot be read or written say what happened."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, cli_args, run_main, tiny_config, tiny_run
from torch import nn

import demo
import predict
import train
from training import integrity
from training.checkpoint import full_checkpoint
from training.checkpoint_format import CheckpointError, load_checkpoint, save_checkpoint
from training.setup import setup

SPEC = importlib.util.spec_from_file_location("reseal_checkpoint", ROOT / "tools" / "reseal_checkpoint.py")
reseal_checkpoint = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(reseal_checkpoint)


@pytest.fixture
def cfg(synthetic_split, tmp_path):
    """A tiny run's config (its data under tmp_path) whose checkpoints the tests edit."""
    return tiny_run(synthetic_split, tmp_path, epochs=2, tensorboard="false")


def contents_of(cfg) -> dict:
    """A full checkpoint of cfg's run after one epoch, as a plain dict (the tests change it)."""
    saved = full_checkpoint(setup(cfg))
    saved["epoch"] = 1
    return saved


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def torch_save_deep(contents: dict, path) -> None:
    """torch.save of contents nested deeper than pickle's recursion allows by default."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        torch.save(contents, path)
    finally:
        sys.setrecursionlimit(limit)


def refusals(path, cfg, tmp_path, monkeypatch, capsys) -> dict[str, str]:
    """The one line each program says about `path`: predict.py, demo.py, train.py --resume_from."""
    lines = {}
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    code, _, (lines["predict"],) = run_main(
        predict.main, ["--checkpoint", path, "--split", "val"], work, monkeypatch, capsys
    )
    assert code == 1
    with pytest.raises(demo.DemoError) as err:
        demo.load_model(path, "cpu")
    assert "\n" not in str(err.value)
    lines["demo"] = str(err.value)
    argv = [*cli_args(cfg), "--name", "other", "--resume_from", path]
    code, _, (lines["resume_from"],) = run_main(train.main, argv, work, monkeypatch, capsys)
    assert code == 1
    assert not list(work.iterdir()), "nothing is written"
    return lines


EDITS = {
    "ngf": (lambda c: c["config"].update(ngf=-8), "config field ngf: must be > 0, got -8"),
    "in_channels": (
        lambda c: c["generator_kwargs"].update(in_channels=-1),
        "generator_kwargs in_channels is -1, not 1 or 3",
    ),
    "seed_text": (lambda c: c["config"].update(seed="abc"), "config field seed is 'abc', not of type int"),
    "seed_huge": (
        lambda c: c["config"].update(seed=2**70),
        f"config field seed: must be at most 2147483647, got {2**70}",
    ),
    "image_size": (
        lambda c: c["config"].update(image_size="big"),
        "config field image_size is 'big', not of type int",
    ),
    "data_layout": (
        lambda c: c["config"].update(data_layout="weird"),
        "config field data_layout: must be one of aligned, paired_folders, got 'weird'",
    ),
    "history": (lambda c: c["history"].update(epochs="abc"), "history's epochs is a str, not a list"),
    "epoch": (lambda c: c.update(epoch=-5), "its epoch is -5, not a number of epochs trained"),
    "eval_mode": (
        lambda c: c["config"].update(eval_mode="false"),
        "config field eval_mode is 'false', not of type bool",
    ),
    "config_against_weights": (
        lambda c: c["generator_kwargs"].update(ngf=16),
        "generator_kwargs ngf is 16, its generator's weights 8",
    ),
    "progress": (
        lambda c: c["progress"].update(iteration=-3),
        "its progress iteration is -3, not a count",
    ),
}


@pytest.mark.parametrize("edit", EDITS)
def test_values_the_command_line_refuses_are_refused_in_a_checkpoint(
    edit, cfg, tmp_path, monkeypatch, capsys
):
    """Written with save_checkpoint (a checksum that fits, as after a reseal): every program
    refuses it in one line naming the file and the value."""
    change, message = EDITS[edit]
    contents = contents_of(cfg)
    change(contents)
    path = tmp_path / "edited.pt"
    save_checkpoint(contents, path)
    for program, line in refusals(path, cfg, tmp_path, monkeypatch, capsys).items():
        assert str(path) in line and message in line, (program, line)


@pytest.mark.parametrize("edit", EDITS)
def test_the_reseal_tool_refuses_them_too(edit, cfg, tmp_path, monkeypatch, capsys):
    change, message = EDITS[edit]
    path = tmp_path / "edited.pt"
    save_checkpoint(contents_of(cfg), path)
    contents = torch.load(path, weights_only=True)
    change(contents)
    torch.save(contents, path)  # as a user edits it: the checksum no longer fits
    before = path.read_bytes()
    code, _, (line,) = run_main(reseal_checkpoint.main, [path], tmp_path, monkeypatch, capsys)
    assert code == 1 and line.startswith(f"error: {path}: ") and message in line and "not resealed" in line
    assert path.read_bytes() == before


@pytest.mark.parametrize("sealed", [True, False], ids=["with_a_checksum", "without"])
def test_deeply_nested_contents_are_one_line_not_a_recursion_error(
    sealed, cfg, tmp_path, monkeypatch, capsys
):
    contents = contents_of(cfg)
    contents["history"]["steps"]["epoch"] = nested(5000)
    if sealed:  # whatever the checksum says, the walk that checks it is bounded
        contents["checksum"] = "sha256+crc32:" + "0" * 64
    path = tmp_path / "deep.pt"
    torch_save_deep(contents, path)
    message = f"nests values more than {integrity.MAX_DEPTH} levels deep"
    for program, line in refusals(path, cfg, tmp_path, monkeypatch, capsys).items():
        assert str(path) in line and message in line, (program, line)
    code, _, (line,) = run_main(reseal_checkpoint.main, [path], tmp_path, monkeypatch, capsys)
    assert code == 1 and message in line


def recursive_outline(value, digest, tensors) -> None:
    """The checksum's outline as a recursion states it (what the bounded walk must feed, in order)."""
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)};".encode())
        tensors.append(value)
    elif isinstance(value, dict):
        digest.update(f"d{len(value)};".encode())
        for key, item in value.items():
            recursive_outline(key, digest, tensors)
            recursive_outline(item, digest, tensors)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'l' if isinstance(value, list) else 't'}{len(value)};".encode())
        for item in value:
            recursive_outline(item, digest, tensors)
    else:
        text = f"{type(value).__name__}:{value!r}"
        digest.update(f"{len(text)}:{text}".encode("utf-8", "surrogatepass"))


def test_the_bounded_walk_gives_the_outline_of_the_recursion():
    """The same tokens in the same order: every file written before the walk still verifies."""
    contents = full_checkpoint(setup(tiny_config(name="tiny")))
    contents["extra"] = {"a": [1, (2.0, "x", [])], "b": {}, "c": None}
    ours, theirs = (integrity.hashlib.sha256(), []), (integrity.hashlib.sha256(), [])
    integrity._outline(contents, *ours)
    recursive_outline(contents, *theirs)
    assert ours[0].hexdigest() == theirs[0].hexdigest()
    assert [id(t) for t in ours[1]] == [id(t) for t in theirs[1]]


def test_too_many_values_are_refused(monkeypatch):
    monkeypatch.setattr(integrity, "MAX_VALUES", 100)
    integrity.check_bounds({"steps": list(range(97))})  # the dict, its key, the list and its 97 values
    with pytest.raises(ValueError, match="holds more than 100 values"):
        integrity.check_bounds({"steps": list(range(98))})


# --- The authors' files -----------------------------------------------------------------------


def official(num_downs: int = 7) -> dict:
    from authors_unet import random_official

    return random_official(num_downs, "batch").state_dict()


def test_an_authors_file_of_no_input_channels_is_one_line(tmp_path, monkeypatch, capsys):
    weights = official()
    weights["model.model.0.weight"] = torch.zeros(8, 0, 4, 4)
    torch.save(weights, tmp_path / "empty.pth")
    code, _, (line,) = run_main(
        predict.main,
        ["--checkpoint", tmp_path / "empty.pth", tmp_path / "out"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 1 and "empty.pth" in line
    assert "its first convolution takes 0 channels (shape (8, 0, 4, 4))" in line


def test_an_authors_file_of_4_levels_says_4(tmp_path):
    from authors_unet import Level

    level = Level(32, 64, "batch")  # the innermost of 4 levels: 3 below the outermost
    for outer in (16, 8):
        level = Level(outer, 2 * outer, "batch", level)
    four = nn.Module()
    four.model = Level(3, 8, "batch", level, outermost=True, in_channels=3)
    torch.save(four.state_dict(), tmp_path / "four.pth")
    with pytest.raises(CheckpointError, match=r"four\.pth: .*a U-Net of 4 levels, not 5 or more"):
        load_checkpoint(tmp_path / "four.pth")


def test_an_authors_file_without_its_innermost_layer_names_the_tensor(tmp_path):
    weights = official(5)
    innermost = "model.model.1.model.3.model.3.model.3.model."
    del weights[innermost + "3.weight"]
    torch.save(weights, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "cut.pth")
    assert f"without the tensor {innermost}3.weight" in str(err.value) and "levels" not in str(err.value)


# --- Files that cannot be read or written -------------------------------------------------------


class NotPlainData:
    """Pickled by reference to this module: a global torch.load with weights_only refuses."""


def test_a_file_of_code_is_refused_without_the_advice_to_run_it(tmp_path, monkeypatch, capsys):
    with open(tmp_path / "code.pt", "wb") as f:
        pickle.dump({"generator": NotPlainData()}, f, protocol=2)  # a protocol torch.load reads
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "code.pt")
    message = str(err.value)
    assert message.startswith(
        f"{tmp_path / 'code.pt'}: not a loadable checkpoint (it holds more than tensors"
    )
    assert "GLOBAL test_checkpoint_values.NotPlainData was not an allowed global" in message
    assert "weights_only" not in message and "Re-running" not in message and "\n" not in message


WRITE_UNDER_A_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys, types
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import tiny_config
    from training import checkpoint_format
    from training.checkpoint import full_checkpoint
    from training.setup import setup
    from utils import OutputError

    if sys.argv[1] == "full":  # what the disk says at the moment the write fails
        checkpoint_format.shutil.disk_usage = lambda folder: types.SimpleNamespace(free=2**20)
    contents = full_checkpoint(setup(tiny_config(name="tiny")))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the file system takes no more
    try:
        checkpoint_format.save_checkpoint(contents, sys.argv[2])
    except OutputError as err:
        print(err)
    """
)


@pytest.mark.parametrize("disk", ["full", "limited"])
def test_a_write_the_file_system_does_not_take_says_so(disk, tmp_path):
    """torch.save's own words for a short write are positions ("unexpected pos N vs M"): the
    line names the file and says the write failed, and that the disk is full where it is."""
    script = WRITE_UNDER_A_LIMIT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    result = subprocess.run(
        [sys.executable, "-c", script, disk, str(tmp_path / "latest.pt")], capture_output=True, text=True
    )
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"cannot write {tmp_path / 'latest.pt'}: "), result.stderr[-2000:]
    assert "pos" not in line
    if disk == "full":
        assert "the disk is full (1 MiB free)" in line
    else:
        assert "the write failed partway" in line
    assert not list(tmp_path.iterdir()), "no file and no temporary file is left"


def test_a_config_of_another_machine_still_loads(tmp_path):
    """The checks are the run's, not this machine's: more threads than it has, any run name."""
    contents = full_checkpoint(setup(tiny_config(name="tiny")))
    contents["config"].update(threads=4096, name="../elsewhere")
    save_checkpoint(contents, tmp_path / "other.pt")
    assert load_checkpoint(tmp_path / "other.pt")["config"]["threads"] == 4096
