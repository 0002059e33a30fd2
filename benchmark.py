"""Training throughput of the default recipe, the plain PyTorch way against what train.py does.

    python benchmark.py [--data_root ../shared/datasets/facades] [--iters 15] [--repeats 3] [--json]

Two configurations run in two worker processes, taking turns (one block of `iters` iterations
each, `repeats` times), so that noise from the rest of the machine hits both alike and each has
its own peak memory:

- ``baseline``: as the official implementation trains: fp32, eager, stock convolutions, Adam
  with its default implementation, subnormal floats left on, and images decoded with PIL and
  transformed per item in a DataLoader with the official default of 4 worker processes;
- ``fast``: exactly what ``python train.py`` does by default on this machine (train.setup,
  train.build_data, train.make_loader, train.train_step).

Both use batch 1, 256 px, U-Net 256 and the 70x70 PatchGAN on the real facades training images.
Reported per configuration: median seconds per iteration and images/s over the repeats, the share
of the time spent waiting for data, warm-up (first iterations, incl. any compile) time, and peak
resident memory of the training process (for the baseline without its 4 loader processes,
which only flatters the baseline). The median over blocks of the per-block mean is used, after a warm-up block.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

BASELINE_WORKERS = 4  # the official code's default --num_threads


class PILAlignedDataset(torch.utils.data.Dataset):
    """The official way: open, split, resize, crop and flip each pair with PIL on every access."""

    def __init__(self, folder: Path, direction: str, load_size: int, image_size: int) -> None:
        from dataset import list_images
        self.files, self.direction = list_images(folder), direction
        self.load_size, self.image_size = load_size, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import random

        from PIL import Image
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


def build(kind: str, data_root: str, device: str):
    """State and a data iterator for one configuration; the networks start from the same seed."""
    import train
    import utils
    from config import Config

    cfg = Config(data_root=data_root, device=device)
    if kind == "fast":
        train_set, _ = train.build_data(cfg)
        state = train.setup(cfg)
        loader = train.make_loader(train_set, cfg, state.device)
        return state, loader
    utils.SMALL_MAP_PIXELS = 0  # stock oneDNN convolutions everywhere
    state = train.setup(dataclasses.replace(cfg, precision="fp32"))
    torch.set_flush_denormal(False)
    state.opt_G, state.opt_D = (torch.optim.Adam(getattr(state, n).parameters(), lr=cfg.lr,
                                                       betas=(cfg.beta1, cfg.beta2)) for n in ("G", "D"))
    data = PILAlignedDataset(Path(data_root) / "train", cfg.direction, cfg.load_size, cfg.image_size)
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=True, num_workers=BASELINE_WORKERS,
                                         persistent_workers=True)
    return state, loader


def worker(kind: str, data_root: str, device: str, conn) -> None:
    """Run blocks of iterations when asked; answer with (seconds, data-wait seconds, iterations)."""
    import warnings

    import train
    warnings.filterwarnings("ignore", message=".*worker")  # 4 workers on 2 cores is the point
    state, loader = build(kind, data_root, device)
    batches = iter(loader)
    sync = torch.cuda.synchronize if state.device.type == "cuda" else (lambda: None)
    conn.send("ready")
    while (iters := conn.recv()) is not None:
        waited, started = 0.0, time.perf_counter()
        for _ in range(iters):
            t = time.perf_counter()
            try:
                real_A, real_B = next(batches)
            except StopIteration:
                batches = iter(loader)
                real_A, real_B = next(batches)
            real_A, real_B = real_A.to(state.device), real_B.to(state.device)
            waited += time.perf_counter() - t
            losses = train.train_step(state, real_A, real_B)
        losses.tolist()  # wait for the device
        sync()
        conn.send((time.perf_counter() - started, waited, iters))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send({"peak_rss_mb": round(peak_mb), "dtype": str(state.dtype).removeprefix("torch."),
               "threads": torch.get_num_threads()})


def summarise(blocks: list[tuple[float, float, int]], warmup: tuple, info: dict) -> dict:
    per_iter = [seconds / iters for seconds, _, iters in blocks]
    s = statistics.median(per_iter)
    return {"s_per_iter": round(s, 4), "images_per_s": round(1 / s, 3),
            "data_wait_share": round(sum(b[1] for b in blocks) / sum(b[0] for b in blocks), 4),
            "warmup_s": round(warmup[0], 2), "blocks_s_per_iter": [round(x, 4) for x in per_iter], **info}


def run(args: argparse.Namespace) -> dict:
    context = mp.get_context("spawn")  # fresh interpreters: no state shared between the two
    kinds = ("baseline", "fast")
    pipes, procs = {}, []
    for kind in kinds:
        parent, child = context.Pipe()
        proc = context.Process(target=worker, args=(kind, args.data_root, args.device, child))
        proc.start()
        pipes[kind], procs = parent, procs + [proc]
    for kind in kinds:
        assert pipes[kind].recv() == "ready"
    warmup, blocks = {}, {kind: [] for kind in kinds}
    for kind in kinds:
        pipes[kind].send(args.warmup)
        warmup[kind] = pipes[kind].recv()
    for _ in range(args.repeats):
        for kind in kinds:  # taking turns: the other worker waits idle meanwhile
            pipes[kind].send(args.iters)
            blocks[kind].append(pipes[kind].recv())
    result = {}
    for kind in kinds:
        pipes[kind].send(None)
        result[kind] = summarise(blocks[kind], warmup[kind], pipes[kind].recv())
    for proc in procs:
        proc.join()
    result["speedup"] = round(result["baseline"]["s_per_iter"] / result["fast"]["s_per_iter"], 3)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": mp.cpu_count(),
                         "device": args.device, "torch": torch.__version__,
                         "iters": args.iters, "repeats": args.repeats}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/datasets/facades")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iters", type=int, default=15, help="iterations per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not (Path(args.data_root) / "train").is_dir():
        parser.exit(2, f"error: --data_root {args.data_root}: no train/ folder with the facades images\n")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':9s} {'s/iter':>8s} {'img/s':>7s} {'data wait':>9s} {'warm-up s':>9s} {'peak MB':>8s}")
    for kind in ("baseline", "fast"):
        r = result[kind]
        print(f"{kind:9s} {r['s_per_iter']:8.3f} {r['images_per_s']:7.2f} {r['data_wait_share']:9.1%} "
              f"{r['warmup_s']:9.1f} {r['peak_rss_mb']:8d}   ({r['dtype']}, {r['threads']} threads)")
    print(f"speedup  {result['speedup']:.2f}x   ({result['machine']})")


if __name__ == "__main__":
    main()
