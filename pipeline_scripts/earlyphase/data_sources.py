"""The data sources of ``data.prepare``: official CIFAR-10 through torchvision, an image folder (a
directory or a tar archive of one, read without extracting) and a generated synthetic stand-in.
Each returns (train split, test split, class names, provenance attributes); ``data`` validates,
subsets and writes them (see its docstring for the layout rules)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import posixpath
import socket
import sys
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import folder_count, rng
from .data_types import (
    CIFAR10_CLASSES,
    DOWNLOAD_TIMEOUT_S,
    IMAGE_SHAPE,
    LAYOUT_HELP,
    SYNTHETIC_DEFAULTS,
    DataError,
    Split,
)

_PARALLEL_MIN_FILES = 2000  # below this a process pool costs more than it saves
_FILES_PER_TASK = 1000

# ---------------------------------------------------------------------------------------------
# source: torchvision


def _from_torchvision(root: Path) -> tuple[Split, Split, tuple[str, ...], dict]:
    """Official CIFAR-10 via torchvision (downloads into ``root`` unless already there)."""
    from torchvision.datasets import CIFAR10

    root = root.expanduser().absolute()
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
    except Exception as e:  # offline, corrupt archive, unwritable root, ...: all mean "no data"
        raise DataError(_torchvision_help(root, e, CIFAR10.url)) from e
    finally:
        socket.setdefaulttimeout(old_timeout)
    if tuple(splits[0].classes) != CIFAR10_CLASSES:
        raise DataError(f"{root}: unexpected CIFAR-10 class names {splits[0].classes}")
    train, test = ((ds.data, np.asarray(ds.targets, dtype=np.int64)) for ds in splits)
    attrs = {"source_path": str(root), "source_url": CIFAR10.url, "source_md5": CIFAR10.tgz_md5}
    return train, test, CIFAR10_CLASSES, attrs


def _torchvision_help(root: Path, error: Exception, url: str) -> str:
    return (
        f"could not get CIFAR-10 through torchvision in {root} "
        f"({type(error).__name__}: {error}).\n"
        "Provide the data in one of two ways:\n"
        f"  1. put the official cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in "
        f"{root}, or allow this machine to download it from {url};\n"
        "  2. set `data.source: imagefolder` and point `data.path` at a directory with "
        "train/<class>/*.png|jpg and test/<class>/*.png|jpg (32x32 images), or at a .tar.gz of "
        "such a tree."
    )


# ---------------------------------------------------------------------------------------------
# source: imagefolder

# One listed split: class names, (display name, file path or bytes) per image, labels.
Listing = tuple[tuple[str, ...], list[tuple[str, str | bytes]], np.ndarray]


def _from_imagefolder(path: Path) -> tuple[Split, Split, tuple[str, ...], dict]:
    """A train/<class>/, test/<class>/ tree, as a directory or a tar archive of one."""
    path = path.expanduser().absolute()
    if path.is_dir():
        tree = _tree_root(path)
        listings = {name: _list_directory(tree / name, path) for name in ("train", "test")}
        attrs = {"source_path": str(path)}
    elif path.is_file():
        listings = _list_archive(path)
        attrs = {"source_path": str(path), "source_sha256": _sha256_file(path)}
    else:
        raise DataError(f"imagefolder data path {path} does not exist; {LAYOUT_HELP}")
    (classes, *_), (test_classes, *_) = listings.values()
    if test_classes != classes:
        raise DataError(
            f"{path}: train/ and test/ have different class folders: train {list(classes)}, "
            f"test {list(test_classes)}; {LAYOUT_HELP}"
        )
    train, test = ((_read_images(items), labels) for _, items, labels in listings.values())
    return train, test, classes, attrs


def _tree_root(directory: Path) -> Path:
    """The folder holding train/ and test/: ``directory`` itself or its single subfolder."""
    subdirs = [d for d in directory.iterdir() if d.is_dir()]
    for tree in [directory, *(subdirs if len(subdirs) == 1 else [])]:
        if (tree / "train").is_dir() and (tree / "test").is_dir():
            return tree
    raise DataError(f"{directory} has no train/ and test/ folders; {LAYOUT_HELP}")


def _list_directory(split_dir: Path, shown: Path) -> Listing:
    """List a split with torchvision's ImageFolder rules (tests/unit/test_data.py compares them),
    without torchvision, which a bare GPU image may lack: classes are the sorted sub-folders,
    images the files with an image extension anywhere below a class folder (links followed),
    ordered by class, then the walk's sorted folders, then file name."""
    try:
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    except OSError as e:
        raise DataError(f"{shown}: {split_dir.name}/ is not usable: {e}; {LAYOUT_HELP}") from e
    if not classes:
        raise DataError(f"{shown}: {split_dir.name}/ has no class folders; {LAYOUT_HELP}")
    items, labels = [], []
    for label, name in enumerate(classes):
        found = [
            os.path.join(root, f)
            for root, _, files in sorted(os.walk(split_dir / name, followlinks=True))
            for f in sorted(files)
            if folder_count._is_image(f)
        ]
        if not found:
            raise DataError(f"{shown}: {split_dir.name}/{name}/ has no images; {LAYOUT_HELP}")
        items += [(f"{shown}: {os.path.relpath(p, split_dir.parent)}", p) for p in found]
        labels += [label] * len(found)
    return tuple(classes), items, np.array(labels, dtype=np.int64)


def _list_archive(path: Path) -> dict[str, Listing]:
    """List both splits of a tar archive read into memory, with ImageFolder's rules.

    Not extracted on purpose: writing and deleting 60,000 small files took 50-110 s on our shared
    disk against ~3 s for reading the members in memory, and nothing is written, so hostile member
    names or links cannot escape anywhere. Only regular files are read (links are ignored).
    Same rules as ImageFolder: classes are the sorted sub-folders of train/ (test/), images are
    files with an image extension anywhere below a class folder, ordered by (folder, file name).
    """
    files, dirs = {}, set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = posixpath.normpath(member.name.lstrip("/"))
                if member.isdir():
                    dirs.add(name)
                elif member.isfile() and folder_count._is_image(name):
                    files[name] = tar.extractfile(member).read()
                dirs.update(_ancestors(name))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read {path} as a tar archive ({type(e).__name__}: {e}); {LAYOUT_HELP}"
        ) from e
    tops = sorted(d for d in dirs if "/" not in d and d != ".")
    roots = [""] + ([tops[0] + "/"] if len(tops) == 1 else [])
    root = next((r for r in roots if {f"{r}train", f"{r}test"} <= dirs), None)
    if root is None:
        raise DataError(f"{path} has no train/ and test/ folders; {LAYOUT_HELP}")
    listings = {}
    for split in ("train", "test"):
        base = f"{root}{split}/"
        classes = tuple(sorted({d[len(base) :] for d in dirs if _is_child(d, base)}))
        if not classes:
            raise DataError(f"{path}: {split}/ has no class folders; {LAYOUT_HELP}")
        index = {c: i for i, c in enumerate(classes)}
        found = sorted(
            (index[n[len(base) :].split("/")[0]], posixpath.dirname(n), posixpath.basename(n))
            for n in files
            if n.startswith(base) and n[len(base) :].count("/") >= 1
        )
        empty = sorted(set(classes) - {classes[label] for label, _, _ in found})
        if empty:
            raise DataError(f"{path}: {split}/ has no images for classes {empty}; {LAYOUT_HELP}")
        names = [posixpath.join(d, b) for _, d, b in found]
        items = [(f"{path}: {n[len(root) :]}", files[n]) for n in names]
        listings[split] = (classes, items, np.array([f[0] for f in found], dtype=np.int64))
    return listings


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _is_child(directory: str, base: str) -> bool:
    return directory.startswith(base) and "/" not in directory[len(base) :]


def _read_images(items: list[tuple[str, str | bytes]]) -> np.ndarray:
    """Decode all images into (N, 32, 32, 3) uint8, in a forked process pool when it pays off.

    Measured on 2 cores for 50,000 CIFAR JPEGs: 6.9 s in-process, 4.0 s with 2 forked processes;
    a thread pool was twice as slow as in-process (GIL contention), and spawned workers lose their
    gain re-importing torch, so the pool is used only on Linux, where fork is available.
    """
    chunks = [items[i : i + _FILES_PER_TASK] for i in range(0, len(items), _FILES_PER_TASK)]
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 16)
    if len(items) < _PARALLEL_MIN_FILES or workers < 2 or not sys.platform.startswith("linux"):
        parts = [_decode(chunk) for chunk in chunks]
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(pool.map(_decode, chunks))
    return np.concatenate(parts) if parts else np.zeros((0, *IMAGE_SHAPE), np.uint8)


def _decode(items: list[tuple[str, str | bytes]]) -> np.ndarray:
    """Worker: PIL-decode to RGB (as ImageFolder's default loader does); check 32x32."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(items), *IMAGE_SHAPE), np.uint8)
    for i, (where, source) in enumerate(items):
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{where} is not a readable image ({e})") from e
        if rgb.size != (32, 32):
            raise DataError(f"{where} is {rgb.size[0]}x{rgb.size[1]} pixels; images must be 32x32")
        out[i] = np.asarray(rgb)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# source: synthetic


def _synthetic(
    seed: int,
    n_train: int = SYNTHETIC_DEFAULTS["n_train"],
    n_test: int = SYNTHETIC_DEFAULTS["n_test"],
    num_classes: int = SYNTHETIC_DEFAULTS["num_classes"],
) -> tuple[Split, Split, tuple[str, ...], dict]:
    """A learnable CIFAR-shaped stand-in whose classes differ in spatial structure, not mean colour.

    Generator (all draws from ``rng.generator(seed, "synthetic", ...)``):

    * Each class c has a fixed smooth colour pattern P_c (3x32x32): a random sum of the 48 lowest
      2-D Fourier modes (|kx|, |ky| <= 3, constant mode excluded), amplitude ~ 1/(1 + |k|), drawn
      independently per channel, scaled to unit RMS. Every channel of P_c has mean exactly 0.
    * An example of class c is ``128 + offset + contrast * shift(P_c) + noise``, clipped and
      rounded to uint8, where ``offset`` is a per-example colour ~ N(0, 24^2) per channel (shared
      by all classes, so the mean colour carries no label information), ``contrast`` ~ U(24, 48),
      ``shift`` a random sub-pixel circular translation of up to 4 px in x and y (exact, as a
      phase change of the Fourier modes), and ``noise`` i.i.d. N(0, 24^2) per pixel.
    * Labels are balanced (counts differ by at most one) and shuffled.

    A small CNN learns it well above chance in a few hundred steps; a classifier on mean colour
    stays at chance.
    """
    if num_classes < 2 or n_train < 1 or n_test < 1:
        raise ValueError(
            f"synthetic needs num_classes >= 2 and n_train, n_test >= 1, got "
            f"{num_classes=}, {n_train=}, {n_test=}"
        )
    k = torch.arange(-3, 4, dtype=torch.float64)
    ky, kx = (t.flatten() for t in torch.meshgrid(k, k, indexing="ij"))
    keep = (ky != 0) | (kx != 0)
    ky, kx = ky[keep], kx[keep]  # (F,) integer frequencies, so every mode is 32-periodic
    g = rng.generator(seed, "synthetic", "patterns")
    amplitude = 1.0 / (1.0 + torch.sqrt(kx**2 + ky**2))
    coef = (
        torch.complex(
            torch.randn(num_classes, 3, len(kx), generator=g, dtype=torch.float64),
            torch.randn(num_classes, 3, len(kx), generator=g, dtype=torch.float64),
        )
        * amplitude
    )
    grid = torch.arange(32, dtype=torch.float64)
    phase = 2 * math.pi / 32 * (ky[:, None, None] * grid[:, None] + kx[:, None, None] * grid)
    # Re(sum_k a_k exp(i phase_k)) = [Re a, -Im a] @ [cos; sin]: a real float32 matmul, about twice
    # as fast as the complex128 one; rounding to uint8 hides the precision difference.
    basis = torch.cat([phase.cos(), phase.sin()]).reshape(2 * len(kx), -1).float()  # (2F, 1024)

    def render(a: torch.Tensor) -> torch.Tensor:
        return torch.cat([a.real, -a.imag], dim=-1).float() @ basis

    coef = coef / render(coef).pow(2).mean(dim=(1, 2)).sqrt()[:, None, None]  # unit RMS

    def split(n: int, name: str) -> Split:
        g = rng.generator(seed, "synthetic", name)
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        shift = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * 4.0  # px
        contrast = 24.0 + 24.0 * torch.rand(n, 1, 1, generator=g)
        offset = 24.0 * torch.randn(n, 3, 1, generator=g)
        images = np.empty((n, *IMAGE_SHAPE), np.uint8)
        for s in range(0, n, 1024):  # chunks bound memory; the noise stream is chunk-sequential
            e = min(s + 1024, n)
            turn = torch.exp(-2j * math.pi / 32 * (shift[s:e, :1] * ky + shift[s:e, 1:] * kx))
            x = render(coef[labels[s:e]] * turn[:, None, :])  # (b, 3, 1024)
            x = 128.0 + offset[s:e] + contrast[s:e] * x
            x = x + 24.0 * torch.randn(x.shape, generator=g)
            x = x.clamp(0, 255).round().to(torch.uint8).reshape(e - s, 3, 32, 32)
            images[s:e] = x.permute(0, 2, 3, 1).numpy()
        return images, labels.numpy().astype(np.int64)

    classes = tuple(f"class{c}" for c in range(num_classes))
    params = {"n_train": n_train, "n_test": n_test, "num_classes": num_classes, "seed": seed}
    attrs = {"source_path": "", "synthetic_params": json.dumps(params, sort_keys=True)}
    return split(n_train, "train"), split(n_test, "test"), classes, attrs
