"""Pre-training tasks of Section 6: what the network learns from before the main CIFAR-10 task.

A task changes the training data in at most two places, and a ``Task`` names both:

* ``relabel(train_y, seed) -> train_y`` runs ONCE on the whole training set before pre-training.
  Use it for anything that must stay fixed per example for the whole run, e.g. random labels
  (Section 6.1: each example keeps one random label throughout, as in Zhang et al. 2017).
* ``batch(x, y, generator) -> (x, y)`` runs on every step. ``x`` is the uint8 batch (B, 3, H, W)
  *after* the random crop and flip and *before* normalisation; it must come back as uint8 of the
  same shape. (After the flip, because flipping a 90-degree rotation makes it a 270-degree one and
  would contradict the rotation label.) ``generator`` is a CPU generator from ``batch_generator(seed,
  iteration)``, keyed by the iteration, so a resumed job draws exactly the same rotations (house
  habit 8); draw on the CPU and move the result to ``x.device``, so a GPU run draws what a CPU
  run of the same seed draws. Use it for
  per-step transforms: rotation prediction (6.2), blurring (6.3), both together.

``num_classes`` is the size of the output layer during pre-training (4 for rotation prediction);
``None`` keeps the data set's own 10 classes. After pre-training, a 4-way layer is replaced by a
fresh 10-way one for the main task.

Adding a task (house habit 5) -- one function, one registry entry, one schema value, one test::

    def invert(x, y, generator):  # colour-inverted inputs, true labels
        return 255 - x, y

    REGISTRY["invert"] = Task("invert", None, None, invert, "colour-inverted inputs, true labels")

then add ``"invert"`` to the pre-training task enum in ``config.schema.yaml`` and a property test
to ``tests/unit/test_tasks.py``. Per-step functions must be vectorised (no Python loop over images)
and must take all randomness from ``generator``; ``relabel`` functions from ``rng.generator(seed,
purpose)`` with a purpose of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import rng

CIFAR10_CLASSES = 10


@dataclass(frozen=True)
class Task:
    name: str  # registry key; also the value used in config and output paths
    num_classes: int | None  # output-layer size while pre-training; None = data set's own (10)
    relabel: Callable[[torch.Tensor, int], torch.Tensor] | None  # (train_y, seed) -> train_y, once
    batch: (
        Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
        | None
    )  # (x uint8 cropped/flipped, y, generator) -> (x uint8, y), every step
    description: str  # one line for logs, README and figure legends


def batch_generator(seed: int, iteration: int) -> torch.Generator:
    """The (CPU) generator for step ``iteration``'s task randomness; a resumed job re-creates it.
    Draws from it are made on the CPU and moved to the batch's device, so a GPU run draws the
    same rotations as a CPU run of the same seed."""
    return rng.generator(seed, "task_batch", iteration)


def relabel_random(
    train_y: torch.Tensor, seed: int, num_classes: int = CIFAR10_CLASSES
) -> torch.Tensor:
    """One label per example, uniform over ``num_classes``, fixed for the whole run (Section 6.1).

    The label of example i depends only on (seed, i) -- not on its true label nor on the batch it
    lands in -- so about (num_classes-1)/num_classes of the labels are wrong (0.9 for CIFAR-10).
    """
    g = rng.generator(seed, "random_labels")
    labels = torch.randint(num_classes, (train_y.shape[0],), generator=g, dtype=torch.int64)
    return labels.to(train_y.device)


def rotate(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation prediction (Section 6.2, Gidaris et al. 2018): rotate by n*90 degrees, label n.

    n ~ U{0, 1, 2, 3} per example from ``generator``; the true labels ``y`` are discarded.
    Direction: ``torch.rot90(img, n, dims=(-2, -1))``, i.e. counter-clockwise as the image is
    displayed (row 0 at the top): the top-right pixel becomes the top-left one for n = 1.
    All four rotations are computed and each example picks its own by index, which avoids the
    host synchronisation a boolean mask would cost on a GPU.
    """
    b, _, h, w = x.shape
    if h != w:
        raise ValueError(f"rotation prediction needs square images, got {h}x{w}")
    n = torch.randint(4, (b,), generator=generator).to(x.device)  # drawn on the CPU
    rotations = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # (4,B,C,H,W)
    return rotations[n, torch.arange(b, device=x.device)], n


def blur(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Blur by downsampling ``factor``x and upsampling back (Section 6.3, after Achille et al. 2019).

    Down: average pooling over ``factor`` x ``factor`` blocks (32 -> 8 for factor 4). Up: bilinear
    interpolation back to H x W with ``align_corners=False`` (pixel centres, edges replicated).
    Computed in float32, rounded and clamped back to uint8, so the shape and dtype are unchanged.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"blur expects a uint8 batch, got {x.dtype}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the blur factor {factor}")
    small = F.avg_pool2d(x.float(), factor)
    up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return up.round_().clamp_(0, 255).to(torch.uint8)


def blur_batch(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred inputs, true labels (Section 6.3)."""
    return blur(x), y


def blur_rotation(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred inputs, then rotation prediction (Section 6.3, last paragraph): labels are n."""
    return rotate(blur(x), y, generator)


REGISTRY: dict[str, Task] = {
    "supervised": Task("supervised", None, None, None, "the main task itself (true labels)"),
    "random_labels": Task(
        "random_labels", None, relabel_random, None, "one fixed random label per example (6.1)"
    ),
    "rotation": Task("rotation", 4, None, rotate, "self-supervised rotation prediction (6.2)"),
    "blur": Task("blur", None, None, blur_batch, "4x blurred inputs, true labels (6.3)"),
    "blur_rotation": Task(
        "blur_rotation", 4, None, blur_rotation, "rotation prediction on 4x blurred inputs (6.3)"
    ),
}


def get(name: str) -> Task:
    """The registered task called ``name``; an unknown name fails loudly, listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown pre-training task {name!r}; known tasks: {known}") from None
