import pytest
import torch

from config import unet_depth
from discriminator import PatchDiscriminator
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


# ---------------------------------------------------------------------------------------------
# Generating several images at once, each as if alone (validation, predict.py --split)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("eval_mode", [False, True], ids=["paper-mode", "eval-mode"])
def test_a_batch_gives_each_image_what_it_gets_alone(dtype, eval_mode):
    """A batch through translate gives each image what it gets alone: BatchNorm
    with the image's own statistics and the dropout mask of the seed. Equal to float rounding
    (the batch sums in another order): fp32 to 1e-5, bf16 to a few bf16 roundings (< 0.02 of
    the [-1, 1] range, 2.5 levels of 255, and 0.003 on average)."""
    from evaluation.generate import translate
    from utils import autocast

    torch.manual_seed(0)
    G = UNetGenerator(ngf=8, num_downs=6)  # at 64 px: BatchNorm everywhere, dropout in one block
    init_weights(G)
    real_A = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    amp = autocast(torch.device("cpu"), dtype)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    alone = torch.cat([translate(G, a[None], eval_mode, 3, amp) for a in real_A])
    batch = translate(G, real_A, eval_mode, 3, amp)
    max_diff, mean_diff = (batch - alone).abs().max().item(), (batch - alone).abs().mean().item()
    if dtype == torch.float32:
        assert max_diff < 1e-5
    else:
        assert max_diff < 0.02 and mean_diff < 0.003
    # G is left as it was: its modules, and its running averages even in train mode
    assert G.training and all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert {type(m).__name__ for m in G.modules()} >= {"BatchNorm2d", "Dropout"}
    if not eval_mode:  # the test means something: a plain batch (shared statistics) differs
        with torch.no_grad(), torch.random.fork_rng(), amp:
            torch.manual_seed(3)
            shared = G(real_A).float()
        assert (shared - alone).abs().max() > 0.05
        assert (translate(G, real_A[:1], eval_mode, 4, amp) - alone[:1]).abs().max() > 0.05  # dropout is on


def test_translate_pairs_batches_images_of_one_size():
    from evaluation.generate import translate, translate_pairs

    torch.manual_seed(0)
    G = UNetGenerator(ngf=8, num_downs=5, dropout=0.0)
    init_weights(G)
    sizes = [(32, 32), (32, 32), (64, 32), (32, 32)]
    items = [(torch.rand(3, h, w) * 2 - 1, torch.rand(3, h, w)) for h, w in sizes]
    out = list(translate_pairs(G, iter(items), False, 0, None, torch.device("cpu"), batch_pixels=2 * 32 * 32))
    assert len(out) == len(items)
    for (real_A, real_B), (a, fake_B, b) in zip(items, out):
        assert a is real_A and b is real_B and fake_B.shape == real_A.shape
        torch.testing.assert_close(fake_B, translate(G, real_A[None], False, 0)[0], atol=1e-5, rtol=1e-5)
