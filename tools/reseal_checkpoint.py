"""Accept a checkpoint that was edited by hand: loaded, changed and saved again with plain
``torch.save``, it no longer matches the checksum written with it, and train.py, predict.py and
demo.py refuse it. This checks it as every load does (its format, its keys, the networks' tensors
all finite, the config fields' types) and writes it again, atomically, with the checksum of what
it holds now; then it loads. A file that fails a check is left as it was (one line, exit 1).

    python tools/reseal_checkpoint.py FILE

Reseal only a file you edited: the checksum is there to catch damage on disk and in copies, and
a new one accepts whatever the file holds (docs/recovery.md, "Editing a checkpoint").
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules, when run as tools/reseal_checkpoint.py

from training.checkpoint_format import CheckpointError, reseal  # noqa: E402
from utils import ArgumentParser, OutputError, exit_on_errors  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Reseal the one checkpoint named on the command line and say so in one line."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint (.pt) edited and saved with torch.save")
    args = parser.parse_args(argv)
    with exit_on_errors(usage=(), failures=(CheckpointError, OutputError)):
        print(reseal(args.checkpoint))


if __name__ == "__main__":
    main()
