"""tools/results_page.py: the long run's page, from its history, its record of starts and stops and
the test-split figures of its snapshots."""

import json

from conftest import ROOT, run_script


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
    done = run_script(
        "tools/results_page.py",
        "--results",
        results,
        "--stretches",
        stretches,
        "--test_dir",
        f"10={test}",
        cwd=ROOT,
    )
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
    assert "Lowest val L1 so far: 0.1700 at epoch 3" in page


def test_a_missing_history_is_one_line(tmp_path):
    _, stretches = make_run(tmp_path, 1)
    done = run_script(
        "tools/results_page.py", "--results", tmp_path / "nowhere", "--stretches", stretches, cwd=ROOT
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
