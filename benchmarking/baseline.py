"""benchmark.py's ``baseline`` configuration: the stock networks trained as the official
implementation trains them, in fp32 with torch.optim.Adam's default step, subnormal floats left on,
cuDNN without autotuning, and each pair read with PIL and transformed on every access in a
DataLoader with the official default of 4 worker processes."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch
from PIL import Image

from config import Config
from files.images import list_images
from training.setup import setup
from training.state import RunState

BASELINE_WORKERS = 4  # the official code's default --num_threads


class PILAlignedDataset(torch.utils.data.Dataset):
    """The official way: open, split, resize, crop and flip each pair with PIL on every access."""

    def __init__(self, folder: Path, direction: str, load_size: int, image_size: int) -> None:
        self.files, self.direction = list_images(folder), direction
        self.load_size, self.image_size = load_size, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Imported here, as files/images.py does: only the processes that read pairs import torchvision.
        from torchvision import transforms

        pair = Image.open(self.files[index]).convert("RGB")
        w, h = pair.size
        A, B = pair.crop((0, 0, w // 2, h)), pair.crop((w // 2, 0, w, h))
        size = (self.load_size, self.load_size)
        top = random.randint(0, self.load_size - self.image_size)
        left = random.randint(0, self.load_size - self.image_size)
        flip = random.random() < 0.5
        to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

        def jitter(image):
            image = image.resize(size, Image.BICUBIC)
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
            return to_tensor(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image)

        real_A, real_B = jitter(A), jitter(B)
        return (real_A, real_B) if self.direction == "AtoB" else (real_B, real_A)


def build_baseline(cfg: Config) -> tuple[RunState, torch.utils.data.DataLoader]:
    """The run's state with the stock networks (speedups false: no speed.accelerate) in fp32 and
    torch.optim.Adam's default step, and the official loader over cfg.data_root's train split."""
    state = setup(dataclasses.replace(cfg, precision="fp32", speedups=False))
    torch.set_flush_denormal(False)
    torch.backends.cudnn.benchmark = False
    state.opt_G, state.opt_D = (
        torch.optim.Adam(getattr(state, n).parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        for n in ("G", "D")
    )
    data = PILAlignedDataset(Path(cfg.data_root) / "train", cfg.direction, cfg.load_size, cfg.image_size)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=1,
        shuffle=True,
        num_workers=BASELINE_WORKERS,
        persistent_workers=True,
        pin_memory=state.device.type == "cuda",
    )
    return state, loader
