"""results/<name>/tensorboard/: the run's curves, grids and config as TensorBoard event files, for
`tensorboard --logdir results` (with requirements-tensorboard.txt). Whether a run writes them is
its --tensorboard setting, checked before any work (training/preflight.py's check_tensorboard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TensorBoardLog:
    """results/<name>/tensorboard/: the run's curves for `tensorboard --logdir results`.

    The global step of every event is the number of iterations done (epoch * iterations per epoch
    + iteration). A process that starts from a checkpoint at step T writes only steps > T and
    opens its event file with purge_step T + 1, so that TensorBoard drops what an earlier process
    wrote after that checkpoint (a killed run): resumed curves go on without a repeated step.
    """

    def __init__(self, folder: Path, start_step: int, config_text: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)
        # Markdown: indented lines are shown as they are (the text plugin renders Markdown).
        self.writer.add_text(
            "config", "\n".join("    " + line for line in config_text.splitlines()), start_step + 1
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
