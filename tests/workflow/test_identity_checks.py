"""Two mistakes that used to build their targets with exit code 0, end to end on a copy of the
smoke run: a metrics file copied over another seed's, and a data file damaged in place with its
modification time kept."""

import os
import shutil

import h5py
import pytest
from test_incremental import copy_run
from test_workflow import smk

NET = "resnet8_w4"
SUMMARY = f"results/{NET}/summary/imp.h5"


@pytest.fixture
def imp_slice(smoke_session, tmp_path):
    """A copy of the session's smoke run (the tests damage it) and the command line on it."""
    out = copy_run(smoke_session.out, tmp_path / "run")
    return out, ("--profile", "profiles/smoke", "--directory", str(out))


def test_summary_refuses_a_metrics_file_copied_from_another_seed(imp_slice):
    out, base = imp_slice
    level = f"results/{NET}/seed{{}}/imp/rewind4/level2/metrics.h5"
    target = out / level.format(1)
    shutil.copy(out / level.format(2), target)
    proc = smk(SUMMARY, *base, "--forcerun", "summarise", check=False)
    log = (out / f"logs/{NET}/summary/imp.log").read_text()
    assert proc.returncode != 0
    assert str(target) in log or level.format(1) in log, log[-2000:]
    assert "records seed 2 (expected 1)" in log and "series 'rewind4' level 2 seed 1" in log


def test_training_refuses_a_data_file_damaged_in_place(imp_slice):
    out, base = imp_slice
    data = out / "results/data/cifar10.h5"
    stat = data.stat()
    with h5py.File(data, "a") as f:
        images = f["train/images"]
        images[: len(images) // 2] = 0
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    target = f"results/{NET}/seed1/dense/metrics.h5"
    proc = smk(target, *base, "--forcerun", "train_dense", check=False)
    log = (out / f"logs/{NET}/seed1/dense/train.log").read_text()
    assert proc.returncode != 0
    assert "do not match the content hash" in log and "/train/images" in log, log[-2000:]
    assert "re-run the rule that prepares the data (prepare_data)" in log
