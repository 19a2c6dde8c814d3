"""tools.status on a run directory laid out as Snakemake 9 leaves it: a plan, finished outputs,
incomplete marks (with a SLURM job id), and Snakemake logs naming failed jobs -- one "Error in
rule" and one failed group job, in the formats snakemake.logging writes. The smoke run itself,
completed and killed part-way, is tests/workflow/test_run_status.py and test_killed_run.py."""

import base64
import os
import time

import pytest

from pipeline_scripts.tools import plan, status

NOW = time.mktime((2026, 12, 4, 12, 0, 0, 0, 0, -1))

JOBS = [  # (rule, family, outputs, hours)
    ("train_dense", "dense", ["results/r/seed1/dense/final.pt", "results/r/seed1/dense/m.h5"], 3.0),
    ("train_dense", "dense", ["results/r/seed2/dense/final.pt"], 1.0),
    ("train_imp_level", "imp", ["results/r/seed1/imp/rewind0/level1/final.pt"], 5.0),
    ("train_imp_level", "imp", ["results/r/seed1/imp/rewind0/level2/final.pt"], 2.0),
    ("train_imp_level", "imp", ["results/r/seed2/imp/rewind0/level1/final.pt"], 7.0),
    ("summarise", "other", ["results/r/summary/imp.h5"], 0.0),
]

SNAKEMAKE_LOG = """Select jobs to execute...
[Thu Dec  3 09:00:00 2026]
Error in rule train_imp_level:
    message: SLURM-job '4241' failed, SLURM status is: 'FAILED'. For further error details see the cluster/cloud log and the log files of the involved rule(s).
    jobid: 7
    input: results/data/cifar10.h5
    output: results/r/seed1/imp/rewind0/level2/final.pt
    log: logs/r/seed1/imp/rewind0/level2/train.log, .snakemake/slurm_logs/rule_train_imp_level/r_1/4241.log (check log file(s) for error details)
    external_jobid: 4241
Logfile logs/r/seed1/imp/rewind0/level2/train.log:
================================================================================
    output: not a field of the error
================================================================================
[Thu Dec  3 10:00:00 2026]
    message: SLURM-job '4250' failed, SLURM status is: 'TIMEOUT'.
    log: .snakemake/slurm_logs/group_summaries/4250.log (check log file(s) for error details)
    jobs:
        rule summarise:
            jobid: 9
            output: results/r/summary/imp.h5
            log: logs/r/summary/imp.log (check log file(s) for error details)
"""


def _write(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run_dir(tmp_path):
    jobs = [
        {"rule": r, "family": f, "network": "r", "outputs": outs, "log": [f"logs/{outs[0]}.log"],
         "hours": h, "bytes": 1}
        for r, f, outs, h in JOBS
    ]  # fmt: skip
    plan.save(tmp_path, ["figure1"], {"command": ["snakemake", "figure1"], "device": "GPU"}, jobs)
    for i, hours_ago in ((0, 2.0), (1, 1.0)):  # the dense runs finished 2 h and 1 h ago
        for out in JOBS[i][2]:
            os.utime(_write(tmp_path / out), (NOW - hours_ago * 3600,) * 2)
    running = JOBS[2][2][0]
    _write(tmp_path / running)  # a partial output of the running job, marked incomplete
    name = base64.urlsafe_b64encode(running.encode()).decode()
    _write(tmp_path / ".snakemake" / "incomplete" / name, '{"external_jobid": "4242"}')
    _write(tmp_path / ".snakemake" / "log" / "2026-12-03T085959.1.snakemake.log", SNAKEMAKE_LOG)
    _write(tmp_path / "logs/r/seed1/imp/rewind0/level2/train.log",
           "step 100\ntorch.OutOfMemoryError: CUDA out of memory.\n")  # fmt: skip
    return tmp_path


def test_status_counts_each_family_from_the_files(tmp_path):
    st = status.read(_run_dir(tmp_path))
    dense, imp, other = st.rows["dense"], st.rows["imp"], st.rows["other"]
    assert (dense["jobs"], dense["done"], dense["hours_done"], dense["hours_left"]) == (2, 2, 4, 0)
    assert (imp["jobs"], imp["running"], imp["failed"], imp["to run"]) == (3, 1, 1, 1)
    assert imp["hours_left"] == 5 + 2 + 7
    assert (other["failed"], other["done"]) == (1, 0)  # a failed group's member
    assert [i for _, i in st.running] == ["4242"]
    failed = {job["rule"]: f for job, f in st.failures}
    assert failed["train_imp_level"].logs == [
        "logs/r/seed1/imp/rewind0/level2/train.log",
        ".snakemake/slurm_logs/rule_train_imp_level/r_1/4241.log",
    ]
    assert failed["summarise"].logs == [
        "logs/r/summary/imp.log",
        ".snakemake/slurm_logs/group_summaries/4250.log",
    ]
    assert [j["rule"] for j, _ in st.failures] == ["summarise", "train_imp_level"]  # newest first


def test_status_report_gives_the_pace_eta_and_failures(tmp_path):
    st = status.read(_run_dir(tmp_path))
    # 4 device-hours finished over the 2 h since the first of them: 2 per hour; 14 left -> 7 h
    assert status.pace(st, 24, NOW) == (pytest.approx(2.0), 2)
    text = status.report(st, 24, now=NOW)
    assert "ETA 2026-12-04 19:00 (7.0 h)" in text
    assert "SLURM ids 4242" in text and "so they were interrupted" in text
    assert "log logs/r/seed1/imp/rewind0/level2/train.log: torch.OutOfMemoryError" in text
    assert "4241.log (missing)" in text  # named, not found: SLURM keeps it on the cluster
    assert "Snakemake: not running on this directory (no lock)" in text
    (row,) = [ln for ln in text.splitlines() if ln.startswith("all ")]
    assert row.split()[1:6] == ["6", "2", "1", "2", "1"]  # jobs done running failed to-run


def test_status_without_a_plan_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="no plan in .*make cost PROFILE=slurm"):
        status.read(tmp_path)


def test_watch_redraws_until_interrupted(tmp_path, capsys, monkeypatch):
    run_dir = _run_dir(tmp_path)
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", sleep)
    assert status.main([str(run_dir), "--watch", "5"]) == 0
    out = capsys.readouterr().out
    assert naps == [5.0, 5.0] and out.count("\033[H\033[2J") == 2  # two screens, then Ctrl-C
    assert out.count("last failures (2 of 2") == 2
