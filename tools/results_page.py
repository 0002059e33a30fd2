"""Write the results page of a long run (docs/results.md) from the run's own files, so that where
the run stands is committed each time it is stopped.

    python tools/results_page.py --results ~/pix2pix-runs/results/facades \
        --stretches ~/pix2pix-runs/stretches.log [--test_dir EPOCH=DIR ...] > docs/results.md

--results is the run's results folder (history.csv, config.json). --stretches is the record of
every start and stop of the run, one line each, as written by tools/long_run.sh:
``start <UTC time> epoch <N> cpu <lscpu model name> | family <F> model <M> | <precision>`` and
``stop <UTC time> epoch <N>``. Each --test_dir names the output folder of
``predict.py --checkpoint epoch_NNN.pt --split test [--fid] [--eval_mode true]`` for one epoch
(its metrics.json); EPOCH may carry a suffix, e.g. 50 or 50:eval.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

FIGURES = (("FID", ".1f"), ("KID", ".4f"), ("L1", ".4f"), ("PSNR", ".2f"), ("SSIM", ".4f"))
PUBLISHED_FID = "about 119-125 (pix2pix, facades labels -> photo, 106 test images)"


def read_history(results: Path) -> list[dict[str, float]]:
    with open(results / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def read_stretches(path: Path) -> list[dict[str, str]]:
    """One dict per start: its time, epoch, machine and precision, and its stop (if recorded)."""
    stretches: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        words = line.split(maxsplit=4)
        if len(words) >= 4 and words[0] == "start":
            stretches.append(
                {"start": words[1], "from": words[3], "machine": words[4] if len(words) > 4 else ""}
            )
        elif len(words) >= 4 and words[0] == "stop" and stretches:
            stretches[-1].update(stop=words[1], to=words[3])
    return stretches


def stretch_rows(
    stretches: list[dict[str, str]], history: list[dict[str, float]], per_epoch: int
) -> list[str]:
    rows = ["| # | started (UTC) | epochs | machine (lscpu) and precision | s/iter (median of its epochs) |"]
    rows.append("|---|---|---|---|---|")
    for i, s in enumerate(stretches, 1):
        first, last = int(s["from"]) + 1, int(s.get("to", history[-1]["epoch"] if history else 0))
        seconds = [r["seconds"] / per_epoch for r in history if first <= r["epoch"] <= last]
        speed = f"{statistics.median(seconds):.2f}" if seconds else "-"
        span = f"{first}-{last}" if last >= first else "none finished"
        machine = s["machine"].removeprefix("cpu ").replace(" | ", ", ").replace("torch.", "")
        rows.append(f"| {i} | {s['start']} | {span} | {machine} | {speed} |")
    return rows


def test_rows(test_dirs: list[str]) -> list[str]:
    rows = ["| epoch | mode | FID | KID | L1 | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|---|"]
    for item in test_dirs:
        label, _, folder = item.partition("=")
        epoch, _, mode = label.partition(":")
        means = json.loads((Path(folder) / "metrics.json").read_text())
        m = means.get("mean", means)
        cells = [format(m[k], f) if k in m else "-" for k, f in FIGURES]
        shown = "eval_mode true" if mode == "eval" else "paper (eval_mode false)"
        rows.append(f"| {epoch} | {shown} | " + " | ".join(cells) + " |")
    return rows


def page(results: Path, stretches: list[dict[str, str]], test_dirs: list[str]) -> str:
    history = read_history(results)
    config = json.loads((results / "config.json").read_text())
    epochs = config["config"]["epochs"] if "config" in config else 200
    per_epoch = config["resolved"]["train_pairs"] // max(config["resolved"].get("global_batch", 1), 1)
    done = int(history[-1]["epoch"]) if history else 0
    hours = sum(r["seconds"] for r in history) / 3600
    best = min((r for r in history if "val_L1" in r), key=lambda r: r["val_L1"], default=None)
    last = history[-1] if history else {}
    resumes = max(len(stretches) - 1, 0)
    stops = sum(1 for s in stretches if "stop" in s)
    lines = [
        "# The facades recipe, trained to the end with this project",
        "",
        "`python train.py` at the defaults (facades, labels -> photo, 256 px, batch 1, lr 2e-4 for 100 "
        "epochs then linear decay over 100, `precision auto`), nothing tuned, trained on the CPUs listed "
        "below and resumed after every stop with the same command.",
        "",
        f"**Where it stands: {done}/{epochs} epochs**, {hours:.1f} h of training so far (the sum of the "
        f"epochs' times; validation and checkpoints are extra), stopped {stops} times and resumed "
        f"{resumes} times. "
        "The run is still going: the table of test figures fills in as epochs 10, 50, 100, 150 and "
        "200 are reached."
        if done < epochs
        else f"**Finished: {epochs} epochs**, {hours:.1f} h of training, stopped {stops} times and resumed "
        f"{resumes} times.",
        "",
        "## Stretches of training",
        "",
        "Each start of the command, where it ran and how fast (the machine was shared with other work, "
        "so a slow stretch is no measurement of the code; `benchmark.py` measures speed).",
        "",
        *stretch_rows(stretches, history, per_epoch),
        "",
        "## Validation during training (20 of the 100 val pairs, the same ones every epoch)",
        "",
    ]
    if last:
        nan = float("nan")
        lines.append(
            f"Epoch {done}: val L1 {last.get('val_L1', nan):.4f}, PSNR {last.get('val_PSNR', nan):.2f} dB, "
            f"SSIM {last.get('val_SSIM', nan):.4f}."
        )
    if best:
        lines.append(f"Lowest val L1 so far: {best['val_L1']:.4f} at epoch {int(best['epoch'])} (best.pt).")
    lines += [
        "",
        "## The test split (106 images), by epoch",
        "",
        f"`python predict.py --checkpoint checkpoints/facades/epoch_NNN.pt --split test --fid`, in the "
        f"paper's mode and with `--eval_mode true`. The published FID is {PUBLISHED_FID}. No checkpoint "
        "or setting is chosen on these figures.",
        "",
    ]
    lines += test_rows(test_dirs) if test_dirs else ["No snapshot evaluated yet (the first is epoch 10)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True, help="the run's results folder")
    parser.add_argument("--stretches", type=Path, required=True, help="the record of starts and stops")
    parser.add_argument("--test_dir", action="append", default=[], help="EPOCH[:eval]=predict output folder")
    args = parser.parse_args()
    try:
        sys.stdout.write(page(args.results, read_stretches(args.stretches), args.test_dir))
    except (OSError, KeyError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
