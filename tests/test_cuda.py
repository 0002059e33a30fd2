"""The CUDA path: the same training step, run and translation on a GPU, in every precision.
Skipped without CUDA (CI has none); run on a GPU machine with `python -m pytest -q tests -k cuda`."""

import dataclasses

import pytest
import torch
from conftest import tiny_config

import train
from evaluation.generate import translate
from training.setup import setup
from training.step import train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_step_moves_both_networks_in_every_precision(precision):
    state = setup(tiny_config(image_size=64, load_size=64, device="cuda", precision=precision))
    assert state.device.type == "cuda" and state.scaler.is_enabled() == (precision == "fp16")
    real_A, real_B = (torch.rand(1, 3, 64, 64, device="cuda") * 2 - 1 for _ in range(2))
    before = [p.detach().clone() for net in (state.G, state.D) for p in net.parameters()]
    for _ in range(3):
        losses = train_step(state, real_A, real_B)
    assert torch.isfinite(losses).all()
    after = [p.detach() for net in (state.G, state.D) for p in net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_cuda_run_writes_a_checkpoint_that_loads_on_the_cpu(synthetic_split, tmp_path):
    root = synthetic_split(n=4, size=72).parent
    synthetic_split(n=2, size=72, name="val")
    cfg = tiny_config(
        data_root=str(root),
        image_size=64,
        load_size=72,
        device="cuda",
        precision="auto",
        epochs=2,
        checkpoint_dir=str(tmp_path / "ck"),
        results_dir=str(tmp_path / "res"),
        name="gpu",
    )
    train.train(cfg)
    saved = torch.load(tmp_path / "ck" / "gpu" / "latest.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and 0 < saved["history"]["epochs"][-1]["val_L1"] < 1
    cpu = setup(dataclasses.replace(cfg, device="cpu", precision="fp32"))
    cpu.G.load_state_dict(saved["generator"])
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    on_cpu = translate(cpu.G, x, True, 0)
    on_gpu = translate(cpu.G.cuda(), x.cuda(), True, 0).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-3)
