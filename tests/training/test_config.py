import dataclasses
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from config import Config, ConfigError
from training.cli import parse_args


def test_defaults_are_the_official_facades_recipe():
    cfg = parse_args([])
    assert (cfg.direction, cfg.load_size, cfg.image_size, cfg.batch_size) == ("BtoA", 286, 256, 1)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.lambda_l1) == (2e-4, 0.5, 0.999, 100.0)
    assert (cfg.epochs, cfg.lr_decay_epochs, cfg.ngf, cfg.ndf, cfg.n_layers_D) == (200, 100, 64, 64, 3)
    assert cfg.flip and cfg.dropout == 0.5 and cfg.norm == "batch" and cfg.init_gain == 0.02


def test_every_field_is_overridable():
    cfg = parse_args(
        [
            "--epochs",
            "3",
            "--data_root",
            "x/facades",
            "--flip",
            "false",
            "--lr",
            "1e-3",
            "--direction",
            "AtoB",
            "--image_size",
            "128",
            "--load_size",
            "142",
        ]
    )
    assert cfg == Config(
        epochs=3, data_root="x/facades", flip=False, lr=1e-3, direction="AtoB", image_size=128, load_size=142
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epoch", "3"], "--epoch: unknown setting"),
        (["--epochs", "three"], "--epochs: expected int, got 'three'"),
        (["--lr", "fast"], "--lr: expected float"),
        (["--flip", "maybe"], "--flip: expected true or false"),
        (["--lr", "0"], "--lr: must be > 0"),
        (["--lr", "nan"], "--lr: expected a finite number"),
        (["--direction", "AtoC"], "--direction: must be one of AtoB, BtoA"),
        (["--image_size", "100", "--load_size", "100"], "--image_size: must be a multiple of 32"),
        (["--load_size", "200"], "--load_size: must be >= image_size"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--latest_every_s", "-1"], "--latest_every_s: must be >= 0"),
        (["--val_images", "-1"], "--val_images: must be >= 0"),
        (
            ["--val_images", "2", "--num_samples", "4"],
            "--val_images: must be 0 (all) or at least num_samples",
        ),
        (["--norm", "group"], "--norm: must be one of batch, instance"),
        (["--precision", "fp8"], "--precision: must be one of auto, fp32, bf16, fp16"),
        (["--epochs"], "--epochs: expected one argument"),
    ],
)
def test_bad_settings_name_the_field(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value)


@pytest.mark.parametrize("argv", [["--batchsize", "4"], ["--lr", "-1"], ["--image_size", "250"]])
def test_train_py_exits_2_with_one_line(argv, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --"), result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


def test_help_and_the_readme_table_come_from_the_field_metadata(tmp_path):
    from conftest import ROOT

    import config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert config.markdown_table() in readme, "README's config table: paste `python config.py --markdown`"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0
    for field in dataclasses.fields(config.Config):
        assert field.metadata["help"] and field.metadata["help"] in result.stdout, field.name
        for choice in field.metadata["choices"] or ():
            assert choice in result.stdout


def test_config_imports_nothing_of_the_project():
    """config.py is the one file to edit for hyperparameters: readable alone, no project import."""
    import ast

    from conftest import ROOT

    tree = ast.parse((ROOT / "config.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
    }
    project = {p.stem for p in ROOT.glob("*.py")}
    assert not imported & project, imported & project


def test_every_docs_page_is_linked_from_the_readme():
    import re

    from conftest import ROOT

    linked = set(re.findall(r"\(docs/([\w-]+\.md)[)#]", (ROOT / "README.md").read_text()))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked


@pytest.mark.parametrize("old,now", [(False, "false"), (True, "true")])
def test_an_older_config_json_with_a_boolean_cuda_graphs_still_reads(tmp_path, old, now):
    """cuda_graphs was a bool before it became an auto/true/false switch; a run's config.json
    from then is still a valid --config file."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": {"cuda_graphs": old, "epochs": 3}}))
    cfg = parse_args(["--config", str(path)])
    assert cfg.cuda_graphs == now and cfg.epochs == 3
