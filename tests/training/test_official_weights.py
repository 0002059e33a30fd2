"""The authors' generator files (latest_net_G.pth of pytorch-CycleGAN-and-pix2pix) load as this
project's UNetGenerator and compute what their network computes.

No download: `OfficialUNet` below rebuilds their nested-block layout (the same module nesting,
so the same state-dict keys), written here from the description of their architecture."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require, run_main, write_pair
from PIL import Image
from torch import nn

import demo
import predict
import train
from training import official_weights, trained_generator
from training.checkpoint import CheckpointError, load_generator

# --- A stand-in for the official network, in their module layout ---------------------------


def official_norm(kind: str, channels: int) -> nn.Module:
    """Their norms: BatchNorm with scale and shift; instance norm without either, no statistics."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class Level(nn.Module):
    """One level of their U-Net: down, the inner levels, up, and the level's input concatenated
    in front of its output (except at the outermost level, which ends in Tanh)."""

    def __init__(self, outer, inner, norm, sub=None, outermost=False, in_channels=None, dropout=False):
        super().__init__()
        bias = norm == "instance"  # a conv followed by BatchNorm needs no bias
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=bias)
        self.outermost = outermost
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:  # the bottleneck: no norm after its conv
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, official_norm(norm, outer)]
        else:
            up = nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, official_norm(norm, inner), sub]
            layers += [nn.ReLU(True), up, official_norm(norm, outer)] + ([nn.Dropout(0.5)] if dropout else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As theirs: the in-place LeakyReLU rewrites x before it is concatenated.
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUNet(nn.Module):
    def __init__(self, in_channels, out_channels, num_downs, ngf, norm="batch", dropout=True):
        super().__init__()
        level = Level(8 * ngf, 8 * ngf, norm)
        for _ in range(num_downs - 5):
            level = Level(8 * ngf, 8 * ngf, norm, level, dropout=dropout)
        for outer in (4 * ngf, 2 * ngf, ngf):
            level = Level(outer, 2 * outer, norm, level)
        self.model = Level(out_channels, ngf, norm, level, outermost=True, in_channels=in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def random_official(num_downs: int, norm: str, ngf: int = 8, channels=(3, 3), seed: int = 0) -> OfficialUNet:
    """Their network with random weights, BatchNorm scales and running statistics included (so
    that every tensor, in every mode, matters)."""
    torch.manual_seed(seed)
    net = OfficialUNet(channels[0], channels[1], num_downs, ngf, norm)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.2 if name.endswith(("running_mean", "bias")) else 0.05)
    return net


def save_official(net: nn.Module, path: Path, legacy: bool = False) -> Path:
    weights = net.state_dict()
    if legacy:  # as their files from before PyTorch 0.4: old serialisation, no BatchNorm counters
        weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    torch.save(weights, path, _use_new_zipfile_serialization=not legacy)
    return path


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
