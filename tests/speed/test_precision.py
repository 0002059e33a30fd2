"""bf16 changes rounding, not the method: the same 50 steps in bf16 and fp32 end close together."""

import torch
import torch.nn.functional as F

from config import Config
from dataset import AlignedDataset
from evaluation.generate import translate
from training.setup import setup
from training.step import train_step


def fifty_steps(precision: str, real_A, real_B, val_A, val_B) -> tuple[float, float]:
    cfg = Config(image_size=64, load_size=64, ngf=16, ndf=16, precision=precision, seed=5, lr=5e-4)
    state = setup(cfg)
    l1 = []
    for step in range(50):
        i = step % len(real_A)
        losses = train_step(state, real_A[i : i + 1], real_B[i : i + 1])
        l1.append(losses[1].item())
    fake_B = translate(state.G, val_A, False, 0, state.amp)
    return sum(l1[-10:]) / 10, F.l1_loss(fake_B, val_B).item()


def test_bf16_and_fp32_learn_alike(facades):
    train_set = AlignedDataset(facades / "train", "BtoA", 64, 64, train=False, max_images=4)
    val_set = AlignedDataset(facades / "val", "BtoA", 64, 64, train=False, max_images=4)
    tensors = [torch.stack([data[i][k] for i in range(4)]) for data in (train_set, val_set) for k in (0, 1)]
    fp32_train, fp32_val = fifty_steps("fp32", *tensors)
    bf16_train, bf16_val = fifty_steps("bf16", *tensors)
    assert abs(bf16_train - fp32_train) <= 0.1 * fp32_train, (bf16_train, fp32_train)
    assert abs(bf16_val - fp32_val) <= 0.1 * fp32_val, (bf16_val, fp32_val)
