import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import AlignedDataset, PairedFoldersDataset
from files.images import DatasetError, list_images, read_image, read_pair, read_two


def test_files_are_sorted_numerically(tmp_path):
    for name in ["10.jpg", "2.jpg", "1.jpg", "notes.txt", "b.png", "a.png"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["1.jpg", "2.jpg", "10.jpg", "a.png", "b.png"]


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_crop_and_flip_are_the_same_for_both_halves(synthetic_split, direction):
    """B = 255 - A in every file, so real_A + real_B == 0 in [-1, 1] after any shared crop or flip."""
    folder = synthetic_split(n=3, size=40)
    data = AlignedDataset(folder, direction, load_size=40, image_size=32, train=True, flip=True, seed=1)
    crops = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        for i in range(len(data)):
            real_A, real_B = data[i]
            assert real_A.shape == real_B.shape == (3, 32, 32)
            assert torch.allclose(real_A + real_B, torch.zeros_like(real_A), atol=1e-6)
            crops.add(real_A.sum().item())
    assert len(crops) > 3, "crops and flips should vary between epochs"


def test_direction_picks_the_input_half(synthetic_split):
    folder = synthetic_split(n=1, size=32)
    pixels = np.array(Image.open(folder / "1.png"))
    left = torch.from_numpy(pixels[:, :32]).permute(2, 0, 1).float() / 127.5 - 1
    a_to_b = AlignedDataset(folder, "AtoB", 32, 32, train=False)
    b_to_a = AlignedDataset(folder, "BtoA", 32, 32, train=False)
    assert torch.allclose(a_to_b[0][0], left, atol=1e-6)
    assert torch.allclose(b_to_a[0][1], left, atol=1e-6)


def test_augmentation_is_reproducible(synthetic_split):
    folder = synthetic_split(n=2)
    one = AlignedDataset(folder, "BtoA", 40, 32, train=True, seed=7)
    two = AlignedDataset(folder, "BtoA", 40, 32, train=True, seed=7)
    one.set_epoch(3)
    two.set_epoch(3)
    assert torch.equal(one[1][0], two[1][0])


def test_eval_mode_resizes_without_jitter(synthetic_split):
    folder = synthetic_split(n=1, size=64)
    data = AlignedDataset(folder, "BtoA", 72, 32, train=False)
    first = data[0][0]
    data.set_epoch(5)
    assert first.shape == (3, 32, 32) and torch.equal(first, data[0][0])
    assert first.min() >= -1 and first.max() <= 1


def test_odd_width_is_named(tmp_path):
    Image.new("RGB", (33, 16)).save(tmp_path / "odd.png")
    with pytest.raises(DatasetError, match=r"odd\.png: width 33 is odd"):
        AlignedDataset(tmp_path, "BtoA", 16, 16, train=False)


def test_corrupt_image_is_named(tmp_path):
    Image.new("RGB", (64, 32)).save(tmp_path / "1.jpg")
    (tmp_path / "2.jpg").write_bytes((tmp_path / "1.jpg").read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"2\.jpg: cannot decode"):
        AlignedDataset(tmp_path, "BtoA", 32, 32, train=False)


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        AlignedDataset(tmp_path, "BtoA", 32, 32, train=False)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_become_rgb(tmp_path, mode):
    Image.new(mode, (64, 32)).save(tmp_path / "1.png")
    real_A, real_B = AlignedDataset(tmp_path, "BtoA", 32, 32, train=False)[0]
    assert real_A.shape == real_B.shape == (3, 32, 32)


def test_real_facades_pair(facades):
    data = AlignedDataset(facades / "train", "BtoA", 286, 256, train=True, max_images=2)
    real_A, real_B = data[0]
    assert real_A.shape == real_B.shape == (3, 256, 256)
    assert -1 <= real_A.min() and real_A.max() <= 1


def test_non_image_files_are_ignored_with_one_warning(synthetic_split, capsys):
    folder = synthetic_split(n=2)
    (folder / "notes.txt").write_text("x")
    (folder / "Thumbs.db").write_bytes(b"x")
    data = AlignedDataset(folder, "BtoA", 40, 32, train=True)
    assert len(data) == 2
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "ignored 2 files that are not images" in warnings[0]


def test_image_smaller_than_the_crop_is_resized_up(tmp_path):
    Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "1.png")
    real_A, real_B = AlignedDataset(tmp_path, "BtoA", 36, 32, train=True)[0]
    assert real_A.shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Images as people have them: high bit depths, EXIF orientation, two files of one name
# ---------------------------------------------------------------------------------------------


def as_8bit(values16: np.ndarray) -> np.ndarray:
    return np.rint(values16 / 257).astype(np.uint8)


def gradient16() -> np.ndarray:
    """(16, 64) uint16: every value of the 16-bit range in steps, and the left half 91 * 257."""
    pixels = np.linspace(0, 65535, 16 * 64).round().astype(np.uint16).reshape(16, 64)
    pixels[:, :32] = 91 * 257
    return pixels


@pytest.mark.parametrize(
    "name,mode", [("1.png", "I;16"), ("1.tif", "I;16"), ("1.tif", "I;16B"), ("1.tif", "I")]
)
def test_16_bit_gray_is_scaled_not_clipped(tmp_path, name, mode):
    pixels = gradient16()
    image = Image.fromarray(
        pixels.astype(">u2") if mode == "I;16B" else pixels.astype(np.int32) if mode == "I" else pixels
    )
    assert image.mode == mode
    image.save(tmp_path / name)
    real_A, real_B = read_pair(tmp_path / name)  # uint8 (3, 16, 32) each
    assert real_A.float().mean().item() == 91  # today near white: 255
    assert torch.equal(real_B[0], torch.from_numpy(as_8bit(pixels[:, 32:])))


def test_float_images_are_read_as_0_to_1(tmp_path):
    pixels = gradient16().astype(np.float32) / 65535
    Image.fromarray(pixels).save(tmp_path / "1.tif")
    gray = read_image(tmp_path / "1.tif", channels=1)[0]
    assert torch.equal(gray, torch.from_numpy(np.rint(pixels * 255).astype(np.uint8)))


def write_png16(path, pixels: np.ndarray) -> None:
    """A 16-bit RGB (3 channels) or RGBA (4) PNG, which Pillow cannot write: the format by hand."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_and_rgba_are_within_one_level(tmp_path, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (8, 16, channels), dtype=np.uint16)
    write_png16(tmp_path / "1.png", pixels)
    loaded = read_image(tmp_path / "1.png").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(loaded - as_8bit(pixels[..., :3])).max() <= 1


QUADRANTS = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (230, 230, 230)]


def quadrants(size: int = 16) -> np.ndarray:
    """(2 size, 2 size, 3) uint8 of four flat colours, which shows any turn or mirror."""
    pixels = np.zeros((2 * size, 2 * size, 3), np.uint8)
    for (top, left), colour in zip([(0, 0), (0, size), (size, 0), (size, size)], QUADRANTS):
        pixels[top : top + size, left : left + size] = colour
    return pixels


def save_sideways(image: Image.Image, path, orientation: int) -> None:
    """Store `image` as a camera would with EXIF orientation 6 (turned a quarter left, to be turned
    right on display) or 8 (the other way), as a JPEG."""
    stored = image.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, subsampling=0, exif=exif)


def assert_upright_pair(real_A: torch.Tensor, real_B: torch.Tensor) -> None:
    """A is the quadrants as drawn (not turned, not mirrored) and B = 255 - A, pixel for pixel."""
    expected = torch.from_numpy(quadrants()).permute(2, 0, 1).float()
    assert real_A.shape == real_B.shape == expected.shape
    assert (real_A.float() - expected).abs().mean() < 3
    assert (real_A.float() + real_B.float() - 255).abs().mean() < 3


def test_a_sideways_photo_is_split_once_upright(tmp_path):
    pair = np.concatenate([quadrants(), 255 - quadrants()], axis=1)  # 64 wide, 32 high as the user sees it
    save_sideways(Image.fromarray(pair), tmp_path / "1.jpg", orientation=6)  # stored 32 wide, 64 high
    assert_upright_pair(*read_pair(tmp_path / "1.jpg"))
    real_A, real_B = AlignedDataset(tmp_path, "AtoB", 32, 32, train=True, seed=2)[0]
    assert torch.allclose(real_A + real_B, torch.zeros_like(real_A), atol=0.1)  # crops and flips stay shared


def test_each_file_of_a_pair_is_turned_by_its_own_tag(tmp_path):
    for side in "AB":
        (tmp_path / side).mkdir()
    save_sideways(Image.fromarray(quadrants()), tmp_path / "A" / "1.jpg", orientation=6)
    save_sideways(Image.fromarray(255 - quadrants()), tmp_path / "B" / "1.jpg", orientation=8)
    Image.fromarray(quadrants()).save(tmp_path / "A" / "2.png")  # upright, no tag
    save_sideways(Image.fromarray(255 - quadrants()), tmp_path / "B" / "2.jpg", orientation=6)
    for stem in ("1", "2"):
        assert_upright_pair(
            *read_two(next((tmp_path / "A").glob(f"{stem}.*")), tmp_path / "B" / f"{stem}.jpg")
        )
    assert len(PairedFoldersDataset(tmp_path, "AtoB", 32, 32, train=False)) == 2


def test_two_files_of_one_name_are_refused_in_one_line(synthetic_split):
    folder = synthetic_split(n=2)
    Image.open(folder / "1.png").save(folder / "1.jpg")
    expected = (
        f"{folder}: 1.jpg and 1.png have the same name without extension; keep one (pairs are matched "
        f"and predictions named by that name, so which one is meant is ambiguous)"
    )
    # predict.py reads folders with list_images, the datasets with scan_folder
    for read in (list_images, lambda f: AlignedDataset(f, "BtoA", 32, 32, train=False)):
        with pytest.raises(DatasetError) as err:
            read(folder)
        assert str(err.value) == expected


# ---------------------------------------------------------------------------------------------
# Bad files: one line naming the file, never a traceback
# ---------------------------------------------------------------------------------------------


def png_with(width: int, height: int, tail: bytes = b"") -> bytes:
    """A PNG header of width x height (RGB), then `tail` in place of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + tail
        + chunk(b"IEND", b"")
    )


def broken_chunk_png() -> bytes:
    """A 64x64 PNG whose pixel data is cut after half, then a chunk of an impossible type, which
    Pillow reports as a SyntaxError (found by flipping bytes of real PNGs)."""
    pixels = zlib.compress(b"".join(b"\0" + bytes(range(192)) for _ in range(64)))[:100]
    idat = struct.pack(">I", len(pixels)) + b"IDAT" + pixels + struct.pack(">I", zlib.crc32(b"IDAT" + pixels))
    return png_with(64, 64, idat + struct.pack(">I", 0) + b"$\xe8`\xf1" + struct.pack(">I", 0))


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "cannot decode image (UnidentifiedImageError: cannot identify image file"),
        (
            png_with(40000, 40000),
            "cannot decode image (DecompressionBombError: Image size (1600000000 pixels)",
        ),
        (broken_chunk_png(), "cannot decode image (SyntaxError: broken PNG file"),
        (b"GIF89a not really", "cannot decode image (UnidentifiedImageError"),
    ],
    ids=["zero-bytes", "huge-dimensions", "broken-png-chunk", "wrong-content"],
)
def test_a_bad_image_file_is_named(synthetic_split, content, reason):
    folder = synthetic_split(n=2)
    (folder / "3.png").write_bytes(content)
    with pytest.raises(DatasetError) as err:
        AlignedDataset(folder, "BtoA", 32, 32, train=False)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{folder / '3.png'}: {reason}"), (
        err.value
    )


@pytest.mark.parametrize(
    "make,what",
    [
        (lambda path: path.mkdir(), "a folder"),
        (lambda path: path.symlink_to(path.parent / "gone.png"), "a broken link"),
        (lambda path: os.mkfifo(path), "not a regular file"),
    ],
    ids=["folder", "broken-link", "fifo"],
)
def test_an_entry_named_like_an_image_that_is_no_file_is_named(synthetic_split, make, what):
    folder = synthetic_split(n=2)
    make(folder / "3.png")
    with pytest.raises(DatasetError) as err:
        AlignedDataset(folder, "BtoA", 32, 32, train=False)
    assert str(err.value) == f"{folder / '3.png'}: named like an image but is {what}; move or rename it"


def test_unreadable_file_is_named(synthetic_split, monkeypatch):
    folder = synthetic_split(n=2)
    (folder / "2.png").chmod(0)
    if os.geteuid() == 0:  # root reads any file whatever its permissions: refuse it as the OS would
        real_open = Image.open

        def refusing_open(path, *args, **kwargs):
            if os.path.basename(path) == "2.png":
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(Image, "open", refusing_open)
    with pytest.raises(DatasetError, match=r"2\.png: cannot decode image \(PermissionError"):
        AlignedDataset(folder, "BtoA", 32, 32, train=False)


def test_names_of_other_digits_sort_without_error(tmp_path):
    for name in ["2.png", "\u00b2.png", "\u0663.png", "10.png"]:  # superscript two; Arabic-Indic three
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["2.png", "\u0663.png", "10.png", "\u00b2.png"]
