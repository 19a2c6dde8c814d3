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


@pytest.fixture(scope="session")
def smoke_session(tmp_path_factory) -> SmokeRun:
    """One undisturbed run of the smoke preset for the whole session. Read-only: a test that
    changes files (or Snakemake's metadata) works on a copy (test_incremental.copy_run)."""
    out = tmp_path_factory.mktemp("smoke-session")
    started = time.monotonic()
    proc = smk("--profile", "profiles/smoke", "--directory", str(out))
    return SmokeRun(out, proc, time.monotonic() - started)


@pytest.fixture(scope="session")
def smoke_run(smoke_session):
    """(directory, CompletedProcess) of the session's smoke run; a module may still define its
    own module-scoped ``smoke_run``, which then takes precedence in that module."""
    return smoke_session.out, smoke_session.proc
