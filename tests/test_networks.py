import pytest
import torch

from discriminator import PatchDiscriminator
from config import unet_depth
from generator import UNetGenerator
from layers import init_weights


@pytest.mark.parametrize("size,depth", [(256, 8), (128, 7), (64, 6), (32, 5), (512, 8), (96, 5)])
def test_unet_depth_follows_image_size(size, depth):
    assert unet_depth(size) == depth


def test_generator_shape_and_range_at_256():
    torch.manual_seed(0)
    G = UNetGenerator(3, 3, ngf=64, num_downs=8)
    init_weights(G)
    # The paper's U-Net 256 has 54.4 M parameters.
    assert sum(p.numel() for p in G.parameters()) == 54_413_955
    with torch.no_grad():
        y = G(torch.randn(2, 3, 256, 256) * 3)
    assert y.shape == (2, 3, 256, 256)
    assert y.min() >= -1 and y.max() <= 1 and y.std() > 0


def test_smaller_image_gives_smaller_unet():
    small = UNetGenerator(num_downs=unet_depth(64), ngf=8)
    large = UNetGenerator(num_downs=unet_depth(128), ngf=8)
    assert len(small.down) == 6 and len(large.down) == 7
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_generator_rejects_too_shallow():
    with pytest.raises(ValueError, match="num_downs"):
        UNetGenerator(num_downs=4)


def test_patchgan_gives_30x30_logits_for_256():
    D = PatchDiscriminator(6, ndf=64, n_layers=3)
    assert sum(p.numel() for p in D.parameters()) == 2_768_705
    logits = D(torch.randn(1, 3, 256, 256), torch.randn(1, 3, 256, 256))
    assert logits.shape == (1, 1, 30, 30)


def test_patchgan_receptive_field_is_70px():
    """The gradient of one central logit reaches exactly a 70x70 window of the input."""
    D = PatchDiscriminator(6, ndf=8, n_layers=3)
    init_weights(D)
    D.eval()
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    D(x, torch.zeros(1, 3, 256, 256))[0, 0, 15, 15].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_init_weights_follows_the_paper():
    torch.manual_seed(0)
    G = UNetGenerator(ngf=16, num_downs=5)
    init_weights(G, 0.02)
    conv = G.down[1][1].weight
    assert abs(conv.mean().item()) < 0.002 and abs(conv.std().item() - 0.02) < 0.002
    norm = G.down[1][2]
    assert abs(norm.weight.mean().item() - 1) < 0.01 and torch.all(norm.bias == 0)
