"""The authors' generator files (latest_net_G.pth of pytorch-CycleGAN-and-pix2pix) load as this
project's UNetGenerator and compute what their network computes.

No download: `tests/authors_unet.py` rebuilds their nested-block layout (the same module
nesting, so the same state-dict keys), written from the description of their architecture."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from authors_unet import OfficialUNet, random_official, save_official
from conftest import require, run_main, write_pair
from PIL import Image
from torch import nn

import demo
import predict
import train
from training import official_weights, trained_generator
from training.checkpoint import CheckpointError, load_generator

# --- The mapping ----------------------------------------------------------------------------

CASES = [(8, "batch"), (8, "instance"), (7, "batch"), (7, "instance")]


@pytest.mark.parametrize("num_downs,norm", CASES)
def test_same_output_as_the_official_network_in_eval_and_train_mode(num_downs, norm, tmp_path):
    """Loaded through the project's checkpoint path, the generator computes what theirs computes:
    running averages (eval), and batch statistics with dropout (train) from the same seed."""
    reference = random_official(num_downs, norm).double()
    path = save_official(reference, tmp_path / "latest_net_G.pth", legacy=num_downs == 7)
    G, checkpoint = load_generator(path, torch.device("cpu"))
    G = G.double()
    assert checkpoint["generator_kwargs"] == {
        "in_channels": 3,
        "out_channels": 3,
        "ngf": 8,
        "num_downs": num_downs,
        "norm": norm,
        "dropout": 0.5,
    }
    assert sum(t.numel() for t in G.parameters()) >= sum(t.numel() for t in reference.parameters())
    x = torch.rand(2, 3, 2**num_downs, 2**num_downs, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        for train in (False, True):
            reference.train(train)
            G.train(train)
            torch.manual_seed(1)
            theirs = reference(x.clone())
            torch.manual_seed(1)
            ours = G(x.clone())
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
            assert not torch.equal(ours[0], ours[1])  # the images differ: the test compares something


def test_other_channels_are_read_off_the_shapes(tmp_path):
    reference = random_official(7, "batch", ngf=4, channels=(1, 3)).eval()
    G, checkpoint = load_generator(save_official(reference, tmp_path / "g.pth"), torch.device("cpu"))
    kwargs = checkpoint["generator_kwargs"]
    assert (kwargs["in_channels"], kwargs["out_channels"], kwargs["ngf"]) == (1, 3, 4)
    x = torch.rand(1, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(G.eval()(x), reference(x), rtol=0, atol=1e-5)


def test_the_settings_are_the_official_defaults(tmp_path):
    path = save_official(random_official(7, "instance"), tmp_path / "facades_label2photo.pth")
    G, settings, epoch = trained_generator.load_run(path, torch.device("cpu"))
    assert official_weights.is_official(torch.load(path)) and not official_weights.is_official(G.state_dict())
    assert (settings.eval_mode, settings.image_size, settings.name, epoch) == (
        False,
        128,
        "facades_label2photo",
        0,
    )
    assert settings.direction == "BtoA"  # the project's default, right for their facades files
    assert sum(isinstance(m, nn.Dropout) for m in G.modules()) == 2  # 7 levels: 7 - 5 dropout blocks


def test_official_file_that_does_not_map_is_one_error_naming_it(tmp_path):
    weights = random_official(7, "batch").state_dict()
    weights["model.model.9.weight"] = torch.zeros(1)
    torch.save(weights, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: .*official.*model\.model\.9\.weight"):
        load_generator(tmp_path / "odd.pth", torch.device("cpu"))
    del weights["model.model.9.weight"], weights["model.model.3.bias"]
    torch.save(weights, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: .*without the tensor model\.model\.3\.bias"):
        load_generator(tmp_path / "odd.pth", torch.device("cpu"))


def test_a_file_of_neither_format_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    torch.save({"model.0.weight": torch.zeros(8, 3, 4, 4)}, tmp_path / "resnet_G.pth")  # not a U-Net
    (tmp_path / "in.png").write_bytes(b"")
    code, err, lines = run_main(
        predict.main, ["--checkpoint", "resnet_G.pth", "in.png"], tmp_path, monkeypatch, capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert lines[0].startswith("error: resnet_G.pth: not a pix2pix checkpoint (neither")


# --- The scripts on an official file --------------------------------------------------------


@pytest.fixture
def official_file(tmp_path) -> tuple[Path, OfficialUNet]:
    reference = random_official(7, "batch")
    return save_official(reference, tmp_path / "latest_net_G.pth"), reference


def test_predict_end_to_end(official_file, tmp_path, monkeypatch, capsys):
    """predict.py on a label map with their unet_128 file: their test-time generation (batch
    statistics and dropout, seeded as predict seeds it), at the input's size."""
    path, reference = official_file
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "labels.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "sys.argv", ["predict.py", "--checkpoint", str(path), "labels.png", "--output", "out"]
    )
    predict.main()
    out = capsys.readouterr().out
    assert "authors' pytorch-CycleGAN-and-pix2pix (unet_128, batch norm)" in out and "eval_mode false" in out
    with Image.open(tmp_path / "out" / "labels.png") as image:
        written = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    real_A = (
        torch.from_numpy(np.array(Image.open(tmp_path / "labels.png"))).permute(2, 0, 1).float() / 127.5 - 1
    )
    torch.manual_seed(0)  # the run's seed, as translate() seeds dropout
    with torch.no_grad():
        expected = reference.train()(real_A[None])[0]
    # predict may compute in bf16 (its automatic precision) and writes 8 bits: within a level on average
    assert (written - expected).abs().mean() < 1 / 127.5


def test_demo_loads_an_official_file(official_file, tmp_path):
    """demo.py --checkpoint latest_net_G.pth: the app is built (as for a facades run: the canvas
    and the label maps of --data_root), without being launched."""
    require("gradio")
    model = demo.load_model(official_file[0], "cpu")
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    assert model.translate(image, 0, False).shape == (128, 128, 3)
    assert model.config["eval_mode"] is False and model.epoch == 0
    (tmp_path / "data" / "val").mkdir(parents=True)
    write_pair(tmp_path / "data" / "val" / "1.png", image, image)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--checkpoint", str(official_file[0]), "--data_root", str(tmp_path / "data"), "--port", str(port)]
    app, _ = demo.prepare(demo.parse_args(args))
    assert app is not None
    examples = demo.starting_points(model.config, demo.example_inputs(model.config, tmp_path / "data"))
    assert list(examples) == [demo.BLANK, "val/1.png"]


def test_export_of_an_official_file(official_file, tmp_path):
    """predict.py --export: the .pt2 program is their network at test time without dropout
    (eval_mode false: batch statistics)."""
    for name in ("onnx", "onnxscript"):
        require(name)
    path, reference = official_file
    predict.run(predict.parse_args(["--checkpoint", str(path), "--export", str(tmp_path / "m.onnx")]))
    assert (tmp_path / "m.onnx").stat().st_size > 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    for module in reference.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    x = torch.rand(2, 3, 128, 384) * 2 - 1  # 1 x 3 blocks of 128
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference.train()(x), rtol=0, atol=1e-5)


def test_training_cannot_continue_from_an_official_file(
    official_file, synthetic_split, tmp_path, monkeypatch, capsys
):
    """It holds the generator alone: one line says so (before any config difference)."""
    root = synthetic_split(n=1, size=32).parent
    argv = ["--data_root", root, "--image_size", "32", "--ngf", "8", "--resume_from", official_file[0]]
    code, err, lines = run_main(train.main, [*argv, "--tensorboard", "false"], tmp_path, monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "latest_net_G.pth: holds no discriminator weights, so training cannot continue" in lines[0]
