"""Names shared by ``data`` and ``data_sources``: the class names, limits and the error type."""

from __future__ import annotations

import numpy as np

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FORMAT_VERSION = 1
IMAGE_SHAPE = (32, 32, 3)  # H, W, C as stored
SOURCES = ("torchvision", "imagefolder", "synthetic")
SYNTHETIC_DEFAULTS = {"n_train": 2000, "n_test": 500, "num_classes": 10}
DOWNLOAD_TIMEOUT_S = 60  # a firewalled node can black-hole the download; fail instead of hanging

LAYOUT_HELP = (
    "expected layout: train/<class>/<image> and test/<class>/<image> (32x32 images, same class "
    "folders in both), as a directory or a .tar.gz of one"
)


class DataError(RuntimeError):
    """The data set is missing, unreadable or not what the pipeline expects."""


Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, 32, 32, 3), labels int64 (N,)
