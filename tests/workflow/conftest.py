"""Fixtures shared by the workflow tests."""

import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from test_workflow import smk


@dataclass(frozen=True)
class SmokeRun:
    out: Path  # the run's --directory
    proc: CompletedProcess
    seconds: float  # wall time of the undisturbed run


def image_folder(root: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """A CIFAR-10-shaped image folder (train/<class>/*.png, test/<class>/*.png, 32x32, 10
    classes) of random pictures: what a user gives with `make laptop DATA=...`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("smoke-data"))


@pytest.fixture(scope="session")
def smoke_data_config(smoke_data) -> tuple[str, str]:
    """The session run's data choice, for a test that starts a fresh run directory to compare
    with it (on the session run or a copy, no command needs it)."""
    return ("--config", f'data={{"source": "imagefolder", "path": "{smoke_data}"}}')


@pytest.fixture(scope="session")
def smoke_session(tmp_path_factory, smoke_data) -> SmokeRun:
    """One undisturbed run of the smoke preset for the whole session, made with an explicit data
    choice (an image folder instead of the preset's generated data) as a user's first command
    would: every later command of the tests on it names no data, so they all rely on the run
    directory keeping its data. Read-only: a test that changes files (or Snakemake's metadata)
    works on a copy (test_incremental.copy_run)."""
    out = tmp_path_factory.mktemp("smoke-session")
    started = time.monotonic()
    data = f'data={{"source": "imagefolder", "path": "{smoke_data}"}}'
    proc = smk(
        "--profile", "profiles/smoke", "--directory", str(out), "--config", data
    )  # as a user
    return SmokeRun(out, proc, time.monotonic() - started)


@pytest.fixture(scope="session")
def smoke_run(smoke_session):
    """(directory, CompletedProcess) of the session's smoke run; a module may still define its
    own module-scoped ``smoke_run``, which then takes precedence in that module."""
    return smoke_session.out, smoke_session.proc
