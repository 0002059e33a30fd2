"""Image files as people have them, for dataset.py, predict.py and demo.py: the images of a
folder (sorted as a person would, one name per image), decoding with Pillow (every common format),
each file turned upright per its EXIF orientation (as viewers show it), high-bit-depth files (16-bit
PNG/TIFF, 32-bit integer or float TIFF) scaled to 8 bits, A|B pair files split, and resizing as
the official code does. Every problem with a file or folder is one DatasetError line naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# At most this many unmatched file names are spelled out in the one-line error of paired_folders.
MAX_LISTED = 20


class DatasetError(RuntimeError):
    """A problem with the data on disk; the message names the file or folder."""


def scan_folder(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The image files directly in `folder`, sorted by name (numerically where names are numbers),
    and the names of the other, non-hidden files, which are skipped.

    Two images of one name without extension (1.jpg and 1.png) are refused: pairs are matched
    and predictions written by that name, so one of them would silently lose.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise DatasetError(f"{folder}: cannot list this folder ({err.strerror or err})") from None
    images = sorted((p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS), key=_name_order)
    for path in images:
        _require_file(path)
    _refuse_same_stems(folder, images)
    others = sorted(
        p.name
        for p in entries
        if p.suffix.lower() not in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )
    return images, others


def _name_order(path: Path) -> tuple[int, int, str]:
    """The sort key of an image: "10.jpg" after "9.jpg", as a person would order the facades files;
    the full name breaks ties (1.jpg, 1.png, 01.jpg), so the order never depends on the file system's."""
    # isdecimal, not isdigit: "²".isdigit() is True but int("²") fails.
    stem = path.stem
    return (0, int(stem), path.name) if stem.isdecimal() else (1, 0, path.name)


def _require_file(path: Path) -> None:
    """An entry named like an image must be a file: a folder or dead link would otherwise be
    skipped silently, and the user would miss an image they think is there."""
    if path.is_file():
        return
    what = "a folder" if path.is_dir() else "a broken link" if path.is_symlink() else "not a regular file"
    raise DatasetError(f"{path}: named like an image but is {what}; move or rename it")


def _refuse_same_stems(folder: Path, images: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in images:
        if path.stem in seen:
            raise DatasetError(
                f"{folder}: {seen[path.stem].name} and {path.name} have the same name without "
                f"extension; keep one (pairs are matched and predictions named by that name, "
                f"so which one is meant is ambiguous)"
            )
        seen[path.stem] = path


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted as scan_folder sorts them."""
    return scan_folder(folder)[0]


def warn_ignored(folder: Path, ignored: list[str]) -> None:
    if ignored:
        print(
            f"warning: {folder}: ignored {len(ignored)} files that are not images (e.g. {ignored[0]})",
            file=sys.stderr,
        )


def decode_image(path: Path) -> Image.Image:
    """Decode a whole image file as 8-bit RGB, upright as viewers show it; a corrupt, truncated,
    empty or enormous file raises DatasetError naming it."""
    try:
        with Image.open(path) as file:
            # convert("RGB") reads all pixels (so errors surface here) and also turns grayscale,
            # RGBA and palette images into 3 channels.
            return to_8bit(upright(file)).convert("RGB")
    # Not only OSError: Pillow's decoders also raise SyntaxError (a broken PNG chunk),
    # ValueError, DecompressionBombError, struct.error, MemoryError ... for one bad file; each
    # is a problem of that file, to name in one line rather than a traceback.
    except Exception as err:  # noqa: BLE001
        raise DatasetError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None


def upright(image: Image.Image) -> Image.Image:
    """The image turned per its EXIF orientation tag (phones store photos sideways and set it).

    An EXIF block that cannot be parsed is ignored, as image viewers ignore it (a failure to read
    the pixels themselves surfaces again, and is named, when decode_image converts them).
    """
    try:
        if image.getexif().get(0x0112, 1) == 1:  # upright already: no copy
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image


def to_8bit(image: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits ("I;16*", "I", "F") as "L", scaled so that its
    white stays white (a 16-bit value v becomes round(v / 257)); other images unchanged.

    Pillow's own conversion clips these instead, so a 16-bit PNG comes out near white. 16-bit RGB
    and RGBA PNG/TIFF files need nothing: Pillow opens them as 8-bit RGB/RGBA already (keeping the
    high byte, within one level of round(v / 257)).
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    # float32 is exact enough: round(v / 257) is never within 0.002 of a tie, float32 errs by 1e-5.
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    white = _nominal_white(image.mode, float(pixels.max(initial=0.0)))
    return Image.fromarray(np.clip(np.rint(pixels * np.float32(255.0 / white)), 0, 255).astype(np.uint8))


def _nominal_white(mode: str, peak: float) -> float:
    """The value that means white in a high-bit-depth image whose brightest pixel is `peak`.

    The file does not say, so: "I;16" is 16 bits; "I" (32-bit integers) holds 16-bit data when it
    fits (how Pillow reads many 16-bit files), else 32-bit; "F" (float) is 0..1 by convention, else
    0..255 or 0..65535 when it fits, else stretched to its own peak.
    """
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":
        return 65535.0 if peak <= 65535 else 2.0**32 - 1
    return next((white for white in (1.0, 255.0, 65535.0) if peak <= white), peak)


def to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as uint8 (channels, H, W): 1 = grayscale (ITU-R 601 luma), 3 = RGB."""
    pixels = np.array(image.convert("L" if channels == 1 else "RGB"))  # (H, W) or (H, W, 3)
    tensor = torch.from_numpy(pixels)
    # contiguous: the crop and none modes cache this tensor as it is, and a channels-last view
    # would reach the networks in that memory format.
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()  # (C, H, W)


def read_image(path: Path, channels: int = 3) -> torch.Tensor:
    """Decode one image file as uint8 (channels, H, W): 1 = grayscale, 3 = RGB."""
    return to_tensor(decode_image(path), channels)


def read_pair(path: Path, channels: tuple[int, int] = (3, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one aligned file into its halves (A = left, B = right), uint8 (C, H, W/2) each,
    with `channels` = (channels of A, channels of B). The whole file is turned upright before it
    is split, so A and B are the halves the user sees."""
    image = decode_image(path)
    width, height = image.size
    if width % 2 or width < 2:
        raise DatasetError(f"{path}: width {width} is odd, so it cannot be split into A|B halves")
    half = width // 2
    return (
        to_tensor(image.crop((0, 0, half, height)), channels[0]),
        to_tensor(image.crop((half, 0, width, height)), channels[1]),
    )


def read_two(
    path_A: Path, path_B: Path, channels: tuple[int, int] = (3, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the two files of a paired_folders pair, each turned upright by its own EXIF tag (one
    may be a sideways phone photo, the other not); they must then have the same size to be aligned."""
    image_A, image_B = decode_image(path_A), decode_image(path_B)
    if image_A.size != image_B.size:
        (wa, ha), (wb, hb) = image_A.size, image_B.size
        raise DatasetError(
            f"{path_A} is {wa}x{ha} but {path_B} is {wb}x{hb}: the two images of a pair "
            f"must have the same size (pixel (x, y) of A corresponds to pixel (x, y) of B)"
        )
    return to_tensor(image_A, channels[0]), to_tensor(image_B, channels[1])


def side_channels(direction: str, input_nc: int, output_nc: int) -> tuple[int, int]:
    """Channels of the A and B sides: the input side gets input_nc, the target side output_nc."""
    return (input_nc, output_nc) if direction == "AtoB" else (output_nc, input_nc)


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased resize of a uint8 (..., H, W) image, as the official code does."""
    # Imported here: a script stopping at a bad argument need not pay for importing torchvision.
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
