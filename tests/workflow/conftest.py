"""Fixtures shared by the workflow tests."""

from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from support import SHARED, image_folder


@dataclass(frozen=True)
class SmokeRun:
    out: Path  # the run's --directory
    proc: CompletedProcess


@pytest.fixture(scope="session")
def smoke_session(smoke_data_dir) -> SmokeRun:
    """One undisturbed run of the smoke preset for the whole session of pytest, made in the
    background with an explicit data choice (tests/conftest.py: ``SHARED``). Read-only: a test
    that changes files (or Snakemake's metadata) works on a copy (test_incremental.copy_run)."""
    proc, _ = SHARED["smoke_session"].result()
    if proc.returncode:
        raise AssertionError(f"the smoke run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return SmokeRun(Path(proc.args[proc.args.index("--directory") + 1]), proc)


@pytest.fixture(scope="session")
def smoke_data(smoke_session, smoke_data_dir) -> Path:
    """The image folder the session's smoke run was made with."""
    return smoke_data_dir


@pytest.fixture(scope="session")
def laptop_data(tmp_path_factory) -> Path:
    """As many images as the laptop preset's data.n_train / n_test (the planning counts them)."""
    return image_folder(tmp_path_factory.mktemp("laptop-data"), n_train=5000, n_test=1000)


@pytest.fixture(scope="session")
def smoke_data_config(smoke_data) -> tuple[str, str]:
    """The session run's data choice, for a test that starts a fresh run directory to compare
    with it (on the session run or a copy, no command needs it)."""
    return ("--config", f'data={{"source": "imagefolder", "path": "{smoke_data}"}}')


@pytest.fixture(scope="session")
def smoke_run(smoke_session):
    """(directory, CompletedProcess) of the session's smoke run; a module may still define its
    own module-scoped ``smoke_run``, which then takes precedence in that module."""
    return smoke_session.out, smoke_session.proc
