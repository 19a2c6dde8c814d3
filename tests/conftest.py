"""What the whole suite shares: one thread per test process, and the runs made once per session
of pytest whatever the number of xdist workers (``-n 2``, pyproject.toml).

The smoke preset's run (``smoke_session``, tests/workflow/conftest.py) and the paper's planned
DAG (``paper_dag``) are ``support.SHARED``: the first worker that collects a test needing one
starts it in the background, the workers run every other test meanwhile (the tests on shared
runs are ordered last), and a test that needs it waits for its result. Torch runs one thread per
test process, so two workers share two cores without oversubscribing them; a test that needs
another thread count sets it (the ISA check and the benchmarks run their cases in processes of
their own).
"""

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from support import SHARED, SHARED_DIR_VAR, SMOKE_DATA

torch.set_num_threads(1)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers)
        os.environ[SHARED_DIR_VAR] = tempfile.mkdtemp(prefix="earlyphase-tests-")
        # the planning's cache of its checks (config_check.cache_dir): the session's own, shared
        # by every run directory of the tests, not the user's
        os.environ["EARLYPHASE_CACHE_DIR"] = os.path.join(os.environ[SHARED_DIR_VAR], "cache")


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(SHARED_DIR_VAR), ignore_errors=True)


def _needs(item) -> set[str]:
    return {name for name in SHARED if name in getattr(item, "fixturenames", ())}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: bool(_needs(item)))  # the tests on shared runs last


def pytest_collection_finish(session):
    for name in set().union(*map(_needs, session.items)):  # (after deselection)
        SHARED[name].start()
    if hasattr(session.config, "workerinput"):
        # The shared runs (started above, at normal priority) go first: tests wait for them,
        # while the workers' own tests (and their subprocesses) only fill the cores around them.
        os.nice(10)


def pytest_sessionfinish(session, exitstatus):
    for run in SHARED.values():
        run.close(wait=exitstatus != pytest.ExitCode.INTERRUPTED)


@pytest.fixture(scope="session")
def smoke_data_dir() -> Path:
    """The image folder the smoke run is made with."""
    return Path(os.environ[SHARED_DIR_VAR]) / SMOKE_DATA


@pytest.fixture(scope="session")
def paper_dag() -> list[tuple[str, dict]]:
    """Every job of the paper's DAG (config.yaml) as (rule, wildcards), from one `snakemake -n`
    (``tools.cost.dag``'s dry run, about a minute)."""
    from pipeline_scripts.tools import cost

    proc, _ = SHARED["paper_dag"].result()
    if proc.returncode:
        raise AssertionError(f"snakemake -n failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return cost.parse_dry_run(proc.stdout)


@pytest.fixture(scope="session")
def paper_dag_files(paper_dag) -> list[dict[str, list[str]]]:
    """Every job's output and log files of the paper's DAG, in ``paper_dag``'s order."""
    from pipeline_scripts.tools import cost

    proc, _ = SHARED["paper_dag"].result()
    return cost.parse_dry_run_files(proc.stdout)


@pytest.fixture(scope="session")
def paper_job_counts(paper_dag) -> dict[str, int]:
    """{rule: runs} of the paper's DAG -- a seed-group job (``runtime.runs_per_job``) counted as
    its runs under its base rule (``tools.cost._base_rule``) -- with the "total" of its jobs."""
    from pipeline_scripts.tools import cost

    counts = Counter()
    for rule, _ in paper_dag:
        base, runs = cost._base_rule(rule)
        counts[base] += runs
    return {**counts, "total": len(paper_dag)}
