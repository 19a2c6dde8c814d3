"""Batched data augmentation on uint8 tensors (Appendix A: normalisation, random flips, random crops).

The paper's framework augments one PIL image at a time in DataLoader workers. Here the whole data set
lives on the device as uint8 and a batch is cropped, flipped and normalised by a few tensor ops, with
no per-image Python: the model for many short training jobs (airbench, nanoGPT).

Randomness is drawn once per epoch for every example (see ``draw_epoch``), so a job resumed in the
middle of an epoch re-creates exactly the same crops and flips from (seed, epoch) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import rng


@dataclass(frozen=True)
class EpochDraw:
    """Per-epoch randomness: the data order and, per example position, its crop offsets and flip."""

    order: torch.Tensor  # (N,) int64, permutation of the training set
    dy: torch.Tensor  # (N,) int64 in [0, 2*pad]: crop row offset in the padded image
    dx: torch.Tensor  # (N,) int64 in [0, 2*pad]
    flip: torch.Tensor  # (N,) bool: mirror horizontally


def draw_epoch(
    n: int, seed: int, epoch: int, pad: int, flip: bool, device, stream: str = ""
) -> EpochDraw:
    """All random choices of one epoch, from generators keyed by (seed, purpose, epoch).

    ``stream`` names another sample of this SGD noise for the same seed (the two copies of an
    instability analysis, ``stability``): "" is the replicate's own data order and augmentation."""
    keys = (stream, epoch) if stream else (epoch,)
    order = torch.randperm(n, generator=rng.generator(seed, "data_order", *keys))
    g = rng.generator(seed, "augment", *keys)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if pad == 0:
        dy.zero_(), dx.zero_()
    return EpochDraw(*(t.to(device, non_blocking=True) for t in (order, dy, dx, flips)))


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding plus horizontal flip, for a uint8 batch.

    x: (B, C, H, W). Equivalent to torchvision's ``RandomCrop(H, padding=pad)`` followed by
    ``RandomHorizontalFlip`` applied per image (zero padding happens before normalisation, as there).
    One gather does both: the flip only reverses the column index.
    """
    if pad == 0 and not bool(flip.any()):
        return x
    return gather_crop_flip(x, dy, dx, flip, pad)


def gather_crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """``crop_flip``'s gather, whatever the draws: without its shortcut for "nothing to do",
    which reads the flips back to the host (``wholestep``: nothing is read back in a step)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H)
    cols = torch.where(flip[:, None], dx[:, None] + (w - 1) - ar_w, dx[:, None] + ar_w)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class Normalise:
    """uint8 (B,C,H,W) -> float (B,C,H,W) channels_last, (x/255 - mean)/std in one fused multiply-add."""

    def __init__(self, mean, std, device, dtype=torch.float32):
        mean = torch.as_tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last).to(self.dtype)
        return torch.addcmul(self.shift, x, self.scale)
