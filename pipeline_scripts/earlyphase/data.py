"""CIFAR-10 as one HDF5 file: build it once (``prepare``), read it whole into memory (``load``).

Every training job of the reproduction (Frankle et al. 2020, Sec. 2: ResNet-20 / VGG on CIFAR-10)
keeps the whole data set on its device and augments it in batches, so the data stage only has to
produce one small, validated, uncompressed file per data configuration.

Sources (``prepare(source=...)``)
---------------------------------
``torchvision``  The official data through ``torchvision.datasets.CIFAR10(root, download=True)``,
                 which checks the archive's md5. Offline, it uses ``root/cifar-10-python.tar.gz``
                 or ``root/cifar-10-batches-py/`` if present.
``imagefolder``  A directory, or a tar archive of one (``.tar.gz``, ``.tgz``, ``.tar``; read in
                 memory, not extracted), laid out as ``train/<class>/<image>`` and
                 ``test/<class>/<image>`` (the tree may also sit inside one top-level folder).
                 Directories and archives are listed by ``torchvision.datasets.ImageFolder``'s rules
                 (without torchvision): classes are the sorted class folder names, train and test
                 must have the same ones, examples keep ImageFolder's order (class, folder, file
                 name). Images are decoded with PIL and converted to RGB; every image must be 32x32.
``synthetic``    A generated, seeded stand-in for tests and laptops (see ``_synthetic``).
(The readers live in ``data_sources``; this module validates, subsets, writes and loads.)

``n_train``/``n_test`` optionally keep a class-balanced random subset of each split (per-class
counts differ by at most one), drawn from ``rng.generator(seed, "subset", split)``; the kept
examples stay in source order.

HDF5 layout (format_version 1)
------------------------------
Datasets (uncompressed, contiguous: see "Storage" below)::

    /train/images   uint8  (N_train, 32, 32, 3)   NHWC, RGB, as in the raw CIFAR-10 batches
    /train/labels   int64  (N_train,)             index into `classes`
    /test/images    uint8  (N_test, 32, 32, 3)
    /test/labels    int64  (N_test,)

Root attributes::

    format_version       int    1
    classes              str[]  class names; label i is classes[i]
    source               str    "torchvision" | "imagefolder" | "synthetic"
    source_path          str    torchvision: the root directory; imagefolder: the directory or
                                archive (absolute); synthetic: "" (no input)
    source_url           str    torchvision only: the download URL
    source_md5           str    torchvision only: md5 of the official archive (checked by torchvision)
    source_sha256        str    imagefolder archives only: sha256 of the archive file
    synthetic_params     str    synthetic only: JSON of the generator settings (n_train, n_test,
                                num_classes, seed)
    n_train, n_test      int    examples in the file
    n_train_source,
    n_test_source        int    examples in the source before subsetting
    subset_seed          int    seed of the subset draw; -1 if neither split was subset
    created_utc          str    ISO 8601 time of creation
    sha256_train_images  str    sha256 of /train/images' bytes (C order, NHWC uint8)
    sha256_train_labels, sha256_test_images, sha256_test_labels
                         str    the same for the other three arrays
    sha256_content       str    sha256 of the four arrays' names, dtypes, shapes and sha256s:
                                ``load`` recomputes it from what it read and refuses a mismatch
    mean, std            float64[3]  per-channel mean/std of the train images scaled to [0, 1]
                                (informational; normalisation constants belong to training code)

``prepare`` returns exactly these attributes (minus ``classes``) as a dict, and ``load`` exposes the
same dict as ``Dataset.provenance``, its hashes recomputed from the arrays it read (so they say what
a job trained on). A file without ``sha256_content`` (made before it existed) is refused with the
advice to re-run prepare_data. Verifying costs one sha256 pass over the arrays: 0.10-0.11 s for
the 50,000 + 10,000 image file (184 MB) on the 2-core VM below, which has SHA-NI (~1.7 GB/s;
blake2b 2x, md5 2.4x slower there), on top of reading it (0.3-0.7 s).

Storage
-------
Every training job reads the whole file, so read time matters more than size, and CIFAR-10 pixels
barely compress. Measured for the 50,000 + 10,000 image file on a shared 2-core VM (``load`` to CPU
tensors; file cached / evicted from the page cache)::

    storage of /*/images        size     load, cached   load, evicted
    contiguous                  185 MB   0.14-0.26 s    0.35 s
    lzf, 1000-image chunks      182 MB   0.53 s         0.47 s
    gzip level 1, same chunks   170 MB   1.07 s         1.32 s

Hence plain contiguous datasets: compression saves at most 8% of the size and costs 2-5x the time.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from . import rng
from .atomic import atomic_path
from .data_sources import _from_imagefolder, _from_torchvision, _synthetic
from .data_types import (  # noqa: F401 - re-exported: data.DataError, data.SOURCES, ...
    CIFAR10_CLASSES,
    DOWNLOAD_TIMEOUT_S,
    FORMAT_VERSION,
    IMAGE_SHAPE,
    LAYOUT_HELP,
    SOURCES,
    SYNTHETIC_DEFAULTS,
    DataError,
    Split,
)


@dataclass(frozen=True)
class Dataset:
    """A whole data set in memory; images are NCHW uint8 (normalise/augment on the device)."""

    train_x: torch.Tensor  # uint8 (N_train, 3, 32, 32), contiguous
    train_y: torch.Tensor  # int64 (N_train,)
    test_x: torch.Tensor  # uint8 (N_test, 3, 32, 32), contiguous
    test_y: torch.Tensor  # int64 (N_test,)
    classes: tuple[str, ...]
    provenance: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# prepare


def prepare(
    out_path: str | Path,
    source: str,
    *,
    path: str | None = None,
    root: str | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    synthetic: dict | None = None,
) -> dict:
    """Build the HDF5 file ``out_path`` from ``source`` and return its provenance attributes.

    ``root`` is the torchvision download directory, ``path`` the imagefolder directory/archive,
    ``synthetic`` the generator settings (keys of ``SYNTHETIC_DEFAULTS``). ``seed`` seeds the
    subset draw and the synthetic generator. The file appears atomically: it is written under a
    temporary name in the same directory and renamed at the end.
    """
    out_path = Path(out_path)
    if source == "torchvision":
        if root is None:
            raise ValueError("source 'torchvision' needs root= (the download directory)")
        train, test, classes, attrs = _from_torchvision(Path(root))
    elif source == "imagefolder":
        if path is None:
            raise ValueError("source 'imagefolder' needs path= (a directory or .tar.gz)")
        train, test, classes, attrs = _from_imagefolder(Path(path))
    elif source == "synthetic":
        unknown = sorted(set(synthetic or {}) - set(SYNTHETIC_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown synthetic keys {unknown}; known: {list(SYNTHETIC_DEFAULTS)}")
        train, test, classes, attrs = _synthetic(seed, **(synthetic or {}))
    else:
        raise ValueError(f"unknown data source {source!r}; known: {', '.join(SOURCES)}")

    attrs |= {"n_train_source": len(train[1]), "n_test_source": len(test[1])}
    train = _subset(train, n_train, len(classes), seed, "train")
    test = _subset(test, n_test, len(classes), seed, "test")
    attrs["subset_seed"] = seed if (n_train is not None or n_test is not None) else -1

    with atomic_path(out_path) as tmp:
        _write(tmp, train, test, classes, {"source": source, **attrs})
    with h5py.File(out_path, "r") as f:
        return _provenance(f)


def _write(path: Path, train: Split, test: Split, classes: Sequence[str], attrs: dict) -> None:
    """Write the layout documented at the top of this module."""
    train_images = np.ascontiguousarray(train[0], dtype=np.uint8)
    mean, std = _channel_stats(train_images)
    attrs = attrs | {
        "format_version": FORMAT_VERSION,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **content_hashes(
            {
                "train/images": train_images,
                "train/labels": np.asarray(train[1], dtype=np.int64),
                "test/images": np.ascontiguousarray(test[0], dtype=np.uint8),
                "test/labels": np.asarray(test[1], dtype=np.int64),
            }
        ),
        "mean": mean,
        "std": std,
    }
    with h5py.File(path, "w") as f:
        for name, (images, labels) in (("train", (train_images, train[1])), ("test", test)):
            f.create_dataset(f"{name}/images", data=np.ascontiguousarray(images, dtype=np.uint8))
            f.create_dataset(f"{name}/labels", data=np.asarray(labels, dtype=np.int64))
        f.attrs["classes"] = np.array(list(classes), dtype=h5py.string_dtype())
        for key, value in attrs.items():
            f.attrs[key] = value


ARRAYS = ("train/images", "train/labels", "test/images", "test/labels")


def content_hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """``sha256_<split>_<kind>`` of each array's bytes (C order) and ``sha256_content`` of them
    all together with their names, dtypes and shapes: the identity of a data file's contents."""
    whole = hashlib.sha256()
    out = {}
    for name in ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        digest = hashlib.sha256(memoryview(a).cast("B")).hexdigest()
        out["sha256_" + name.replace("/", "_")] = digest
        whole.update(f"{name} {a.dtype.str} {a.shape} {digest}\n".encode())
    out["sha256_content"] = whole.hexdigest()
    return out


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1], accumulated in chunks (a float copy of 50k images is 1 GB)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), 4096):
        x = images[start : start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    count = max(len(images) * images.shape[1] * images.shape[2], 1)
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def _subset(split: Split, n: int | None, num_classes: int, seed: int, name: str) -> Split:
    """Keep ``n`` examples, class-balanced (counts differ by at most one), in source order."""
    images, labels = split
    if n is None:
        return split
    if n < 1:
        raise ValueError(f"n_{name} must be at least 1 (or None for all), got {n}")
    if n > len(labels):
        raise DataError(f"n_{name}={n} requested but the {name} split has only {len(labels)}")
    g = rng.generator(seed, "subset", name)
    quota = np.full(num_classes, n // num_classes)
    quota[torch.randperm(num_classes, generator=g)[: n % num_classes].numpy()] += 1
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < quota[c]:
            raise DataError(
                f"n_{name}={n} needs {quota[c]} examples of class {c} but the {name} split has "
                f"{len(members)}"
            )
        keep.append(members[torch.randperm(len(members), generator=g)[: quota[c]].numpy()])
    keep = np.sort(np.concatenate(keep))
    return images[keep], labels[keep]


# ---------------------------------------------------------------------------------------------
# load


def load(path: str | Path, device: str | torch.device = "cpu") -> Dataset:
    """Read the whole HDF5 file into tensors on ``device`` (images NHWC on disk -> NCHW here)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(_damaged(path, "the file does not exist"))
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(_damaged(path, f"it is not a readable HDF5 file ({e})")) from e
    with f:
        if f.attrs.get("format_version") != FORMAT_VERSION:
            found = f.attrs.get("format_version")
            raise DataError(_damaged(path, f"format_version is {found}, expected {FORMAT_VERSION}"))
        if "classes" not in f.attrs:
            raise DataError(_damaged(path, "the root attribute 'classes' is missing"))
        classes = tuple(str(c) for c in f.attrs["classes"])
        arrays = {}
        for split in ("train", "test"):
            images, labels = (_dataset(f, path, f"{split}/{key}") for key in ("images", "labels"))
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
                found = f"/{split}/images is {images.dtype} {images.shape}"
                raise DataError(_damaged(path, f"{found}, expected uint8 (N, 32, 32, 3)"))
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                found = f"/{split}/labels is {labels.dtype} {labels.shape}"
                raise DataError(_damaged(path, f"{found}, expected int64 ({images.shape[0]},)"))
            arrays[split] = (images[()], labels[()])
        provenance = _provenance(f)
    _verify(path, provenance, arrays)
    for split, (_, labels) in arrays.items():
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(_damaged(path, f"/{split}/labels fall outside 0..{len(classes) - 1}"))

    def images(a: np.ndarray) -> torch.Tensor:
        # Move first, then transpose on the device (the copy is faster there on a GPU).
        return torch.from_numpy(a).to(device).permute(0, 3, 1, 2).contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return Dataset(
        train_x=images(arrays["train"][0]),
        train_y=labels(arrays["train"][1]),
        test_x=images(arrays["test"][0]),
        test_y=labels(arrays["test"][1]),
        classes=classes,
        provenance=provenance,
    )


def _verify(path: Path, provenance: dict, arrays: dict) -> None:
    """Refuse arrays that differ from the content hash ``prepare`` stored; on success the
    provenance carries the hashes recomputed from the arrays read (what the job trains on)."""
    stored = provenance.get("sha256_content")
    if not stored:
        raise DataError(
            f"data file {path} has no content hash (sha256_content): it was prepared by an older "
            "version of the pipeline, so its contents cannot be verified. Delete it and re-run "
            "prepare_data (e.g. `snakemake --forcerun prepare_data ...`); results trained on it "
            "are re-made, since the new file is newer than they are."
        )
    found = content_hashes(
        {
            f"{split}/{kind}": arrays[split][i]
            for split in ("train", "test")
            for i, kind in enumerate(("images", "labels"))
        }
    )
    if found["sha256_content"] != stored:
        keys = {name: "sha256_" + name.replace("/", "_") for name in ARRAYS}
        changed = [f"/{n}" for n, key in keys.items() if provenance.get(key) != found[key]]
        raise DataError(
            _damaged(
                path,
                f"its arrays ({', '.join(changed) or 'names, dtypes or shapes'}) do not match the "
                "content hash stored when prepare_data wrote it, so the file was changed or damaged "
                "since",
            )
        )
    provenance.update(found)


def _dataset(f: h5py.File, path: Path, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise DataError(_damaged(path, f"the dataset /{name} is missing"))
    return obj


def _damaged(path: Path, what: str) -> str:
    return (
        f"data file {path}: {what}. It is missing, damaged or from another version of the pipeline: "
        "delete it and re-run the rule that prepares the data (prepare_data)."
    )


def _provenance(f: h5py.File) -> dict:
    """Root attributes except ``classes``, as plain Python values."""
    out = {}
    for key, value in f.attrs.items():
        if key == "classes":
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value.decode() if isinstance(value, bytes) else value
    return out
