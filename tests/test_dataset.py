import numpy as np
import pytest
import torch
from PIL import Image

from dataset import AlignedDataset, DatasetError, list_images


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
