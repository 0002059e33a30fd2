"""Apple silicon (MPS): the device logic, without a Mac. torch.backends.mps is patched to say what
a Mac would say; nothing is allocated on an MPS device."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from conftest import run_main

import benchmark
import config
import demo
import predict
import speed as speedups
import utils
from benchmarking import epoch_cost
from generator import UNetGenerator
from speed import matmul_layers as fast_layers
from training import cli, settings, trained_generator
from training import loader as data
from training.distributed import World

MPS = torch.device("mps")


@pytest.fixture
def mac(monkeypatch):
    """A Mac: MPS built and available, no CUDA."""
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_takes_cuda_then_mps_then_cpu(mac, monkeypatch):
    assert utils.resolve_device("auto") == MPS
    assert utils.resolve_device("mps") == MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.resolve_device("auto") == torch.device("cuda")  # CUDA first, where both exist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)  # a PyTorch without MPS
    assert utils.resolve_device("auto") == torch.device("cpu")


def test_mps_where_there_is_none_is_one_line(no_mps, tmp_path, monkeypatch, capsys):
    assert utils.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device mps: MPS .* not available"):
        utils.resolve_device("mps")
    code, err, lines = run_main(
        predict.main, ["--checkpoint", "x.pt", "in.png", "--device", "mps"], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--device mps" in lines[0]
    with pytest.raises(demo.DemoError, match="--device mps: MPS"):
        demo.load_model(tmp_path / "x.pt", "mps")


def test_config_accepts_mps():
    assert cli.parse_args(["--device", "mps"]).device == "mps"
    with pytest.raises(settings.ConfigError, match="must be auto, cpu, mps, cuda or cuda:N"):
        cli.parse_args(["--device", "metal"])


def test_precision_on_mps():
    assert utils.resolve_precision("auto", MPS) == torch.float32  # not measured on a Mac: the safe one
    assert utils.resolve_precision("bf16", MPS) == torch.bfloat16  # asked for: autocast supports it
    assert utils.resolve_precision("fp32", MPS) == torch.float32
    with pytest.raises(ValueError, match="fp16: only supported on CUDA; use bf16 or fp32 on mps"):
        utils.resolve_precision("fp16", MPS)
    assert isinstance(utils.autocast(MPS, torch.float32), contextlib.nullcontext)
    amp = utils.autocast(MPS, torch.bfloat16)
    assert isinstance(amp, torch.autocast) and amp.device == "mps" and amp.fast_dtype == torch.bfloat16


def test_nothing_cpu_specific_runs_on_mps():
    """The CPU's matrix-product convolutions, bf16 compute copies and channels_last stay off."""
    on_mps = SimpleNamespace(device=MPS, shape=(1, 512, 2, 2))  # as fast_layers sees a small map there
    on_cpu = SimpleNamespace(device=torch.device("cpu"), shape=(1, 512, 2, 2))
    assert fast_layers.small_cpu_map(on_cpu) and not fast_layers.small_cpu_map(on_mps)
    for dtype in (torch.float32, torch.bfloat16):
        G = UNetGenerator(ngf=2, num_downs=5)
        applied = speedups.accelerate([(G, None)], MPS, dtype)
        assert not (applied.matmul_layers or applied.compute_copies or applied.channels_last)
        assert not G._forward_pre_hooks
    G = UNetGenerator(ngf=2, num_downs=5)
    assert isinstance(trained_generator.inference_precision(G, MPS), contextlib.nullcontext)
    assert all(type(m).__module__.startswith("torch.") for m in G.modules() if m is not G)


def test_loader_pins_memory_only_for_cuda():
    cfg = config.Config(batch_size=1)
    pairs = [(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))] * 2
    assert not data.make_loader(pairs, cfg, MPS, World()).pin_memory
    assert data.make_loader(pairs, cfg, torch.device("cuda"), World()).pin_memory


def test_mps_random_state_is_saved_and_restored(mac, monkeypatch):
    """Dropout on a Mac's GPU draws from the MPS generator: a checkpoint keeps its state."""
    saved = torch.tensor([7], dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: saved)
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    state = utils.rng_state()
    assert state["mps"] is saved
    utils.set_rng_state(state)
    assert restored == [saved]
    utils.set_rng_state({**state, "mps": None})  # a checkpoint from a machine without MPS
    del state["mps"]
    utils.set_rng_state(state)  # a checkpoint from before MPS support
    assert restored == [saved]


def test_benchmark_knows_mps(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(True))
    epoch_cost.device_sync(MPS)()
    assert waited == [True] and "graphs" not in benchmark.DEFAULTS["mps"]["configs"]
    assert epoch_cost.device_sync(torch.device("cpu"))() is None
