"""FID and KID of the images that ``predict.py --split`` wrote, from the PNG files alone: the
generated ``<output>/<stem>.png`` against the targets ``<output>/real_B/<stem>.png``. The numbers
are those of ``predict.py --fid`` to float rounding (1e-6, tested: its features are computed from
the same 8-bit levels, one image at a time, in the same order), for a run made where the
Inception weights were not installed: tools/gpu_recipe.sh brings a GPU run's test PNGs back, and
this scores them here.

    python tools/fid_of_pngs.py GENERATED_DIR [REAL_DIR (default GENERATED_DIR/real_B)] [--device cpu]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as tools/fid_of_pngs.py

import torch  # noqa: E402

from evaluation.metrics import InceptionFeatures, MissingPackageError, fid_kid_of_features  # noqa: E402
from files.images import DatasetError, read_image, scan_folder  # noqa: E402
from utils import ArgumentParser, exit_on_errors  # noqa: E402


def read_levels(paths: list[Path]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] from 8-bit files: v / 127.5 - 1, whose levels are v again."""
    return torch.stack([read_image(path, 3) for path in paths]).float().div(127.5).sub(1.0)


def matched_files(generated: Path, real: Path) -> tuple[list[Path], list[Path]]:
    """The generated PNGs in predict.py's order and the real one of each name."""
    fakes = [path for path in scan_folder(generated)[0] if path.suffix.lower() == ".png"]
    if len(fakes) < 2:
        raise DatasetError(f"{generated}: {len(fakes)} PNG files, but FID and KID need at least 2")
    reals = [real / path.name for path in fakes]
    missing = [path for path in reals if not path.is_file()]
    if missing:
        raise DatasetError(
            f"{missing[0]}: no such file (each generated PNG needs its target of the same name)"
        )
    return fakes, reals


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("generated", type=Path, help="folder of predict.py --split's generated PNGs")
    parser.add_argument(
        "real", type=Path, nargs="?", help="folder of the targets (default: GENERATED/real_B)"
    )
    parser.add_argument("--device", default="cpu", help="where Inception runs (cpu, cuda)")
    args = parser.parse_args()
    with exit_on_errors((), (DatasetError, MissingPackageError)):
        fakes, reals = matched_files(args.generated, args.real or args.generated / "real_B")
        features = InceptionFeatures(args.device)

        def features_of(paths: list[Path]) -> torch.Tensor:  # one image at a time, as predict.py does
            return torch.cat([features(image[None]) for image in read_levels(paths)])

        result = fid_kid_of_features(features_of(reals), features_of(fakes))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
