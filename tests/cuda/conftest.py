"""The CUDA tests inside the GPU check's budget (``tools.gpu_check.cuda_tests``): with
``EARLYPHASE_TEST_DEADLINE`` (a Unix time) no test starts after it (it is skipped, saying why),
and with ``EARLYPHASE_TEST_REPORT`` every collected test and each outcome as it happens go to that
file, one JSON object a line, so a run interrupted at the deadline still says what ran."""

import json
import os
import time

import pytest

DEADLINE = os.environ.get("EARLYPHASE_TEST_DEADLINE")
REPORT = os.environ.get("EARLYPHASE_TEST_REPORT")


def _write(entry: dict) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_collection_finish(session):
    _write({"collected": [item.name for item in session.items]})


def pytest_runtest_setup(item):
    if DEADLINE and time.time() > float(DEADLINE):
        pytest.skip("not started: the GPU check's time for its tests ran out")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = report.outcome if report.when == "call" or report.skipped else "error"
        detail = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = str(report.longrepr[2])[:300]
        elif report.failed:
            detail = str(report.longrepr)[-300:]
        name = report.nodeid.split("::")[-1]
        _write({"test": name, "outcome": outcome, "detail": detail, "seconds": report.duration})
