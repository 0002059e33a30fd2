"""Write the results page of a long run (docs/results.md) from the run's own files, so that where
the run stands is committed each time it is stopped; with --figures, also the pictures the page
shows, written next to it.

    python tools/results_page.py --results ~/pix2pix-runs/results/facades \
        --stretches ~/pix2pix-runs/stretches.log [--test_dir EPOCH=DIR ...] \
        [--figures docs/results] --output docs/results.md

--results is the run's results folder (history.csv, config.json; with --figures also loss.png,
metrics.png and samples/epoch_NNN.png). --stretches is the record of every start and stop of the
run, one line each, as written by tools/long_run.sh:
``start <UTC time> epoch <N> cpu <lscpu model name> | family <F> model <M> | <precision>`` and
``stop <UTC time> epoch <N>``, or ``end <UTC time> epoch <N>`` for a stretch that ended by itself
(the run finished, or its process died). Each --test_dir names the output folder of
``predict.py --checkpoint epoch_NNN.pt --split test [--fid] [--eval_mode true]`` for one epoch
(its metrics.json; with --figures also N.png, real_A/N.png and real_B/N.png); EPOCH is a number,
with the suffix :eval for a folder written with --eval_mode true, e.g. 50 or 50:eval.

--figures DIR writes into DIR: grid_epoch_NNN.jpg (the sample grids of epochs 1, 50, 100, 150 and
200 that exist, as JPEG), loss.png and metrics.png (the run's own curves), and when test folders
are given fid_by_epoch.png (FID against epoch, both modes, with the published range) and
test_examples.jpg (the first four test images of the last epoch evaluated in the paper's mode).
The page links them as <--figures_link>/<name> (by default the folder's path from the --output
page's folder). Every figure is made before any is written, and each file, the page too, is
written under a temporary name and renamed into place: a missing input stops the tool with one
line naming the file, and the committed page and figures are never half-written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as tools/results_page.py

from files.writing import write_text  # noqa: E402
from reporting.long_run_figures import (  # noqa: E402
    GRID_EPOCHS,
    TestDir,
    example_names,
    last_paper_test,
    make_figures,
    write_figures,
)
from utils import OutputError  # noqa: E402

FIGURES = (("FID", ".1f"), ("KID", ".4f"), ("L1", ".4f"), ("PSNR", ".2f"), ("SSIM", ".4f"))
PUBLISHED_FID = "about 119-125 (pix2pix, facades labels -> photo, 106 test images)"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the UTC times of the stretches log


def read_history(results: Path) -> list[dict[str, float]]:
    with open(results / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def read_stretches(path: Path) -> list[dict[str, str]]:
    """One dict per start: its time, epoch, machine and precision, and its stop or end (if recorded:
    "how" says which)."""
    stretches: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        words = line.split(maxsplit=4)
        if len(words) >= 4 and words[0] == "start":
            stretches.append(
                {"start": words[1], "from": words[3], "machine": words[4] if len(words) > 4 else ""}
            )
        elif len(words) >= 4 and words[0] in ("stop", "end") and stretches:
            stretches[-1].update(stop=words[1], to=words[3], how=words[0])
    return stretches


def read_test_dir(item: str) -> TestDir:
    """EPOCH[:eval]=DIR, with the means of DIR/metrics.json."""
    label, _, folder = item.partition("=")
    epoch, _, mode = label.partition(":")
    if not folder or not epoch.isdigit() or mode not in ("", "eval"):
        raise ValueError(f"--test_dir {item!r}: expected EPOCH=DIR or EPOCH:eval=DIR, EPOCH a number")
    metrics = json.loads((Path(folder) / "metrics.json").read_text())
    return TestDir(int(epoch), mode == "eval", Path(folder), metrics.get("mean", metrics))


def total_epochs(config: dict) -> int:
    """The run's planned epochs, from its config.json."""
    return config["config"]["epochs"] if "config" in config else 200


def wall_hours(stretch: dict[str, str]) -> float | None:
    """Hours from a stretch's start to its stop; None while it has no stop."""
    if "stop" not in stretch:
        return None
    start, stop = (datetime.strptime(stretch[key], TIME_FORMAT) for key in ("start", "stop"))
    return (stop - start).total_seconds() / 3600


def stretch_rows(
    stretches: list[dict[str, str]], history: list[dict[str, float]], per_epoch: int
) -> list[str]:
    rows = [
        "| # | started (UTC) | epochs | machine (lscpu) and precision | s/iter (median of its epochs) "
        "| wall time |"
    ]
    rows.append("|---|---|---|---|---|---|")
    for i, s in enumerate(stretches, 1):
        first, last = int(s["from"]) + 1, int(s.get("to", history[-1]["epoch"] if history else 0))
        seconds = [r["seconds"] / per_epoch for r in history if first <= r["epoch"] <= last]
        speed = f"{statistics.median(seconds):.2f}" if seconds else "-"
        span = f"{first}-{last}" if last >= first else "none finished"
        machine = s["machine"].removeprefix("cpu ").replace(" | ", ", ").replace("torch.", "")
        hours = wall_hours(s)
        wall = f"{hours:.1f} h" if hours is not None else "-"
        rows.append(f"| {i} | {s['start']} | {span} | {machine} | {speed} | {wall} |")
    return rows


def wall_sentence(stretches: list[dict[str, str]]) -> str:
    """The summed wall time of the stretches that have both a start and a stop (the one still going
    has no wall time yet, so the others are called finished)."""
    hours = [h for h in map(wall_hours, stretches) if h is not None]
    noun = "stretch" if len(hours) == 1 else "stretches"
    if len(hours) < len(stretches):
        noun = f"finished {noun}"
    return (
        f"{sum(hours):.1f} h of wall time over {len(hours)} {noun} (each from its start to its stop or end; "
        "validation, checkpoints and evaluation are inside it)"
    )


def test_rows(tests: list[TestDir]) -> list[str]:
    rows = ["| epoch | mode | FID | KID | L1 | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|---|"]
    for test in tests:
        cells = [format(test.means[k], f) if k in test.means else "-" for k, f in FIGURES]
        shown = "eval_mode true" if test.eval_mode else "paper (eval_mode false)"
        rows.append(f"| {test.epoch} | {shown} | " + " | ".join(cells) + " |")
    return rows


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def figure_sections(figures: dict[str, bytes], link: str) -> list[str]:
    """The sample grids and the run's curves, linked as link/<name>."""
    grids = sorted(name for name in figures if name.startswith("grid_epoch_"))
    lines = [
        "## Sample grids",
        "",
        "The grid the run draws of its validation pairs after each epoch (samples/epoch_NNN.png in its "
        f"results folder), at epochs {', '.join(map(str, GRID_EPOCHS[:-1]))} and {GRID_EPOCHS[-1]} "
        "(those the run has reached).",
        "",
    ]
    for name in grids:
        epoch = int(name.removeprefix("grid_epoch_").removesuffix(".jpg"))
        lines += [
            f"![Sample grid at epoch {epoch}]({link}/{name})",
            "",
            f"*Epoch {epoch}. Each row: input label map | generated | real photo; the same validation "
            "pairs every epoch.*",
            "",
        ]
    return lines + [
        "## Curves",
        "",
        "The run's own plots of every epoch it has trained: the losses (per iteration and per epoch) and the "
        "validation figures.",
        "",
        f"![Losses by epoch]({link}/loss.png)",
        "",
        f"![Validation figures by epoch]({link}/metrics.png)",
        "",
    ]


def test_figures(figures: dict[str, bytes], link: str, tests: list[TestDir]) -> list[str]:
    """The FID plot and the test examples under the test table, when they were made."""
    lines = []
    if "fid_by_epoch.png" in figures:
        lines += ["", f"![FID by epoch, both modes, and the published range]({link}/fid_by_epoch.png)"]
    last = last_paper_test(tests)
    if "test_examples.jpg" in figures and last is not None:
        names = example_names(last.folder)
        lines += [
            "",
            f"![Test images at epoch {last.epoch}]({link}/test_examples.jpg)",
            "",
            f"*Epoch {last.epoch}, paper mode: the first {len(names)} test images by file name "
            f"({', '.join(n + '.png' for n in names)}), not chosen. Each row: input label map | generated "
            "| real photo.*",
        ]
    return lines


def summary(done: int, epochs: int, hours: float, stretches: list[dict[str, str]]) -> str:
    resumes = max(len(stretches) - 1, 0)
    # A stretch that ended by itself (the last one of a finished run) was not stopped.
    stops = sum(1 for s in stretches if s.get("how") == "stop")
    if done >= epochs:
        return (
            f"**Finished: {epochs} epochs**, {hours:.1f} h of training and {wall_sentence(stretches)}, "
            f"stopped {stops} times and resumed {resumes} times."
        )
    return (
        f"**Where it stands: {done}/{epochs} epochs**, {hours:.1f} h of training so far (the sum of the "
        f"epochs' times; validation and checkpoints are extra) and {wall_sentence(stretches)}, "
        f"stopped {stops} times and resumed {resumes} times. "
        "The run is still going: the table of test figures fills in as epochs 10, 50, 100, 150 and "
        "200 are reached."
    )


def validation_lines(history: list[dict[str, float]]) -> list[str]:
    best = min((r for r in history if "val_L1" in r), key=lambda r: r["val_L1"], default=None)
    lines = []
    if history:
        last, nan = history[-1], float("nan")
        lines.append(
            f"Epoch {int(last['epoch'])}: val L1 {last.get('val_L1', nan):.4f}, "
            f"PSNR {last.get('val_PSNR', nan):.2f} dB, SSIM {last.get('val_SSIM', nan):.4f}."
        )
    if best:
        lines.append(f"Lowest val L1: {best['val_L1']:.4f} at epoch {int(best['epoch'])} (best.pt).")
    return lines


def page(
    history: list[dict[str, float]],
    config: dict,
    stretches: list[dict[str, str]],
    tests: list[TestDir],
    figures: dict[str, bytes],
    link: str,
) -> str:
    epochs = total_epochs(config)
    per_epoch = config["resolved"]["train_pairs"] // max(config["resolved"].get("global_batch", 1), 1)
    done = int(history[-1]["epoch"]) if history else 0
    hours = sum(r["seconds"] for r in history) / 3600
    lines = [
        "# The facades recipe, trained to the end with this project",
        "",
        "`python train.py` at the defaults (facades, labels -> photo, 256 px, batch 1, lr 2e-4 for 100 "
        "epochs then linear decay over 100, `precision auto`), nothing tuned, trained on the CPUs listed "
        "below and resumed after every stop with the same command.",
        "",
        summary(done, epochs, hours, stretches),
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
        *validation_lines(history),
        "",
        *(figure_sections(figures, link) if figures else []),
        "## The test split (106 images), by epoch",
        "",
        f"`python predict.py --checkpoint checkpoints/facades/epoch_NNN.pt --split test --fid`, in the "
        f"paper's mode and with `--eval_mode true`. The published FID is {PUBLISHED_FID}. No checkpoint "
        "or setting is chosen on these figures.",
        "",
    ]
    lines += test_rows(tests) if tests else ["No snapshot evaluated yet (the first is epoch 10)."]
    lines += test_figures(figures, link, tests)
    return "\n".join(lines) + "\n"


def default_link(figures: Path | None, output: Path | None) -> str:
    """The figures folder as the page links it: relative to the page's folder, or by its name when
    the page goes to standard output (docs/results beside docs/results.md)."""
    if figures is None:
        return ""
    return os.path.relpath(figures, output.parent) if output else figures.name


def error_line(err: Exception) -> str:
    """One line for a failure: a file error says which file."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"error: {err.filename}: {err.strerror or err}"
    return f"error: {err}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True, help="the run's results folder")
    parser.add_argument("--stretches", type=Path, required=True, help="the record of starts and stops")
    parser.add_argument("--test_dir", action="append", default=[], help="EPOCH[:eval]=predict output folder")
    parser.add_argument(
        "--figures", type=Path, help="write the page's figures into this folder (created if needed)"
    )
    parser.add_argument(
        "--figures_link",
        help="the path the page links the figures by, relative to the page (default: --figures as seen "
        "from the --output page's folder, else its name)",
    )
    parser.add_argument("--output", type=Path, help="write the page here (default: standard output)")
    args = parser.parse_args()
    if args.figures_link is not None and args.figures is None:
        parser.error("--figures_link is the link to the --figures folder: give --figures too")
    try:
        history = read_history(args.results)
        config = json.loads((args.results / "config.json").read_text())
        tests = [read_test_dir(item) for item in args.test_dir]
        figures = make_figures(args.results, tests, total_epochs(config)) if args.figures else {}
        link = (args.figures_link or default_link(args.figures, args.output)).rstrip("/")
        text = page(history, config, read_stretches(args.stretches), tests, figures, link)
        if args.figures:
            write_figures(args.figures, figures)
        if args.output:
            write_text(args.output, text)  # whole or not at all: the committed page is never emptied
            shown = f", {len(figures)} figures in {args.figures}" if args.figures else ""
            print(f"wrote {args.output}{shown}")
        else:
            sys.stdout.write(text)
    except (OSError, KeyError, ValueError, OutputError) as err:
        sys.exit(error_line(err))


if __name__ == "__main__":
    main()
