"""How many images an image-folder data source holds per split, without reading them and without
torch, so that the planning can check ``data.n_train`` / ``data.n_test`` against the source.

The rules are the loader's (``data_sources._list_directory``, which is torchvision's
``ImageFolder``, and ``data_sources._list_archive``): the tree is the path itself or its single
subfolder holding ``train/`` and ``test/``; classes are the sub-folders of a split; an image is a
file with one of ``IMG_EXTENSIONS`` anywhere below a class folder. A tar archive is listed member
by member (headers only; a .tar.gz is still decompressed once, ~1 s per 100 MB), so the caller
caches the counts (``config_check``). Layout errors are left to ``prepare_data``, which reports
them in full: here a tree that does not fit gives ``None``.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zlib
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS (tests/unit/test_data.py keeps the two equal)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def count(path: str | Path) -> dict[str, int] | None:
    """{"train": n, "test": n} for a directory or tar archive in the image-folder layout; None
    when ``path`` does not exist or holds no train/ and test/ folders."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _count_directory(path)
    if path.is_file():
        return _count_archive(path)
    return None


def _count_directory(directory: Path) -> dict[str, int] | None:
    subdirs = [d for d in directory.iterdir() if d.is_dir()]
    for tree in [directory, *(subdirs if len(subdirs) == 1 else [])]:
        if all((tree / s).is_dir() for s in SPLITS):
            return {s: _count_split(tree / s) for s in SPLITS}
    return None


def _count_split(split_dir: Path) -> int:
    n = 0
    for entry in os.scandir(split_dir):
        if entry.is_dir():
            for _, _, files in os.walk(entry.path, followlinks=True):
                n += sum(map(_is_image, files))
    return n


def _count_archive(path: Path) -> dict[str, int] | None:
    files, dirs = [], set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = posixpath.normpath(member.name.lstrip("/"))
                if member.isdir():
                    dirs.add(name)
                elif member.isfile() and _is_image(name):
                    files.append(name)
                parts = name.split("/")[:-1]
                dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return None  # prepare_data names what is wrong with it
    tops = sorted(d for d in dirs if "/" not in d and d != ".")
    roots = [""] + ([tops[0] + "/"] if len(tops) == 1 else [])
    root = next((r for r in roots if {f"{r}{s}" for s in SPLITS} <= dirs), None)
    if root is None:
        return None
    out = {}
    for split in SPLITS:
        base = f"{root}{split}/"
        out[split] = sum(1 for n in files if n.startswith(base) and "/" in n[len(base) :])
    return out
