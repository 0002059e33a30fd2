"""metrics.fid against the reference implementation: pytorch-fid's calculate_frechet_distance.

Both get the same features, so this checks the statistics and the Frechet distance alone (the
Inception network and its weights are not involved; docs/fid.md says which weights are used).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require

from evaluation import metrics


def features(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sets of non-negative features (as Inception's pooled ReLU outputs are), the second
    shifted and spread, so the distance is well away from zero."""
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(n, dim, generator=generator, dtype=torch.float64).exp()
    fake = (1.2 * torch.randn(n, dim, generator=generator, dtype=torch.float64) + 0.1).exp()
    return real, fake


# pytorch-fid passes scipy's sqrtm an argument that scipy now warns about; not ours to fix.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("n,dim", [(200, 64), (300, 256), (100, 256)])  # the last: fewer images than dims
def test_fid_agrees_with_pytorch_fid(n, dim):
    fid_score = require("pytorch_fid.fid_score")
    real, fake = features(n, dim, seed=dim + n)
    ours = metrics.fid(real, fake)
    stats = [(x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)) for x in (real, fake)]
    reference = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    assert ours == pytest.approx(reference, rel=1e-3)
    assert reference > 1.0
