"""Any paired dataset, any size: layouts, preprocessing modes, size rules, channels and the dataset family.

The layouts are built on the fly in tmp_path from a few real facades pairs.
"""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_NETWORKS, build_archive, cli_flags, run_script, tiny_config
from PIL import Image

import train
from config import (
    FACADES_URL,
    Config,
    architecture_defaults,
    generator_depth,
)
from dataset import AlignedDataset, PairedFoldersDataset, match_pairs
from files.images import DatasetError, list_images
from generator import UNetGenerator
from reporting.figures import HEADER_HEIGHT, save_sample_grid
from training.checkpoint import CheckpointError, full_checkpoint, restore
from training.cli import parse_args
from training.loader import build_data, make_dataset, prepare_data_root
from training.settings import ConfigError
from training.setup import generator_kwargs, setup

# ---------------------------------------------------------------------------------------------
# Building layouts from real pairs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def halves(facades):
    """The first 3 real training pairs as (A, B) = (photo, label map) PIL images, 256x256 each."""
    pairs = []
    for path in list_images(facades / "train")[:3]:
        with Image.open(path) as image:
            image = image.convert("RGB")
        pairs.append((image.crop((0, 0, 256, 256)), image.crop((256, 0, 512, 256))))
    return pairs


def make_aligned(root, pairs, splits=("train", "val"), size=None):
    """root/<split>/<i>.png with A|B side by side; `size` (width, height) resizes each half first."""
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, (a, b) in enumerate(pairs, 1):
            if size:
                a, b = a.resize(size, Image.BICUBIC), b.resize(size, Image.BICUBIC)
            canvas = Image.new("RGB", (2 * a.width, a.height))
            canvas.paste(a, (0, 0))
            canvas.paste(b, (a.width, 0))
            canvas.save(root / split / f"{i}.png")
    return root


def make_paired(root, pairs, splits=("train", "val"), ext_A=(".png",), ext_B=(".png",)):
    """root/<split>/A/<i>.<ext> and root/<split>/B/<i>.<ext>, the extensions cycling per file."""
    for split in splits:
        for side in "AB":
            (root / split / side).mkdir(parents=True, exist_ok=True)
        for i, (a, b) in enumerate(pairs, 1):
            a.save(root / split / "A" / f"{i}{ext_A[(i - 1) % len(ext_A)]}")
            b.save(root / split / "B" / f"{i}{ext_B[(i - 1) % len(ext_B)]}")
    return root


@pytest.fixture(scope="module")
def wide_split(tmp_path_factory, halves):
    """One aligned split of 2 real pairs resized to 600x400 halves (a non-square source)."""
    return make_aligned(tmp_path_factory.mktemp("wide"), halves[:2], ("train",), size=(600, 400)) / "train"


def tiny(**overrides) -> Config:
    return tiny_config(
        **{"seed": 3, "num_samples": 2, "max_images": 2, "epochs": 1, "log_every": 1, **overrides}
    )


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_train", [True, False])
def test_paired_folders_give_the_same_pairs_as_aligned(tmp_path, halves, is_train):
    aligned = make_aligned(tmp_path / "aligned", halves) / "train"
    paired = make_paired(tmp_path / "paired", halves) / "train"
    args = dict(direction="BtoA", load_size=72, image_size=64, train=is_train, seed=5)
    one, two = AlignedDataset(aligned, **args), PairedFoldersDataset(paired, **args)
    one.set_epoch(2)
    two.set_epoch(2)
    assert len(one) == len(two) == 3
    for i in range(3):
        assert all(torch.equal(x, y) for x, y in zip(one[i], two[i]))


def test_paired_folders_match_by_name_across_extensions(tmp_path, halves):
    folder = (
        make_paired(
            tmp_path, halves, ("train",), ext_A=(".png", ".jpg", ".webp"), ext_B=(".jpg", ".png", ".bmp")
        )
        / "train"
    )
    assert [(a.name, b.name) for a, b in match_pairs(folder)] == [
        ("1.png", "1.jpg"),
        ("2.jpg", "2.png"),
        ("3.webp", "3.bmp"),
    ]
    data = PairedFoldersDataset(folder, "AtoB", 64, 64, train=False)
    # Item i holds pair i: its target (B, a JPEG, PNG or BMP) is closest to label map i.
    labels = [
        torch.from_numpy(np.array(b.resize((64, 64), Image.BICUBIC))).permute(2, 0, 1) / 127.5 - 1
        for _, b in halves
    ]
    for i in range(3):
        errors = [(data[i][1] - label).abs().mean().item() for label in labels]
        assert min(range(3), key=errors.__getitem__) == i


def test_unmatched_files_are_listed_in_one_line(tmp_path, halves):
    folder = make_paired(tmp_path, halves[:2], ("train",)) / "train"
    halves[2][0].save(folder / "A" / "3.png")
    for name in ("4.jpg", "5.png"):
        halves[2][1].save(folder / "B" / name)
    with pytest.raises(DatasetError) as err:
        PairedFoldersDataset(folder, "AtoB", 64, 64, train=False)
    assert one_line(err).endswith(
        "train: 3 files have no partner of the same name in the other folder: A/3.png, B/4.jpg, B/5.png"
    )


def test_many_unmatched_files_are_counted_after_the_first_twenty(tmp_path):
    for side in "AB":
        (tmp_path / side).mkdir()
    for i in range(25):
        (tmp_path / "A" / f"a{i:02d}.png").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        match_pairs(tmp_path)
    assert "25 files have no partner" in one_line(err) and "A/a19.png and 5 more" in str(err.value)


def test_same_name_twice_in_one_folder_is_ambiguous(tmp_path, halves):
    folder = make_paired(tmp_path, halves[:1], ("train",)) / "train"
    halves[0][0].save(folder / "A" / "1.jpg")
    with pytest.raises(DatasetError) as err:
        PairedFoldersDataset(folder, "AtoB", 64, 64, train=False)
    assert "1.jpg and 1.png have the same name without extension" in one_line(err)


def test_missing_B_folder_is_named(tmp_path, halves):
    folder = make_paired(tmp_path, halves[:1], ("train",)) / "train"
    (folder / "B" / "1.png").unlink()
    (folder / "B").rmdir()
    with pytest.raises(DatasetError) as err:
        PairedFoldersDataset(folder, "AtoB", 64, 64, train=False)
    assert one_line(err) == f"{folder / 'B'}: no such folder"


def test_empty_paired_folders_are_named(tmp_path):
    for side in "AB":
        (tmp_path / side).mkdir()
    with pytest.raises(DatasetError) as err:
        PairedFoldersDataset(tmp_path, "AtoB", 64, 64, train=False)
    assert "no images" in one_line(err)


def test_pair_of_two_sizes_is_named(tmp_path, halves):
    folder = make_paired(tmp_path, halves[:1], ("train",)) / "train"
    halves[0][1].resize((128, 96)).save(folder / "B" / "1.png")
    with pytest.raises(DatasetError) as err:
        PairedFoldersDataset(folder, "AtoB", 64, 64, train=False)
    assert "1.png is 256x256 but" in one_line(err) and "1.png is 128x96: the two images of a pair" in str(
        err.value
    )


def test_train_py_reports_unmatched_files_in_one_line(tmp_path, halves):
    root = make_paired(tmp_path / "pairs", halves[:2])
    (root / "train" / "B" / "2.png").rename(root / "train" / "B" / "7.png")
    args = cli_flags(dataset="custom", data_root=root, data_layout="paired_folders", **TINY_NETWORKS)
    result = run_script("train.py", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {root / 'train'}: 2 files have no partner of the same name in the other folder: "
        "A/2.png, B/7.png"
    ]


# ---------------------------------------------------------------------------------------------
# Preprocessing modes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preprocess,is_train,shape",
    [
        ("resize_and_crop", True, (64, 64)),
        ("resize_and_crop", False, (64, 64)),
        ("crop", True, (64, 64)),
        ("crop", False, (400, 600)),
        ("scale_width", True, (64, 64)),
        ("scale_width", False, (43, 64)),  # 64 * 400 / 600 = 42.7
        ("none", True, (400, 600)),
        ("none", False, (400, 600)),
    ],
)
def test_preprocess_shapes_of_a_600x400_pair(wide_split, preprocess, is_train, shape):
    data = AlignedDataset(wide_split, "BtoA", 72, 64, train=is_train, preprocess=preprocess, multiple=8)
    real_A, real_B = data[1]
    assert real_A.shape == real_B.shape == (3, *shape)
    assert -1 <= real_A.min() and real_A.max() <= 1
    if not is_train:  # evaluation items never change: no random crop, no flip
        data.set_epoch(7)
        assert torch.equal(real_A, data[1][0])


def test_scale_width_keeps_the_aspect_in_the_cache(wide_split):
    data = AlignedDataset(wide_split, "BtoA", 72, 32, train=True, preprocess="scale_width")
    assert data.real_A[0].shape == (3, 48, 72)  # 600x400 -> 72 wide, 72 * 400 / 600 = 48 high


def test_full_size_evaluation_items_are_the_images_themselves(wide_split):
    with Image.open(list_images(wide_split)[0]) as image:
        label = np.array(image.convert("RGB"))[:, 600:]  # B half, (400, 600, 3)
    for preprocess in ("crop", "none"):
        real_A = AlignedDataset(wide_split, "BtoA", 72, 64, train=False, preprocess=preprocess)[0][0]
        assert torch.equal(real_A, torch.from_numpy(label).permute(2, 0, 1).float() / 127.5 - 1)


@pytest.mark.parametrize("preprocess", ["crop", "none"])
def test_non_square_crops_and_flips_keep_pairs_aligned(tmp_path, preprocess):
    """B = 255 - A (56 wide, 40 high), so real_A + real_B == 0 after any shared crop or flip."""
    rng = np.random.default_rng(0)
    for i in range(3):
        a = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(tmp_path / f"{i}.png")
    data = AlignedDataset(tmp_path, "AtoB", 32, 32, train=True, preprocess=preprocess, multiple=8)
    seen = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        real_A, real_B = data[0]
        assert real_A.shape == ((3, 32, 32) if preprocess == "crop" else (3, 40, 56))
        assert torch.allclose(real_A + real_B, torch.zeros_like(real_A), atol=1e-6)
        seen.add(real_A.sum().item())
    assert len(seen) > (4 if preprocess == "crop" else 1), "crops and flips should vary between epochs"


def test_crop_larger_than_the_image_is_named(wide_split):
    with pytest.raises(DatasetError) as err:
        AlignedDataset(wide_split, "BtoA", 512, 512, train=True, preprocess="crop")
    assert "1.png: 600x400 is smaller than the 512x512 crop of --preprocess crop" in one_line(err)


def test_preprocess_none_needs_multiples_of_the_generator(wide_split):
    with pytest.raises(DatasetError) as err:
        AlignedDataset(wide_split, "BtoA", 286, 256, train=True, preprocess="none", multiple=256)
    assert "1.png: 600x400 is not a multiple of 256 (the generator halves it 8 times)" in one_line(err)


def test_batches_of_mixed_sizes_are_refused_with_preprocess_none(tmp_path, halves):
    root = make_aligned(tmp_path, halves[:1], size=(64, 64))
    make_aligned(tmp_path / "wide", halves[1:2], size=(96, 64))
    (tmp_path / "wide" / "train" / "1.png").rename(root / "train" / "2.png")
    cfg = tiny(dataset="custom", data_root=str(root), preprocess="none", batch_size=2)
    with pytest.raises(DatasetError) as err:
        build_data(cfg)
    assert one_line(err).startswith(
        "--batch_size 2 with --preprocess none needs training images of one size, "
        f"but {root / 'train' / '1.png'} is 64x64 and {root / 'train' / '2.png'} "
        f"is 96x64"
    )
    train_set, _ = build_data(dataclasses.replace(cfg, batch_size=1))
    assert [train_set[i][0].shape for i in range(2)] == [(3, 64, 64), (3, 64, 96)]


def test_make_dataset_maps_the_config(tmp_path, halves):
    root = make_paired(tmp_path, halves[:2])
    cfg = tiny(
        dataset="custom",
        data_root=str(root),
        data_layout="paired_folders",
        preprocess="scale_width",
        input_nc=1,
        direction="BtoA",
    )
    data = make_dataset(cfg, root / "val", train=False, max_images=1)
    assert isinstance(data, PairedFoldersDataset) and len(data) == 1
    assert data[0][0].shape == (1, 32, 32) and data[0][1].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Sizes and depth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,depth",
    [
        ([], 8),
        (["--image_size", "96", "--load_size", "108"], 5),  # 96 = 3 * 2^5: a 3x3 bottleneck
        (["--image_size", "384", "--load_size", "400"], 7),
        (["--image_size", "64", "--num_downs", "5"], 5),
        (["--image_size", "512", "--load_size", "572", "--num_downs", "9"], 9),
        (["--image_size", "512", "--preprocess", "crop"], 8),  # load_size is not used by crop
    ],
)
def test_image_size_and_depth_that_work(argv, depth):
    assert generator_depth(parse_args(argv)) == depth


@pytest.mark.parametrize("size,num_downs", [(96, 0), (64, 5)])
def test_generator_runs_at_those_sizes(size, num_downs):
    G = UNetGenerator(**generator_kwargs(tiny(image_size=size, num_downs=num_downs)))
    assert G(torch.zeros(1, 3, size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--image_size", "48", "--load_size", "48"], "--image_size: must be a multiple of 32"),
        (["--num_downs", "4"], "--num_downs: must be 0 (derived from image_size) or >= 5"),
        (["--num_downs", "-1"], "--num_downs: must be 0"),
        (
            ["--num_downs", "9"],
            "--num_downs: the U-Net halves the image num_downs times, so image_size (256) must "
            "be a multiple of 2^num_downs = 512, got 9",
        ),
        (
            ["--image_size", "96", "--load_size", "100", "--num_downs", "6"],
            "multiple of 2^num_downs = 64, got 6",
        ),
        (["--preprocess", "scale_width", "--load_size", "200"], "--load_size: must be >= image_size"),
        (["--preprocess", "resize"], "--preprocess: must be one of resize_and_crop, crop, scale_width, none"),
        (["--data_layout", "stacked"], "--data_layout: must be one of aligned, paired_folders"),
        (["--dataset", "horse2zebra"], "--dataset: must be one of facades, cityscapes, maps, edges2shoes"),
        (["--input_nc", "2"], "--input_nc: must be 1 (grayscale) or 3 (RGB), got 2"),
        (["--output_nc", "4"], "--output_nc: must be 1 (grayscale) or 3 (RGB), got 4"),
        (["--input_nc", "one"], "--input_nc: expected int, got 'one'"),
    ],
)
def test_impossible_settings_name_the_field(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in one_line(err)


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------


def test_grayscale_sides_are_the_luma_of_the_image(tmp_path, halves):
    folder = make_aligned(tmp_path, halves[:1], ("train",)) / "train"
    real_A, real_B = AlignedDataset(folder, "BtoA", 256, 256, train=False, input_nc=1, output_nc=3)[0]
    luma = np.array(halves[0][1].convert("L"))  # the label map (B) is the input with BtoA
    assert real_A.shape == (1, 256, 256) and real_B.shape == (3, 256, 256)
    assert torch.equal(real_A[0], torch.from_numpy(luma).float() / 127.5 - 1)


@pytest.mark.parametrize("input_nc,output_nc", [(1, 1), (1, 3)])
def test_grayscale_training_end_to_end(tmp_path, halves, input_nc, output_nc):
    root = make_aligned(tmp_path / "data", halves[:2])
    cfg = tiny(
        dataset="custom",
        data_root=str(root),
        direction="BtoA",
        input_nc=input_nc,
        output_nc=output_nc,
        checkpoint_dir=str(tmp_path / "ck"),
        results_dir=str(tmp_path / "res"),
    )
    train.train(cfg)
    checkpoint = torch.load(tmp_path / "ck" / "custom" / "latest.pt", weights_only=True)
    assert (checkpoint["config"]["input_nc"], checkpoint["config"]["output_nc"]) == (input_nc, output_nc)
    G = UNetGenerator(**checkpoint["generator_kwargs"])
    G.load_state_dict(checkpoint["generator"])
    assert G(torch.zeros(2, input_nc, 32, 32)).shape == (2, output_nc, 32, 32)
    assert checkpoint["discriminator"]["model.0.weight"].shape[1] == input_nc + output_nc
    with Image.open(tmp_path / "res" / "custom" / "samples" / "epoch_001.png") as grid:
        pixels = np.array(grid.convert("RGB")).astype(int)
    assert pixels.shape == (
        HEADER_HEIGHT + 2 * 34 + 2,
        3 * 34 + 2,
        3,
    )  # captions, 2 rows of input | generated | target
    gray_columns = [0] + ([1, 2] if output_nc == 1 else [])
    for column in range(3):
        cell = pixels[HEADER_HEIGHT + 2 : HEADER_HEIGHT + 34, 2 + 34 * column : 34 + 34 * column]
        is_gray = (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()
        assert is_gray == (column in gray_columns), f"column {column}"


def test_sample_grid_pads_images_of_different_sizes(tmp_path):
    rows = [
        [torch.zeros(1, 32, 48), torch.zeros(3, 32, 48), torch.zeros(3, 32, 48)],
        [torch.ones(3, 40, 32)] * 3,
    ]
    save_sample_grid(rows, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 50 + 2, HEADER_HEIGHT + 2 * 42 + 2)


def test_resume_refuses_other_channels_and_accepts_older_checkpoints(tmp_path):
    state = setup(tiny())
    checkpoint = full_checkpoint(state)
    gray = setup(tiny(input_nc=1))
    with pytest.raises(CheckpointError) as err:
        restore(gray, checkpoint, tmp_path / "latest.pt", architecture_defaults())
    assert "input_nc=3 there, 1 now" in one_line(err)
    # A checkpoint from before these fields existed was made with their defaults.
    for field in ("dataset", "input_nc", "output_nc", "num_downs"):
        del checkpoint["config"][field]
    restore(state, checkpoint, tmp_path / "latest.pt", architecture_defaults())
    assert state.epoch == 0


# ---------------------------------------------------------------------------------------------
# The dataset family
# ---------------------------------------------------------------------------------------------

OFFICIAL_DIRECTIONS = {
    "facades": "BtoA",
    "cityscapes": "BtoA",
    "maps": "AtoB",
    "edges2shoes": "AtoB",
    "edges2handbags": "AtoB",
    "night2day": "AtoB",
}


def test_defaults_are_still_facades_in_data_facades():
    cfg = parse_args([])
    assert (cfg.dataset, cfg.data_root, cfg.download_url, cfg.direction, cfg.name) == (
        "facades",
        "data/facades",
        FACADES_URL,
        "BtoA",
        "facades",
    )


@pytest.mark.parametrize("name", sorted(OFFICIAL_DIRECTIONS))
def test_each_dataset_brings_its_folder_url_direction_and_name(name):
    cfg = parse_args(["--dataset", name])
    url = "" if name == "cityscapes" else f"http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
    assert (cfg.data_root, cfg.download_url, cfg.direction, cfg.name) == (
        f"data/{name}",
        url,
        OFFICIAL_DIRECTIONS[name],
        name,
    )


def test_explicit_settings_win_over_the_dataset():
    cfg = parse_args(
        [
            "--dataset",
            "maps",
            "--direction",
            "BtoA",
            "--data_root",
            "x/maps",
            "--name",
            "map2sat",
            "--download_url",
            "http://127.0.0.1:9/maps.tar.gz",
        ]
    )
    assert (cfg.direction, cfg.data_root, cfg.name, cfg.download_url) == (
        "BtoA",
        "x/maps",
        "map2sat",
        "http://127.0.0.1:9/maps.tar.gz",
    )


def test_maps_is_downloaded_checked_and_moved_into_data_maps(server, tmp_path):  # noqa: F811
    www, url = server
    build_archive(www / "maps.tar.gz", {"train": 1096, "val": 3}, name="maps")
    cfg = tiny(dataset="maps", data_root=str(tmp_path / "data" / "maps"), download_url=f"{url}/maps.tar.gz")
    train_set, sample_set = build_data(cfg)
    root = tmp_path / "data" / "maps"
    assert [len(list_images(root / s)) for s in ("train", "val")] == [1096, 3]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["maps"], "no leftovers"
    assert (len(train_set), len(sample_set), train_set.direction) == (2, 2, "AtoB")


@pytest.mark.parametrize(
    "counts,message",
    [
        ({"train": 1096}, "val: no images after download (the archive must hold train/, val/ with images)"),
        ({"train": 5, "val": 3}, "train: expected 1096 images after download, found 5"),
    ],
)
def test_incomplete_maps_archive_is_rejected(server, tmp_path, counts, message):  # noqa: F811
    www, url = server
    build_archive(www / "maps.tar.gz", counts, name="maps")
    cfg = tiny(dataset="maps", data_root=str(tmp_path / "data" / "maps"), download_url=f"{url}/maps.tar.gz")
    with pytest.raises(DatasetError) as err:
        prepare_data_root(cfg)
    assert one_line(err).endswith(message)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize(
    "name,message",
    [
        ("cityscapes", "no such folder (the Cityscapes license forbids redistributing it"),
        ("custom", "no such folder (put your own train/ and val/ split folders there"),
    ],
)
def test_sets_without_an_archive_say_what_to_do(tmp_path, name, message):
    cfg = tiny(dataset=name, data_root=str(tmp_path / name))
    with pytest.raises(DatasetError) as err:
        prepare_data_root(cfg)
    assert message in one_line(err)
    assert not (tmp_path / name).exists()


def test_validation_and_predict_take_a_split_of_mixed_sizes(tmp_path, halves):
    """crop, none and scale_width keep each evaluation image at its own size: validation and
    predict.py score them one by one instead of stacking them."""
    root = make_aligned(tmp_path / "data", halves[:2], ("train",), size=(64, 64))
    make_aligned(tmp_path / "data", halves[:1], ("val",), size=(64, 64))
    wide = make_aligned(tmp_path / "wide", halves[1:2], ("val",), size=(96, 64))  # 96x64 halves
    (wide / "val" / "1.png").rename(root / "val" / "2.png")
    assert {
        tuple(x.shape[-2:])
        for x, _ in AlignedDataset(root / "val", "BtoA", 64, 64, train=False, preprocess="crop")
    } == {(64, 64), (64, 96)}
    cfg = tiny(
        dataset="custom",
        data_root=str(root),
        preprocess="crop",
        checkpoint_dir=str(tmp_path / "ck"),
        results_dir=str(tmp_path / "res"),
    )
    train.train(cfg)
    row = torch.load(tmp_path / "ck" / "custom" / "latest.pt", weights_only=True)["history"]["epochs"][-1]
    assert 0 < row["val_L1"] < 1
    checkpoint = tmp_path / "ck" / "custom" / "latest.pt"
    args = ["--checkpoint", checkpoint, "--split", "val", "--output", tmp_path / "out"]
    result = run_script("predict.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(tmp_path / "out" / "2.png") as image:
        assert image.size == (96, 64)
