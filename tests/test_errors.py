"""One line, never a traceback: each class of bad input to train.py and predict.py exits non-zero
with `error: <what> <why>` and writes nothing half-done. (Data and download failures:
test_dataset.py and test_download.py; damaged checkpoints and signals: test_resume.py.)"""

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
import torch
from conftest import error_lines, require, run_main, run_script, tiny_config, write_tiny_checkpoint
from PIL import Image

import predict
import train
from training import session
from training.checkpoint import full_checkpoint, save_checkpoint
from training.setup import setup


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run") / "latest.pt", epoch=0, name="tiny")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--threads", "99999999999"], "--threads: must be at most 2147483647"),
        (["--image_size", str(2**40)], "--image_size: must be at most"),
        (["--load_size", "2147483647"], "--load_size: must be at most 4096 (pixels a side"),
        (["--load_size", "60000"], "--load_size: must be at most 4096 (pixels a side"),
        (["--seed", "-1"], "--seed: must be in [0, 2^32)"),
        (["--device", "cuda:x"], "--device: must be auto, cpu, mps, cuda or cuda:N"),
        (["--device", "gpu"], "--device: must be auto, cpu, mps, cuda or cuda:N"),
        (["--name", "x" * 300], "--name: must be at most 200 bytes"),
        (["--name", "a\\b"], "--name: must be a plain folder name"),
    ],
)
def test_values_the_libraries_cannot_take_are_refused_before_any_work(
    tmp_path, argv, message, monkeypatch, capsys
):
    code, _, (line,) = run_main(train.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and message in line
    assert not list(tmp_path.iterdir()), "nothing written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:x", "cuda", "npu"])
def test_predict_names_a_device_it_cannot_use(tiny_checkpoint, tmp_path, device, monkeypatch, capsys):
    argv = ["--checkpoint", tiny_checkpoint, "--device", device, "--split", "test"]
    code, _, (line,) = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and f"--device {device}" in line


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys, tmp_path, synthetic_split):
    root = synthetic_split(n=2).parent

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "build_data", interrupted)
    code, _, errors = run_main(train.main, ["--data_root", root], tmp_path, monkeypatch, capsys)
    assert code == 130 and len(errors) == 1 and "interrupted" in errors[0]


def test_ctrl_c_after_outputs_were_written_says_they_are_whole(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """Ctrl-C in predict after some outputs: the line says what is true of the files written."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (10 * i, 0, 0)).save(inputs / f"{i}.png")
    real_translate, done = predict.translate_image, []

    def translate_then_interrupt(*args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real_translate(*args, **kwargs)

    monkeypatch.setattr(predict, "translate_image", translate_then_interrupt)
    argv = ["--checkpoint", tiny_checkpoint, inputs, "--output", tmp_path / "out"]
    code, _, errors = run_main(predict.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 130 and len(errors) == 1, errors
    assert "every file written so far is whole" in errors[0] and "before any file" not in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png"]


def test_running_out_of_memory_is_one_line(monkeypatch, capsys, tmp_path, synthetic_split):
    root = synthetic_split(n=2).parent

    def too_big(*args, **kwargs):  # what torch's CPU allocator raises when malloc fails
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."
        )

    monkeypatch.setattr(session, "setup", too_big)
    code, _, errors = run_main(
        train.main,
        ["--data_root", root, "--image_size", "4096", "--load_size", "4096"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 1 and len(errors) == 1 and "out of memory" in errors[0] and "--image_size" in errors[0]


def test_a_bug_is_one_line_that_names_the_file_holding_its_traceback(
    monkeypatch, capsys, tmp_path, synthetic_split
):
    """An unexpected exception (a bug) is not hidden either: one line names it and where it
    happened, exit status 1, and its full traceback is in a file the line names (before the
    run's train.log is open: a new file in the temporary folder)."""
    root = synthetic_split(n=2).parent
    monkeypatch.setattr(session, "setup", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, _, (line,) = run_main(train.main, ["--data_root", root], tmp_path, monkeypatch, capsys)
    assert code == 1 and line.startswith("error: unexpected RuntimeError in tests/test_errors.py:")
    assert ": a bug; the full traceback is in " in line
    saved = Path(line.split("the full traceback is in ")[1])
    assert saved.parent == tmp_path and saved.name.startswith("pix2pix-error-")
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: a bug" in text


def test_predict_refuses_a_checkpoint_name_that_leaves_the_results_folder(tmp_path, facades):
    state = setup(tiny_config(name="tiny"))
    saved = full_checkpoint(state)
    saved["config"]["name"] = "../../escaped/x/.."
    save_checkpoint(saved, tmp_path / "crafted.pt")
    work = tmp_path / "work"
    work.mkdir()
    result = run_script(
        "predict.py",
        "--checkpoint",
        tmp_path / "crafted.pt",
        "--split",
        "test",
        "--data_root",
        facades,
        cwd=work,
    )
    (line,) = error_lines(result)
    assert result.returncode == 1 and "crafted.pt" in line and "--output" in line
    assert not list(work.iterdir()) and not (tmp_path.parent / "escaped").exists()


def test_predict_refuses_weights_it_cannot_rebuild(tmp_path):
    torch.save({"generator": {"down.0.weight": torch.zeros(8, 3, 4, 4)}}, tmp_path / "odd.pt")
    result = run_script("predict.py", "--checkpoint", tmp_path / "odd.pt", "--split", "test", cwd=tmp_path)
    (line,) = error_lines(result)
    assert result.returncode == 1 and "odd.pt" in line and "cannot rebuild the generator" in line


def test_file_names_that_are_not_utf8_get_a_working_page(tiny_checkpoint, tmp_path, facades):
    split = tmp_path / "data" / "test"
    split.mkdir(parents=True)
    name = b"caf\xe9"  # Latin-1, not UTF-8
    shutil.copy(facades / "test" / "1.jpg", split / (name.decode("utf-8", "surrogateescape") + ".jpg"))
    result = run_script(
        "predict.py",
        "--checkpoint",
        tiny_checkpoint,
        "--split",
        "test",
        "--data_root",
        tmp_path / "data",
        "--output",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "out" / "index.html").read_bytes()
    assert b"caf%E9.png" in page and b"caf\xef\xbf\xbd" in page  # linked by its bytes, shown with U+FFFD
    assert (tmp_path / "out" / unquote_to_bytes("caf%E9.png").decode("utf-8", "surrogateescape")).is_file()


def test_an_export_path_that_cannot_be_written_is_one_line(tiny_checkpoint, tmp_path):
    require("onnxscript")
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / "model.onnx"
    result = run_script("predict.py", "--checkpoint", tiny_checkpoint, "--export", target, cwd=tmp_path)
    (line,) = error_lines(result)
    assert result.returncode == 1 and "cannot write" in line and "a_file" in line


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "cannot read a JSON object"),
        ('{"lr": "fast"}', "--lr: expected float"),
        ('{"epoch": 3}', "unknown field 'epoch'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_a_config_file_that_is_not_a_config_is_one_line(tmp_path, text, message):
    from training import cli, settings

    (tmp_path / "c.json").write_text(text)
    with pytest.raises(settings.ConfigError, match=re.escape(message)):
        cli.parse_args(["--config", str(tmp_path / "c.json")])
    if text == "[1, 2]":  # and through the script: exit status 2, one line
        result = run_script("train.py", "--config", tmp_path / "c.json", cwd=tmp_path)
        (line,) = error_lines(result)
        assert result.returncode == 2 and message in line


def test_a_config_file_round_trips(tmp_path):
    import config
    from training import cli

    (tmp_path / "c.json").write_text('{"config": {"lr": 0.001, "epochs": 3, "flip": false}}')
    cfg = cli.parse_args(["--config", str(tmp_path / "c.json"), "--epochs", "4"])
    assert (cfg.lr, cfg.epochs, cfg.flip) == (0.001, 4, False)
    assert dataclasses.replace(cfg, lr=2e-4, epochs=200, flip=True) == config.Config()
