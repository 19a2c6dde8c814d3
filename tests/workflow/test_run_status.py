"""The live view and the disk estimate on the suite's smoke run (completed; killed part-way:
test_killed_run.py): the plan of the smoke command (tools.cost --save-plan's), read against the
run's own files."""

import json
import os
import re
from pathlib import Path

import pytest
from test_workflow import ROOT

from pipeline_scripts.tools import cost, disk, plan, status

H200 = ROOT / "docs/measurements/2026-12-04-h200-gpu-check.json"
# resnet8_w4 has no measured rate: priced at ResNet-20's, so the hours are not zero
ASSUME = {"resnet8_w4": "resnet20"}


def smoke_plan(run_dir: Path, targets: tuple[str, ...], data_config: tuple[str, ...]) -> list:
    """The plan tools.cost --save-plan writes for the smoke preset's command with ``targets``."""
    config_args = tuple(data_config[1:])  # ("data={...}",)
    listing = cost.dry_run([ROOT / "config/smoke.yaml"], targets, config_args)
    from pipeline_scripts.tools import command

    cmd = command.Command(configfiles=[ROOT / "config/smoke.yaml"], config=list(config_args))
    config = command.load_config(cmd)
    rates, _ = cost.rates_for(config, json.loads(H200.read_text()), ASSUME)
    dag_jobs, files = cost.parse_dry_run(listing), cost.parse_dry_run_files(listing)
    jobs = plan.jobs(config, dag_jobs, files, rates)
    plan.save(run_dir, list(targets), {"command": ["snakemake", *targets], "device": "H200"}, jobs)
    return jobs


@pytest.fixture(scope="module")
def view(smoke_session, smoke_data_config, tmp_path_factory):
    """A run directory that shows the (read-only) session run through links, with a plan."""
    d = tmp_path_factory.mktemp("smoke-view")
    for name in ("results", "logs", ".snakemake"):
        os.symlink(smoke_session.out / name, d / name)
    return d, smoke_plan(d, (), smoke_data_config)


def test_status_of_the_completed_smoke_run(view):
    run_dir, jobs = view
    st = status.read(run_dir)
    assert st.seconds < 5
    total = sum(r["jobs"] for r in st.rows.values())
    assert total == sum(1 for j in jobs if j["outputs"]) == 88  # the 89 jobs but `all`
    for family, r in st.rows.items():
        assert r["done"] == r["jobs"], family
        assert r["running"] == r["failed"] == r["to run"] == 0 and r["hours_left"] == 0
    assert st.rows["dense"]["hours_done"] == pytest.approx(
        sum(j["hours"] for j in jobs if j["family"] == "dense")
    ) and st.rows["dense"]["hours_done"] > 0  # fmt: skip
    text = status.report(st)
    assert "every planned job is done" in text
    assert "Snakemake: not running on this directory (no lock)" in text
    assert not st.failures and not st.running


def test_status_command_line(view, capsys):
    run_dir, _ = view
    assert status.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    (row,) = [ln for ln in out.splitlines() if ln.startswith("all ")]
    assert row.split()[1:6] == ["88", "88", "0", "0", "0"]


@pytest.mark.parametrize("kind", ["weights", "mask", "telemetry", "data"])
def test_disk_estimate_of_every_large_file(view, kind):
    """tools.disk's size of each checkpoint, mask, telemetry snapshot file and the data set,
    against the smoke run's files: within 2 % (these make up the protocol's disk)."""
    run_dir, jobs = view
    config = cost.load_config([ROOT / "config/smoke.yaml"])
    pattern = {"weights": disk.WEIGHTS, "mask": re.compile(r"mask\.pt$"),
               "telemetry": re.compile(r"telemetry_raw\.h5$"),
               "data": re.compile(r"data/cifar10\.h5$")}[kind]  # fmt: skip
    checked = 0
    points = len(_telemetry_points(config))  # the smoke run's image folder: as many images as
    for job in jobs:  # config/smoke.yaml's synthetic data
        for out in job["outputs"]:
            if pattern.search(out):
                size = (run_dir / out).stat().st_size
                predicted = disk.file_bytes(out, job["network"], config, points)
                assert predicted == pytest.approx(size, rel=0.02), (out, predicted, size)
                checked += 1
    assert checked >= {"weights": 40, "mask": 20, "telemetry": 2, "data": 1}[kind]


def _telemetry_points(config):
    from pipeline_scripts.earlyphase import telemetry
    from pipeline_scripts.earlyphase.hparams import TrainingHparams

    hp = TrainingHparams.from_dict(config["training"]["defaults"])
    n_train, _ = cost.data_sizes(config)
    total = hp.total_iterations(n_train)
    tel = config["telemetry"]
    return telemetry.schedule(min(tel["iterations"], total), tel["dense_until"], tel["points"])


def test_status_reads_a_paper_sized_run_within_seconds(paper_dag, paper_dag_files, tmp_path):
    """The paper protocol's plan (15,453 jobs) in a run directory 60 % done, 100 jobs running and
    20 failed (tests/support.py: synthetic_run): read in well under the 10 s a live view may take
    (docs/measurements.md has the figure for a run 99 % done)."""
    from support import synthetic_run

    config = cost.load_config([ROOT / "config.yaml"])
    rates, _ = cost.rates_for(config, json.loads(H200.read_text()), {"resnet18": "wrn16_8"})
    jobs = plan.jobs(config, paper_dag, paper_dag_files, rates)
    plan.save(tmp_path, [], {"command": ["snakemake"], "device": "H200"}, jobs)
    synthetic_run(tmp_path, jobs, done=0.6, running=100, failed=20)
    st = status.read(tmp_path)
    assert st.seconds < 5, st.seconds
    total = {k: sum(r[k] for r in st.rows.values()) for k in ("jobs", "done", "running", "failed")}
    assert total == {"jobs": 15_452, "done": int(0.6 * 15_452), "running": 100, "failed": 20}
    assert sum(r["hours_done"] + r["hours_left"] for r in st.rows.values()) == pytest.approx(
        sum(j["hours"] for j in jobs)
    )
