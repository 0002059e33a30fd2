"""--cuda_graphs auto|true|false: the training step captured as one CUDA graph where that works,
eager steps with one line where a capture fails. The CUDA tests are skipped without a GPU (CI has
none): `python -m pytest -q tests -k cuda` on a GPU machine runs them."""

import dataclasses

import pytest
import torch
from conftest import assert_same_run, cli_args, latest, run_script, tiny_config, tiny_run, train_killed_at

from speed.cuda_graphs import WARMUP_STEPS, GraphedStep
from training.setup import setup
from training.step import eager_step, train_step

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pair(size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return tuple((torch.rand(1, 3, size, size, generator=generator) * 2 - 1).to(device) for _ in range(2))


@pytest.mark.parametrize("mode,said", [("auto", False), ("true", True), ("false", False)])
def test_off_cuda_auto_is_silent_and_true_says_why(mode, said, capsys):
    state = setup(tiny_config(cuda_graphs=mode))
    assert state.graphed_step is None
    assert ("--cuda_graphs true: needs CUDA" in capsys.readouterr().err) == said


def test_a_failed_capture_falls_back_to_eager_steps_with_one_line(monkeypatch, capsys):
    cfg = tiny_config()
    state, twin = setup(cfg), setup(cfg)
    step = GraphedStep(eager_step)
    step.warm = WARMUP_STEPS  # the next step would capture

    def refuse(*args) -> None:
        raise RuntimeError("operation not permitted when stream is capturing\n(the rest of it)")

    monkeypatch.setattr(GraphedStep, "_capture", refuse)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)  # no GPU to wait for
    real_A, real_B = pair(32)
    graphed = [step(state, real_A, real_B) for _ in range(3)]
    eager = [eager_step(twin, real_A, real_B) for _ in range(3)]
    assert step.failed and all(torch.equal(a, b) for a, b in zip(graphed, eager))
    assert capsys.readouterr().err.splitlines() == [
        "--cuda_graphs: capturing the training step failed (RuntimeError: operation not permitted "
        "when stream is capturing); training goes on without CUDA graphs"
    ]
    for a, b in zip(state.G.parameters(), twin.G.parameters()):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_auto_captures_the_step_and_trains_as_eager_steps_do(precision):
    """32 px (no dropout): the replayed graph runs the captured eager kernels, Adam in its
    capturable form (bias corrections on the device), so the weights agree to rounding."""
    cfg = tiny_config(device="cuda", precision=precision, cuda_graphs="auto")
    graphed, eager = setup(cfg), setup(dataclasses.replace(cfg, cuda_graphs="false"))
    real_A, real_B = pair(32, "cuda")
    for _ in range(WARMUP_STEPS + 3):
        losses = train_step(graphed, real_A, real_B), train_step(eager, real_A, real_B)
    step = graphed.graphed_step
    assert step is not None and step.graph is not None and not step.failed
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=1e-4)
    for a, b in zip(graphed.G.parameters(), eager.G.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_resume_is_exact(synthetic_split, tmp_path, precision):
    """Killed right after the mid-epoch latest.pt of epoch 2 (64 px: with dropout): the resumed
    run, which warms up and captures again, ends bit-identical to a straight one."""
    cfg = tiny_run(
        synthetic_split, tmp_path, image_size=64, load_size=72, num_samples=2, device="cuda",
        precision=precision, cuda_graphs="auto", checkpoint_every=3,
    )  # fmt: skip
    straight = dataclasses.replace(cfg, name="straight")
    assert run_script("train.py", *cli_args(straight), cwd=tmp_path).returncode == 0
    killed = train_killed_at(cfg, tmp_path, at=3, match="latest.pt", when="after")
    assert killed.returncode == 137 and latest(cfg)["progress"]["iteration"] == 2
    resumed = run_script("train.py", *cli_args(cfg), cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert_same_run(latest(straight), latest(cfg))
