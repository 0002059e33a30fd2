"""tools/results_page.py: the long run's page, from its history, its record of starts and stops and
the test-split figures of its snapshots; with --figures, the pictures it shows, written beside it."""

import json

from conftest import ROOT, run_script
from PIL import Image

TILE, GAP = 256, 4  # the test examples' tiles and the white gap between them


def results_page(results, stretches, *options):
    """tools/results_page.py on a run's results folder and its record of starts and stops."""
    return run_script(
        "tools/results_page.py", "--results", results, "--stretches", stretches, *options, cwd=ROOT
    )


def make_run(tmp_path, epochs_done: int):
    results = tmp_path / "results" / "facades"
    results.mkdir(parents=True)
    rows = ["epoch,G_GAN,G_L1,D_real,D_fake,lr,seconds,val_L1,val_PSNR,val_SSIM"]
    rows += [
        f"{e},1.0,0.3,0.5,0.5,0.0002,{100 + 40 * e},{0.2 - 0.01 * e},{13 + e},0.2"
        for e in range(1, epochs_done + 1)
    ]
    (results / "history.csv").write_text("\n".join(rows) + "\n")
    config = {"config": {"epochs": 200}, "resolved": {"train_pairs": 400, "global_batch": 1}}
    (results / "config.json").write_text(json.dumps(config))
    stretches = tmp_path / "stretches.log"
    stretches.write_text(
        "start 2026-12-06T01:00:00Z epoch 0 cpu AMD EPYC | family 25 model 17 | torch.bfloat16\n"
        "stop 2026-12-06T03:00:00Z epoch 2\n"
        "start 2026-12-07T01:00:00Z epoch 2 cpu Intel(R) Xeon(R) Processor | family 6 model 143 "
        "| torch.bfloat16\n"
    )
    return results, stretches


def test_the_page_says_where_the_run_stands(tmp_path):
    results, stretches = make_run(tmp_path, 3)
    test = tmp_path / "test_010"
    test.mkdir()
    (test / "metrics.json").write_text(
        json.dumps({"mean": {"FID": 130.25, "KID": 0.05, "L1": 0.19, "PSNR": 13.1, "SSIM": 0.25}})
    )
    done = results_page(results, stretches, "--test_dir", f"10={test}")
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert "**Where it stands: 3/200 epochs**" in page and "stopped 1 times and resumed 1 times" in page
    # Stretch 1 trained epochs 1-2 (140 and 180 s of 400 iterations), stretch 2 epoch 3 (220 s).
    assert "| 1 | 2026-12-06T01:00:00Z | 1-2 | AMD EPYC, family 25 model 17, bfloat16 | 0.40 |" in page
    assert (
        "| 2 | 2026-12-07T01:00:00Z | 3-3 | Intel(R) Xeon(R) Processor, family 6 model 143, bfloat16 | 0.55 |"
        in page
    )
    assert "| 10 | paper (eval_mode false) | 130.2 | 0.0500 | 0.1900 | 13.10 | 0.2500 |" in page
    assert "Lowest val L1: 0.1700 at epoch 3" in page
    assert "## Sample grids" not in page and "![" not in page  # no --figures: no pictures


def test_a_missing_history_is_one_line(tmp_path):
    _, stretches = make_run(tmp_path, 1)
    done = results_page(tmp_path / "nowhere", stretches)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


EPYC = "cpu AMD EPYC | family 25 model 17 | torch.bfloat16"


def page_of_stretches(tmp_path, epochs_done: int, record: list[str]) -> tuple[str, list[str]]:
    """The page of a run with EPOCHS_DONE epochs and the given stretches.log lines: (the page, the
    wall-time column of its stretches' table)."""
    results, stretches = make_run(tmp_path, epochs_done)
    stretches.write_text("".join(line + "\n" for line in record))
    done = results_page(results, stretches)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "AMD EPYC" in line]
    return done.stdout, [row.rsplit("|", 2)[1].strip() for row in rows]


def test_the_wall_time_of_each_stretch_and_their_sum(tmp_path):
    page, walls = page_of_stretches(
        tmp_path,
        3,
        [
            f"start 2026-12-06T01:00:00Z epoch 0 {EPYC}",
            "stop 2026-12-06T03:00:00Z epoch 1",
            f"start 2026-12-06T04:00:00Z epoch 1 {EPYC}",
            "stop 2026-12-06T04:06:00Z epoch 2",
            f"start 2026-12-06T05:00:00Z epoch 2 {EPYC}",
        ],
    )
    assert walls == ["2.0 h", "0.1 h", "-"] and "| wall time |" in page
    assert "2.1 h of wall time over 2 finished stretches" in page  # the third still goes


def test_a_run_that_ended_by_itself_counts_its_last_stretch_but_no_stop(tmp_path):
    page, walls = page_of_stretches(
        tmp_path,
        200,
        [
            f"start 2026-12-06T01:00:00Z epoch 0 {EPYC}",
            "stop 2026-12-06T03:00:00Z epoch 120",
            f"start 2026-12-06T04:00:00Z epoch 120 {EPYC}",
            "end 2026-12-06T07:30:00Z epoch 200",
        ],
    )
    assert walls == ["2.0 h", "3.5 h"] and "**Finished: 200 epochs**" in page
    assert "5.5 h of wall time over 2 stretches" in page
    assert "stopped 1 times and resumed 1 times" in page


def colour(kind: int, number: int, salt: int) -> tuple[int, int, int]:
    """A flat colour for one picture of a fake predict folder, apart from every other one's."""
    return (40 + 60 * kind, 10 * number, 40 + 100 * salt)


def make_predict(folder, salt: int, fid: float, count: int = 12):
    """A fake predict.py output folder: metrics.json and, for test images 1..count, real_A/N.png,
    N.png and real_B/N.png, each a flat colour of its own."""
    for sub in ("real_A", "real_B"):
        (folder / sub).mkdir(parents=True)
    for n in range(1, count + 1):
        for kind, path in enumerate((folder / "real_A", folder, folder / "real_B")):
            Image.new("RGB", (TILE, TILE), colour(kind, n, salt)).save(path / f"{n}.png")
    (folder / "metrics.json").write_text(json.dumps({"mean": {"FID": fid, "L1": 0.2}}))
    return folder


def make_pictures(results, grid_epochs):
    """The run's own pictures: sample grids (RGBA PNG, as a fake) and the two curve plots."""
    (results / "samples").mkdir()
    for epoch in grid_epochs:
        grid = Image.new("RGBA", (97, 133), (200, 30, epoch, 255))
        grid.save(results / "samples" / f"epoch_{epoch:03d}.png")
    for name in ("loss.png", "metrics.png"):
        Image.new("RGB", (160, 34), (10, 20, 30) if name == "loss.png" else (30, 20, 10)).save(results / name)


def figures_run(tmp_path, *tests, link=()):
    results, stretches = make_run(tmp_path, 3)
    make_pictures(results, (1, 50))
    test_args = [arg for item in tests for arg in ("--test_dir", item)]
    figures = tmp_path / "docs" / "results"
    done = results_page(results, stretches, "--figures", figures, *link, *test_args)
    return done, results, figures


def near(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def test_the_figures_are_written_beside_the_page_and_linked(tmp_path):
    e10, e50 = make_predict(tmp_path / "e10", 0, 200.0), make_predict(tmp_path / "e50", 1, 170.0)
    e50_eval = make_predict(tmp_path / "e50_eval", 2, 175.0)
    done, results, figures = figures_run(tmp_path, f"10={e10}", f"50={e50}", f"50:eval={e50_eval}")
    assert done.returncode == 0, done.stderr
    names = {"grid_epoch_001.jpg", "grid_epoch_050.jpg", "loss.png", "metrics.png"}
    names |= {"fid_by_epoch.png", "test_examples.jpg"}
    assert {p.name for p in figures.iterdir()} == names  # only the epochs with a grid; no temporary file
    for epoch in (1, 50):
        with Image.open(figures / f"grid_epoch_{epoch:03d}.jpg") as grid:
            assert (grid.format, grid.mode, grid.size) == ("JPEG", "RGB", (97, 133))
            assert near(grid.getpixel((48, 66)), (200, 30, epoch))
    for name in ("loss.png", "metrics.png"):
        assert (figures / name).read_bytes() == (results / name).read_bytes()
    with Image.open(figures / "fid_by_epoch.png") as plot:
        assert plot.format == "PNG" and plot.width > 300 and plot.height > 200
    with Image.open(figures / "test_examples.jpg") as sheet:
        assert sheet.format == "JPEG" and sheet.size == (3 * TILE + 2 * GAP, 4 * TILE + 3 * GAP)
        # Rows: test images 1-4 by number (not 1, 10, 11, 12 by text) of epoch 50 in the paper's mode;
        # columns: input, generated, real.
        for row, number in enumerate((1, 2, 3, 4)):
            for kind in range(3):
                centre = (kind * (TILE + GAP) + TILE // 2, row * (TILE + GAP) + TILE // 2)
                assert near(sheet.getpixel(centre), colour(kind, number, 1)), (row, kind)
        assert near(sheet.getpixel((TILE + GAP // 2, 10)), (255, 255, 255))  # the gap between columns
    page = done.stdout
    for name in names:
        assert f"](results/{name})" in page
    assert "grid_epoch_100" not in page and "## Sample grids" in page and "## Curves" in page
    assert "*Epoch 50, paper mode: the first 4 test images by file name (1.png, 2.png, 3.png, 4.png)" in page
    assert (
        page.index("| 50 | eval_mode true |") < page.index("fid_by_epoch.png") < page.index("test_examples")
    )


def test_without_test_folders_there_is_no_fid_plot_and_the_link_prefix_is_as_given(tmp_path):
    done, _, figures = figures_run(tmp_path, link=("--figures_link", "../pictures/"))
    assert done.returncode == 0, done.stderr
    assert {p.name for p in figures.iterdir()} == {
        "grid_epoch_001.jpg",
        "grid_epoch_050.jpg",
        "loss.png",
        "metrics.png",
    }
    assert "](../pictures/grid_epoch_001.jpg)" in done.stdout and "](../pictures/loss.png)" in done.stdout
    assert "fid_by_epoch" not in done.stdout and "test_examples" not in done.stdout


def test_a_missing_test_image_is_one_line_naming_it_and_nothing_is_written(tmp_path):
    e50 = make_predict(tmp_path / "e50", 1, 170.0)
    missing = e50 / "real_A" / "3.png"
    missing.unlink()
    done, _, figures = figures_run(tmp_path, f"50={e50}")
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    assert str(missing) in done.stderr
    assert not figures.exists()  # every figure is made before any is written


def test_a_test_folder_without_metrics_is_one_line_naming_the_file(tmp_path):
    e50 = make_predict(tmp_path / "e50", 1, 170.0)
    (e50 / "metrics.json").unlink()
    done, _, figures = figures_run(tmp_path, f"50={e50}")
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1
    assert str(e50 / "metrics.json") in done.stderr and not figures.exists()


def test_the_page_written_with_output_links_its_figures_from_its_folder_and_survives_a_failure(tmp_path):
    e50 = make_predict(tmp_path / "e50", 1, 170.0)
    page = tmp_path / "docs" / "results.md"
    done, _, figures = figures_run(tmp_path, f"50={e50}", link=("--output", page))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {page}, 6 figures in {figures}\n"  # the page went to its file
    text = page.read_text()
    assert "](results/test_examples.jpg)" in text and "| 50 | paper (eval_mode false) |" in text
    assert sorted(p.name for p in page.parent.iterdir()) == ["results", "results.md"]  # no temporary file
    (e50 / "real_B" / "2.png").unlink()  # the next regeneration fails
    failed = results_page(
        tmp_path / "results" / "facades",
        tmp_path / "stretches.log",
        *("--test_dir", f"50={e50}", "--figures", figures, "--output", page),
    )
    assert failed.returncode != 0 and str(e50 / "real_B" / "2.png") in failed.stderr
    assert page.read_text() == text  # the committed page is left whole, not emptied
