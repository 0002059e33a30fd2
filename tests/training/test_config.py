import dataclasses
import json
import os

import pytest
from conftest import ROOT, run_script

import config
from config import Config
from training import cli
from training.cli import parse_args
from training.settings import ConfigError


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
    result = run_script("train.py", *argv, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --"), result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


def test_help_and_docs_config_md_come_from_the_field_metadata(tmp_path):
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == cli.config_page(), (
        "docs/config.md: run `python -m training.cli --markdown > docs/config.md`"
    )
    for field in dataclasses.fields(config.Config):
        assert f"| `{field.name}` | `{field.default!r}` |" in page, field.name
    result = run_script("train.py", "--help", cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0
    for field in dataclasses.fields(config.Config):
        assert field.metadata["help"] and field.metadata["help"] in result.stdout, field.name
        for choice in field.metadata["choices"] or ():
            assert choice in result.stdout


def test_config_imports_nothing_of_the_project():
    """config.py is the one file to edit for hyperparameters: readable alone, no project import."""
    import ast

    tree = ast.parse((ROOT / "config.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
    }
    project = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert "training" in project and not imported & project, imported & project


def test_every_docs_page_is_linked_from_the_readme():
    import re

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


def test_config_py_reads_top_down_from_the_dataclass():
    """The Config dataclass comes first, after only the allowed values its fields need; then the
    dataset registry; then what is derived from a Config. Checking the values lives elsewhere."""
    import ast

    tree = ast.parse((ROOT / "config.py").read_text())
    order = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    assert order[:3] == ["option", "Config", "DatasetInfo"], order
    assignments = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
    assert assignments.index("DATASETS") > assignments.index("DATASET_NAMES")
    assert not {"validate", "ConfigError", "markdown_table", "main", "name_problem"} & set(order)


def test_the_dataset_choices_are_the_registry():
    """DATASET_NAMES (the dataset field's choices, defined before Config) name DATASETS' entries."""
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(Config)}
    assert choices["dataset"] == config.DATASET_NAMES == tuple(config.DATASETS)


@pytest.mark.parametrize(
    "name,expected",
    [
        (
            "smoke",
            {"max_images": 40, "epochs": 2, "lr_decay_epochs": 0, "name": "smoke", "dataset": "facades"},
        ),
        (
            "facades",
            {
                "dataset": "facades",
                "direction": "BtoA",
                "epochs": 200,
                "lr_decay_epochs": 100,
                "name": "facades",
            },
        ),
        (
            "maps",
            {"dataset": "maps", "direction": "AtoB", "epochs": 200, "lr_decay_epochs": 100, "name": "maps"},
        ),
    ],
)
def test_the_shipped_config_files_give_their_documented_values(name, expected):
    """configs/*.json load through --config; facades.json and maps.json are the paper's recipe
    (286 px resize, 256 px crop, flip, batch 1, Adam 2e-4 (0.5, 0.999), lambda_l1 100, U-Net 256
    and the 70x70 PatchGAN), smoke.json the README's first run; options after --config still win."""
    path = ROOT / "configs" / f"{name}.json"
    cfg = parse_args(["--config", str(path)])
    assert {k: getattr(cfg, k) for k in expected} == expected
    if name != "smoke":
        paper = {"load_size": 286, "image_size": 256, "flip": True, "batch_size": 1, "lr": 2e-4}
        paper |= {"beta1": 0.5, "beta2": 0.999, "lambda_l1": 100.0, "ngf": 64, "ndf": 64, "n_layers_D": 3}
        paper |= {"norm": "batch", "dropout": 0.5, "init_gain": 0.02}
        assert {k: getattr(cfg, k) for k in paper} == paper
        assert set(json.loads(path.read_text())) >= set(paper), "the recipe written out in full"
    assert f"`{name}.json`" in cli.config_page()
    assert parse_args(["--config", str(path), "--epochs", "3"]).epochs == 3
    assert {p.stem for p in (ROOT / "configs").glob("*.json")} == {"smoke", "facades", "maps"}


def test_smoke_json_is_the_readmes_first_run():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python train.py --config configs/smoke.json" in readme
    assert parse_args(["--config", str(ROOT / "configs" / "smoke.json")]) == parse_args(
        ["--max_images", "40", "--epochs", "2", "--lr_decay_epochs", "0", "--name", "smoke"]
    )


@pytest.mark.parametrize("value,on", [("false", False), ("true", True)])
def test_speedups_is_a_switch_of_the_command_line(value, on):
    assert Config().speedups and parse_args(["--speedups", value]).speedups is on
    with pytest.raises(ConfigError, match="--speedups: expected true or false"):
        parse_args(["--speedups", "fast"])


def test_the_markdown_page_is_printed_by_the_cli():
    result = run_script("-m", "training.cli", "--markdown", cwd=ROOT)
    assert result.returncode == 0 and result.stdout == cli.config_page(), result.stderr


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--load_size", "2147483647"], "load_size"),  # overflowed in the resize
        (["--load_size", "60000"], "load_size"),  # some 23 GB of resized images
        (["--image_size", "8192", "--load_size", "8192"], "image_size"),
        (["--preprocess", "crop", "--load_size", "5000"], "load_size"),  # refused even where unused
    ],
)
def test_image_sides_are_bounded_by_memory(argv, field):
    from training.settings import MAX_IMAGE_SIDE

    rule = f"--{field}: must be at most {MAX_IMAGE_SIDE} (pixels a side: images are resized to it in memory)"
    with pytest.raises(ConfigError, match=rule.replace("(", r"\(").replace(")", r"\)")):
        parse_args(argv)
    assert parse_args(["--image_size", "4096", "--load_size", "4096"]).load_size == MAX_IMAGE_SIDE


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_config_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    """A FIFO as --config would wait forever for a writer; a folder or a device is no config either."""
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "a FIFO"), (tmp_path, "a folder"), ("/dev/null", "a device")):
        with pytest.raises(ConfigError, match=f"--config {path}: cannot read a JSON object \\(it is {kind}"):
            parse_args(["--config", str(path)])
    # and through the script: one line, exit status 2, within the timeout instead of forever
    result = run_script("train.py", "--config", tmp_path / "fifo", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: --config {tmp_path / 'fifo'}: cannot read a JSON object (it is a FIFO, not a regular file)"
    ]
