"""The 12 classes of the CMP facade label maps and the colours the facades set paints them in.

    python -m demo_app.palette [--data_root data/facades]

prints the palette derived from the training label maps; FACADES_CLASSES holds its result.

How it was derived (derive_palette): the label maps are the B halves of the aligned JPEGs, so
their colours are smeared by compression, mostly along the edges between regions. Only "flat"
pixels are kept (every channel within 24 levels over their 5x5 neighbourhood), 400,000 of them
are drawn with a fixed seed, and k-means with 12 clusters (k-means++ start, best of 5 restarts)
finds the colours; the centres, rounded, are the palette. It comes out as 12 steps along
matplotlib's "jet" colour map, from dark blue to dark red.

How the colours were named: the CMP Facade Database numbers its classes 1 background,
2 facade, 3 window, 4 door, 5 cornice, 6 sill, 7 balcony, 8 blind, 9 deco, 10 molding,
11 pillar, 12 shop, and the i-th class is the i-th colour along jet. That order was checked
against where each colour appears in the 400 training maps (pixels assigned to the nearest
colour, regions of at least 40 px):
  background (dark blue): the largest regions, the ones touching the image border (sky, neighbours);
  facade: the colour present in every map, around everything else;
  window: the most numerous rectangles (about 27 per map), in rows and columns;
  door: 90 % of its pixels in the bottom fifth of the image, large upright rectangles;
  cornice: thin bands with a window directly below them (48 %): the hoods over windows,
           and the roof cornice;
  sill: thin bands with a window directly above them (66 %);
  balcony: wide low regions (median 34x14 px), the long railings of Barcelona-style facades;
  blind: narrow upright regions (7x20 px) beside and in windows, the shutters of the photos;
  deco: small irregular blobs (13x12 px) anywhere;
  molding: the long horizontal bands between floors (median 43x9 px);
  pillar: tall narrow regions (8x35 px) between windows and beside doors;
  shop: 79 % of its pixels in the bottom fifth, the shop fronts of the ground floor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (name, RGB) in the CMP class order; the colours are derive_palette's rounded cluster centres on
# the 400 training label maps of the facades set (their clean values would be jet's, e.g.
# (0, 0, 170) for background, but JPEG shifted them and these are what the model has seen).
FACADES_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (0, 0, 222)),
    ("facade", (0, 48, 255)),
    ("window", (1, 128, 254)),
    ("door", (1, 207, 255)),
    ("cornice", (32, 255, 224)),
    ("sill", (112, 254, 142)),
    ("balcony", (192, 255, 63)),
    ("blind", (254, 240, 1)),
    ("deco", (255, 159, 1)),
    ("molding", (254, 80, 0)),
    ("pillar", (253, 1, 1)),
    ("shop", (174, 0, 1)),
)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def blank_facade(size: int) -> np.ndarray:
    """A size x size label map (H, W, 3) uint8: all facade, with a strip of background (sky) on top."""
    colours = dict(FACADES_CLASSES)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = colours["facade"]
    image[: size // 16] = colours["background"]
    return image


def flat_pixels(label_map: torch.Tensor, window: int = 5, tolerance: int = 24) -> torch.Tensor:
    """(N, 3) float colours of the pixels of a uint8 (3, H, W) map whose window x window
    neighbourhood varies by at most `tolerance` per channel: the insides of regions, where
    JPEG has not blended two classes."""
    x = label_map.float()[None]  # (1, 3, H, W)
    high = F.max_pool2d(x, window, 1, window // 2)
    low = -F.max_pool2d(-x, window, 1, window // 2)
    flat = (high - low).amax(dim=1)[0] <= tolerance  # (H, W)
    return x[0].permute(1, 2, 0)[flat]


def kmeans(
    points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 50
) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means from a k-means++ start; returns (k, D) centres and the summed squared error."""
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(k - 1):  # k-means++: next centre drawn with probability ~ squared distance
        d2 = torch.cdist(points, centres).amin(dim=1) ** 2
        centres = torch.cat([centres, points[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]])
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        moved = torch.stack(
            [points[nearest == j].mean(0) if (nearest == j).any() else centres[j] for j in range(k)]
        )
        if torch.allclose(moved, centres):
            break
        centres = moved
    error = (torch.cdist(points, centres).amin(dim=1) ** 2).sum().item()
    return centres, error


def jet_order(colours: np.ndarray) -> np.ndarray:
    """Indices that sort (K, 3) RGB colours by their nearest position on matplotlib's jet map."""
    from matplotlib import colormaps

    jet = colormaps["jet"](np.linspace(0, 1, 1024))[:, :3] * 255  # (1024, 3)
    position = np.linalg.norm(colours[:, None] - jet[None], axis=-1).argmin(axis=1)
    return np.argsort(position)


def derive_palette(
    label_maps: list[torch.Tensor], k: int = 12, samples: int = 400_000, restarts: int = 5, seed: int = 0
) -> np.ndarray:
    """(k, 3) uint8 colours of uint8 (3, H, W) label maps, in jet order (the CMP class order)."""
    points = torch.cat([flat_pixels(m) for m in label_maps])
    generator = torch.Generator().manual_seed(seed)
    points = points[torch.randperm(len(points), generator=generator)[:samples]]
    centres, _ = min((kmeans(points, k, generator) for _ in range(restarts)), key=lambda run: run[1])
    colours = centres.round().clamp(0, 255).numpy()
    return colours[jet_order(colours)].astype(np.uint8)


def training_label_maps(data_root: Path, limit: int = 0) -> list[torch.Tensor]:
    """The B halves (label maps) of the aligned facades training files, uint8 (3, H, W)."""
    from files.images import list_images, read_pair

    files = list_images(data_root / "train")
    return [read_pair(path)[1] for path in (files[:limit] if limit else files)]


def main(argv: list[str] | None = None) -> None:
    from utils import ArgumentParser

    parser = ArgumentParser(__doc__)
    parser.add_argument("--data_root", type=Path, default=Path("data/facades"), help="the facades set")
    args = parser.parse_args(argv)
    if not (args.data_root / "train").is_dir():
        parser.error(f"{args.data_root / 'train'}: no such folder (set --data_root)")
    colours = derive_palette(training_label_maps(args.data_root))
    for (name, _), colour in zip(FACADES_CLASSES, colours):
        print(f'    ("{name}", {tuple(int(c) for c in colour)}),')


if __name__ == "__main__":
    main()
