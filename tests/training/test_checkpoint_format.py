"""Every checkpoint the project writes says its format; one upgrade brings older files (format 1,
no "format" key, as tests/fixtures/v1_tiny/latest.pt) to the current one; a newer format is
refused in one line; each load checks the keys, the networks' numbers and the config's types."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, run_main, tiny_config

import predict
from training import checkpoint_format
from training.checkpoint import full_checkpoint, snapshot
from training.checkpoint_format import FORMAT, CheckpointError, load_checkpoint, save_checkpoint, upgrade
from training.cli import parse_args
from training.setup import setup

V1_CHECKPOINT = ROOT / "tests" / "fixtures" / "v1_tiny" / "latest.pt"


@pytest.fixture(scope="module")
def state():
    return setup(tiny_config(name="tiny"))


def test_every_file_written_says_the_current_format(state, tmp_path):
    for name, contents in (("latest.pt", full_checkpoint(state)), ("best.pt", snapshot(state))):
        save_checkpoint(contents, tmp_path / name)
        raw = torch.load(tmp_path / name, weights_only=True)
        assert raw["format"] == FORMAT == 2
        assert load_checkpoint(tmp_path / name).keys() == contents.keys()


def test_the_oldest_format_is_upgraded_in_one_place():
    old = torch.load(V1_CHECKPOINT, weights_only=True)
    assert "format" not in old and "batches" not in old["progress"] and "mps" not in old["rng"]
    assert old["config"]["cuda_graphs"] is False and "val_images" not in old["config"]
    new = upgrade(old)
    assert new["format"] == FORMAT and new["kind"] == "full" and new["rng_ranks"] == []
    assert new["progress"]["batches"] == 0 and new["rng"]["mps"] is None
    assert new["config"]["cuda_graphs"] == "false"  # a bool before the switch had three values
    assert new["config"]["val_images"] == 0  # that version scored the whole validation split
    assert "format" not in old and "batches" not in old["progress"], "the given dict is left as it was"
    assert checkpoint_format.check_contents(new) is new
    assert load_checkpoint(V1_CHECKPOINT).keys() == new.keys()


def test_a_file_older_than_generator_kwargs_reads_them_off_the_weights(state, tmp_path):
    old = {k: v for k, v in snapshot(state).items() if k not in ("format", "kind", "generator_kwargs")}
    assert upgrade(old)["generator_kwargs"] == state.generator_kwargs


@pytest.mark.parametrize("number", [3, 99])
def test_a_newer_format_is_one_line_naming_both_numbers(state, tmp_path, monkeypatch, capsys, number):
    save_checkpoint({**snapshot(state), "format": number}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "new.pt")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'new.pt'}: a checkpoint of format {number}, newer")
    assert f"formats 1 to {FORMAT}" in message and "\n" not in message
    code, _, (line,) = run_main(
        predict.main, ["--checkpoint", tmp_path / "new.pt", tmp_path], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and f"format {number}, newer" in line


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.update(format="2"), "its format is '2', not a format number"),
        (lambda c: c.update(kind="partial"), "kind 'partial'"),
        (lambda c: c.pop("history"), "not a checkpoint of format 2 (it has no history)"),
        (lambda c: c.pop("opt_G"), "it has no opt_G"),
        (lambda c: c["config"].update(lr="fast"), "config field lr is 'fast', not of type float"),
        (lambda c: c["config"].update(flip=1), "config field flip is 1, not of type bool"),
        (lambda c: c.update(world_size="two"), "world_size is a str"),
        (lambda c: c["discriminator"].update(extra=[1.0]), "discriminator parameter extra is a list"),
        (
            lambda c: c["discriminator"]["model.0.weight"].view(-1).__setitem__(0, float("nan")),
            "discriminator tensor model.0.weight holds NaN",
        ),
    ],
    ids=["format", "kind", "history", "opt_G", "lr", "flip", "world_size", "list", "nan"],
)
def test_a_load_checks_keys_numbers_and_config_types(state, tmp_path, change, message):
    contents = full_checkpoint(state)
    contents["discriminator"] = {k: v.clone() for k, v in contents["discriminator"].items()}
    contents["config"] = dict(contents["config"])
    change(contents)
    save_checkpoint(contents, tmp_path / "odd.pt")  # a checksum that fits: only the contents are odd
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "odd.pt")
    assert str(err.value).startswith(f"{tmp_path / 'odd.pt'}: ") and message in str(err.value)


def test_an_older_config_json_reads_its_bool_switch(tmp_path):
    """config.json of a run from format 1's time: cuda_graphs was a bool (the same upgrade)."""
    (tmp_path / "config.json").write_text(json.dumps({"config": {"cuda_graphs": True, "tensorboard": False}}))
    cfg = parse_args(["--config", str(tmp_path / "config.json"), "--device", "cpu"])
    assert (cfg.cuda_graphs, cfg.tensorboard) == ("true", "false")
