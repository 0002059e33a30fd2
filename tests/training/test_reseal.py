"""A checkpoint edited by hand (torch.load, a change, torch.save) no longer fits its checksum: it
is refused with one line naming the command that accepts it, tools/reseal_checkpoint.py, which
checks it as a load does and writes it again with a new checksum; then training continues from
it and predict loads it. A file that fails a check is one line and left as it was."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
from conftest import ROOT, cli_args, run_main, run_script, tiny_config, tiny_run

import predict
import train
from training import trained_generator
from training.checkpoint import full_checkpoint, snapshot
from training.checkpoint_format import CheckpointError, load_checkpoint, save_checkpoint
from training.setup import setup

SPEC = importlib.util.spec_from_file_location("reseal_checkpoint", ROOT / "tools" / "reseal_checkpoint.py")
reseal_checkpoint = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(reseal_checkpoint)
CPU = torch.device("cpu")


def edited(path, change) -> None:
    """What a user does: load, change, save with plain torch.save."""
    contents = torch.load(path, weights_only=True)
    change(contents)
    torch.save(contents, path)


@pytest.fixture
def written(tmp_path):
    """A tiny run's best.pt, as train.py writes it."""
    path = tmp_path / "best.pt"
    save_checkpoint(snapshot(setup(tiny_config(name="tiny"))), path)
    return path


def test_an_edited_file_is_refused_naming_the_reseal_command(written, tmp_path, monkeypatch, capsys):
    edited(written, lambda c: c["config"].update(eval_mode=True))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(written)
    assert f"python tools/reseal_checkpoint.py {written} accepts it" in str(err.value)
    code, _, (line,) = run_main(
        predict.main, ["--checkpoint", written, tmp_path], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and f"python tools/reseal_checkpoint.py {written}" in line


def test_resealed_the_edit_is_what_predict_loads(written, capsys):
    edited(written, lambda c: c["config"].update(eval_mode=True))
    reseal_checkpoint.main([str(written)])
    (line,) = capsys.readouterr().out.splitlines()
    assert line == f"{written}: resealed at epoch 0: its new checksum fits what it holds now"
    _, settings, _ = trained_generator.load_run(written, CPU)
    assert settings.eval_mode is True


def test_resealed_training_continues_from_the_edit(synthetic_split, tmp_path, monkeypatch, capsys):
    """--resume_from an edited, resealed latest.pt: the run takes its weights and its epoch, and
    says the edited setting it now changes (lambda_l1 50 in the file, 100 in the config)."""
    cfg = tiny_run(synthetic_split, tmp_path, epochs=2)
    path = tmp_path / "edited.pt"
    save_checkpoint(full_checkpoint(dataclasses.replace(setup(cfg), epoch=1)), path)
    edited(path, lambda c: c["config"].update(lambda_l1=50.0))
    argv = [*cli_args(cfg), f"--resume_from={path}"]
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 1 and f"python tools/reseal_checkpoint.py {path} accepts it" in line
    result = run_script("tools/reseal_checkpoint.py", path, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("fits what it holds now"), result.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py", *argv])
    train.main()
    out = capsys.readouterr().out
    assert f"resuming {path}: epoch 2" in out and "lambda_l1 50.0 -> 100.0" in out
    finished = torch.load(tmp_path / "ck" / "run" / "latest.pt", weights_only=True)
    assert finished["epoch"] == 2 and finished["format"] == 2


def test_a_file_that_verifies_needs_nothing(written, monkeypatch, capsys):
    before = written.read_bytes()
    reseal_checkpoint.main([str(written)])
    assert capsys.readouterr().out == f"{written}: its checksum already matches its contents; nothing to do\n"
    assert written.read_bytes() == before


def nan_weight(contents: dict) -> None:
    next(iter(contents["generator"].values())).view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    "damage,message",
    [
        ("garbage", "not a loadable checkpoint"),
        ("not_a_checkpoint", "not a pix2pix checkpoint (neither"),
        ("nan", "holds NaN or infinite values; not resealed"),
        ("config_type", "config field ngf is '8', not of type int; not resealed"),
        ("newer_format", "a checkpoint of format 3, newer than this code reads"),
        ("missing", "no such checkpoint file"),
    ],
)
def test_a_file_that_fails_a_check_is_one_line_and_left_as_it_was(
    written, tmp_path, monkeypatch, capsys, damage, message
):
    if damage == "garbage":
        written.write_bytes(b"not a zip file")
    elif damage == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, written)
    elif damage == "nan":
        edited(written, nan_weight)
    elif damage == "config_type":
        edited(written, lambda c: c["config"].update(ngf="8"))
    elif damage == "newer_format":
        edited(written, lambda c: c.update(format=3))
    else:
        written.unlink()
    before = written.read_bytes() if written.exists() else None
    code, err, (line,) = run_main(reseal_checkpoint.main, [written], tmp_path, monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert line.startswith(f"error: {written}: ") and message in line, line
    assert (written.read_bytes() if written.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if before is None else ["best.pt"])


def test_a_link_names_the_file_to_reseal(written, tmp_path, monkeypatch, capsys):
    (tmp_path / "link.pt").symlink_to(written)
    edited(written, lambda c: c.update(epoch=3))
    code, _, (line,) = run_main(reseal_checkpoint.main, [tmp_path / "link.pt"], tmp_path, monkeypatch, capsys)
    assert code == 1 and f"reseal the file it points to, {written.resolve()}" in line
    assert (tmp_path / "link.pt").is_symlink()


def test_the_authors_file_needs_no_reseal(tmp_path, monkeypatch, capsys):
    from authors_unet import random_official, save_official

    path = save_official(random_official(7, "batch"), tmp_path / "latest_net_G.pth")
    code, _, (line,) = run_main(reseal_checkpoint.main, [path], tmp_path, monkeypatch, capsys)
    assert code == 1 and "the authors' generator file carries no checksum; it loads as it is" in line
