"""One training iteration of Pix2Pix (Isola et al. 2017, section 3), as the official code names its
parts: D's update (backward_D) then G's (backward_G).

The objective, with x = real_A (the input), y = real_B (the target) and G(x) = fake_B:

    L_cGAN(G, D) = E[log D(x, y)] + E[log(1 - D(x, G(x)))]
    L_L1(G)      = E[|y - G(x)|_1]
    G* = arg min_G max_D L_cGAN(G, D) + lambda_l1 * L_L1(G)

As in the paper and the official code, G maximises log D(x, G(x)) instead of minimising
log(1 - D(x, G(x))) (stronger gradients early on), D's loss is halved (D learns slower than G),
and D is a PatchGAN: every patch logit gets the BCE against 1 (real) or 0 (fake).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from layers import set_requires_grad

if TYPE_CHECKING:
    from training.state import RunState


def gan_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """BCE between every patch logit and the label 1 (real) or 0 (fake), in fp32."""
    logits = logits.float()
    target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def backward_D(D: nn.Module, real_A, real_B, fake_B, amp, scaler) -> tuple[torch.Tensor, torch.Tensor]:
    """D learns real pairs -> 1 and generated pairs -> 0:
    loss_D = 0.5 * (BCE(D(real_A, real_B), 1) + BCE(D(real_A, fake_B), 0))."""
    with amp:
        loss_D_fake = gan_loss(D(real_A, fake_B.detach()), False)  # detach: no gradient into G
        loss_D_real = gan_loss(D(real_A, real_B), True)
    scaler.scale(0.5 * (loss_D_fake + loss_D_real)).backward()
    return loss_D_real, loss_D_fake


def backward_G(
    D: nn.Module, real_A, real_B, fake_B, lambda_l1: float, amp, scaler
) -> tuple[torch.Tensor, torch.Tensor]:
    """G learns to fool D on its output while staying close to the target in L1:
    loss_G = BCE(D(real_A, fake_B), 1) + lambda_l1 * |fake_B - real_B|_1."""
    with amp:
        loss_G_GAN = gan_loss(D(real_A, fake_B), True)
    loss_G_L1 = F.l1_loss(fake_B.float(), real_B)
    scaler.scale(loss_G_GAN + lambda_l1 * loss_G_L1).backward()
    return loss_G_GAN, loss_G_L1


def train_step(state: RunState, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """One D update then one G update; returns the losses (G_GAN, G_L1, D_real, D_fake), detached.

    With --cuda_graphs auto or true (setup gives the state a graphed step) the same step is
    captured once as a CUDA graph and replayed."""
    step = state.graphed_step or eager_step
    return step(state, real_A, real_B)


def eager_step(state: RunState, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """train_step's work, op by op. real_A, real_B: (N, C, H, W) in [-1, 1]."""
    amp, scaler = state.amp, state.scaler
    with amp:
        fake_B = state.G_train(real_A)  # (N, output_nc, H, W)
    state.opt_D.zero_grad(set_to_none=True)
    loss_D_real, loss_D_fake = backward_D(state.D_train, real_A, real_B, fake_B, amp, scaler)
    scaler.step(state.opt_D)
    # G's step needs gradients through D, not for D's weights: D is frozen and called bare (its
    # DDP wrapper would prepare a gradient reduction for a backward that yields no D gradient).
    set_requires_grad(state.D, False)
    state.opt_G.zero_grad(set_to_none=True)
    loss_G_GAN, loss_G_L1 = backward_G(state.D, real_A, real_B, fake_B, state.cfg.lambda_l1, amp, scaler)
    set_requires_grad(state.D, True)
    scaler.step(state.opt_G)
    scaler.update()
    return torch.stack([loss_G_GAN, loss_G_L1, loss_D_real, loss_D_fake]).detach()
