"""Batched crop/flip must equal torchvision's per-image RandomCrop(padding) + RandomHorizontalFlip."""

import torch
import torchvision.transforms.v2.functional as TF

from pipeline_scripts.earlyphase import augment


def _reference(img, dy, dx, flip, pad):
    """Per-image reference with torchvision: pad with zeros, crop at (dy, dx), maybe flip."""
    out = TF.crop(TF.pad(img, [pad]), int(dy), int(dx), img.shape[1], img.shape[2])
    return TF.horizontal_flip(out) if flip else out


def test_crop_flip_matches_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    draw = augment.draw_epoch(16, seed=3, epoch=0, pad=4, flip=True, device="cpu")
    out = augment.crop_flip(x, draw.dy, draw.dx, draw.flip, pad=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(16):
        ref = _reference(x[i], draw.dy[i], draw.dx[i], bool(draw.flip[i]), 4)
        assert torch.equal(out[i], ref), i


def test_offsets_and_flips_are_uniform_and_epoch_keyed():
    n = 20000
    d0 = augment.draw_epoch(n, seed=1, epoch=0, pad=4, flip=True, device="cpu")
    d0b = augment.draw_epoch(n, seed=1, epoch=0, pad=4, flip=True, device="cpu")
    d1 = augment.draw_epoch(n, seed=1, epoch=1, pad=4, flip=True, device="cpu")
    assert torch.equal(d0.order, d0b.order) and torch.equal(d0.dy, d0b.dy)
    assert not torch.equal(d0.order, d1.order)
    assert sorted(d0.order.tolist()) == list(range(n))
    counts = torch.bincount(d0.dy, minlength=9).float()
    assert counts.numel() == 9 and (counts / n - 1 / 9).abs().max() < 0.01  # all 9 offsets, uniform
    assert abs(d0.flip.float().mean().item() - 0.5) < 0.02


def test_centre_crop_without_flip_is_identity_and_pad_zero_fills():
    x = torch.randint(1, 256, (2, 3, 8, 8), dtype=torch.uint8)
    same = augment.crop_flip(
        x, torch.tensor([4, 4]), torch.tensor([4, 4]), torch.tensor([False, False]), 4
    )
    assert torch.equal(same, x)
    corner = augment.crop_flip(
        x, torch.tensor([0, 8]), torch.tensor([0, 8]), torch.tensor([False, True]), 4
    )
    assert (corner[0, :, :4, :] == 0).all() and (corner[0, :, :, :4] == 0).all()
    assert torch.equal(corner[0, :, 4:, 4:], x[0, :, :4, :4])
    # offset (8, 8) = bottom-right corner; the flip moves the zero padding to the left
    assert torch.equal(corner[1, :, :4, 4:], x[1, :, 4:, 4:].flip(-1))
    assert (corner[1, :, :, :4] == 0).all() and (corner[1, :, 4:, :] == 0).all()


def test_normalise_matches_to_tensor_then_normalize():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = augment.Normalise(mean, std, "cpu")(x)
    ref = TF.normalize(x.float() / 255, list(mean), list(std))
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
