"""Validation during training: the generator scored on the val split at the end of an epoch.

Every ``val_every`` epochs, the mean L1, PSNR and SSIM of ``val_images`` pairs, evenly spaced over
the split and the same ones every epoch: the curve compares like with like, and the end of an
epoch stays a small part of it. The run's last epoch scores the whole split as well, as
``val_all_L1``, ``val_all_PSNR`` and ``val_all_SSIM`` in its row (the figures to quote). With
``val_fid`` every validation scores the whole split, since FID needs many images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from dataset import PairedDataset
from evaluation.generate import translate_pairs
from evaluation.metrics import evaluate_pairs
from training.guards import check_metrics

if TYPE_CHECKING:  # for the annotations only: the scripts build these
    from config import Config
    from training.state import RunState

METRICS = ("L1", "PSNR", "SSIM")  # per image; FID and KID are of the whole set


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), starting at 0; all n of them when k is 0 or >= n."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def subset(cfg: Config, n: int) -> list[int]:
    """The val pairs every validation scores: val_images of the n, or all of them with val_fid."""
    return evenly_spaced(n, 0 if cfg.val_fid else cfg.val_images)


def sample_indices(cfg: Config, n: int) -> list[int]:
    """The val pairs of the sample grid: the first num_samples that validation scores."""
    return subset(cfg, n)[: cfg.num_samples]


def validate(
    state: RunState, val_set: PairedDataset, indices: list[int]
) -> tuple[dict[str, list[float]], dict[str, float], list[list[torch.Tensor]]]:
    """Per-image L1, PSNR and SSIM of the val pairs at `indices` (in that order) and their means
    (with FID and KID under val_fid), each image generated as the paper does it alone (BatchNorm
    statistics of the image itself), several at a time (evaluation.translate_pairs) and scored as
    soon as it is made; also the sample grid's rows [real_A, fake_B, real_B], made on the way."""
    cfg, samples = state.cfg, []
    wanted = set(sample_indices(cfg, len(val_set)))

    def scored(triples: Iterator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, (real_A, fake_B, real_B) in zip(indices, triples):
            if index in wanted:
                samples.append([real_A, fake_B, real_B])
            yield fake_B, real_B

    # The per-image view normalises locally: rank 0 generates alone, with no synchronised BatchNorm.
    pairs = (val_set[i] for i in indices)
    triples = translate_pairs(state.G, pairs, cfg.eval_mode, cfg.seed, state.amp, state.device)
    per_image, means = evaluate_pairs(scored(triples), cfg.val_fid, state.device)
    return per_image, means, samples


def validate_epoch(state: RunState, val_set: PairedDataset) -> list[list[torch.Tensor]] | None:
    """Every val_every epochs and after the last: the scores into the epoch's row (val_* of the
    subset; after the last epoch also val_all_* of the whole split, where the subset is not all
    of it). Returns the sample rows made."""
    cfg, row = state.cfg, state.history.epochs[-1]
    last = state.epoch >= cfg.epochs
    if not cfg.val_every or not (last or state.epoch % cfg.val_every == 0):
        return None
    chosen = subset(cfg, len(val_set))
    indices = list(range(len(val_set))) if last else chosen
    per_image, means, samples = validate(state, val_set, indices)
    scores = {f"val_{name}": value for name, value in means.items() if name in METRICS + ("FID", "KID")}
    if len(indices) > len(chosen):  # after the last epoch: the whole split, and the subset out of it
        picked = set(chosen)
        for name in METRICS:
            values = [v for i, v in zip(indices, per_image[name]) if i in picked]
            scores[f"val_all_{name}"] = scores[f"val_{name}"]
            scores[f"val_{name}"] = sum(values) / len(values)
    check_metrics(scores, state.epoch)
    row.update(scores)
    return samples
