"""Run train.py, ending the process as kill -9 would (os._exit) at one chosen file write.

    FAULT_AT=<k> [FAULT_MATCH=<text>] [FAULT_WHEN=before|after] \
        python tests/fault_injection.py <train.py args>

The k-th write whose path contains FAULT_MATCH (default: every write counts) ends the process
`before` the complete temporary file is moved into place (leaving it behind, as a kill during
the write would) or just `after`. The writes of an epoch's end run in train.py's background
thread (background.py): os._exit there ends the whole process all the same, in the middle of
whatever the training thread is doing. A test-only hook: train.py itself has no such switch.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402  (imports every module that writes files)
from files import writing  # noqa: E402


def main() -> None:
    at, match, when = (
        int(os.environ["FAULT_AT"]),
        os.environ.get("FAULT_MATCH", ""),
        os.environ.get("FAULT_WHEN", "before"),
    )
    real_write, seen = writing.atomic_write, []

    def atomic_write(path, write) -> None:
        path = Path(path)
        if match in str(path):
            seen.append(path)
        if len(seen) == at and seen[-1] == path and when == "before":

            def write_and_die(tmp: str) -> None:
                write(tmp)  # the complete temporary file, under the name atomic_write gives it
                os._exit(137)

            real_write(path, write_and_die)
        real_write(path, write)
        if len(seen) == at and seen[-1] == path:
            os._exit(137)

    # Every module that took atomic_write by name (figures, checkpoint_format, paths, files.writing itself).
    for module in list(sys.modules.values()):
        if getattr(module, "atomic_write", None) is real_write:
            module.atomic_write = atomic_write
    train.main()


if __name__ == "__main__":
    main()
