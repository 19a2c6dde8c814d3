"""profiles/slurm against a real SLURM cluster (`bash tests/slurm/cluster.sh start`).

A slice of the smoke config (one seed, one IMP level, no perturbations or pre-training) runs through
`snakemake --profile profiles/slurm`, configured the way a user does it (EARLYPHASE_SLURM_*
environment variables): every job must go through sbatch, training jobs must have asked SLURM for
a GPU and CPU jobs must not, grouped CPU jobs share allocations sized for running one after another,
and the outputs must be complete. Without a cluster these tests skip, except under CI=true, where a
missing cluster is a failure.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from support import SHARED, SharedRun

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, PARTITION = "earlyphase", "debug"  # what tests/slurm/cluster.sh sets up
TRAINING = {"train_dense", "train_imp_level"}  # the training rules this slice runs
OVERLAY = """\
# config/smoke.yaml cut to a few jobs: one seed, IMP level 1 from k = 0 and 4, no perturbations,
# no pre-training, no instability or Hessian measurements
seeds: [1]
imp: {rewind_iterations: [0, 4], levels: 1}
perturb: {run: []}
pretrain: {tasks: [], sparse: {kinds: []}}
stability: {rewind_iterations: []}
hessian: {iterations: []}
"""
TARGETS = [
    "results/resnet8_w4/summary/imp.h5",
    "results/figures/figure1/resnet8_w4.png",  # group `summaries`: summarise + plot_figure1
    "results/figures/figure3/resnet8_w4.png",  # group `telemetry`: telemetry_run + summary + fig 3
]


def _run(*cmd, timeout=30):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _cluster_problem() -> str | None:
    """Why the tests cannot run here, or None when a usable cluster is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client commands (sinfo, sbatch) are not installed"
    try:
        proc = _run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%T %G")
    except subprocess.TimeoutExpired:
        return "sinfo timed out (is slurmctld running?)"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip() or proc.stdout.strip()}"
    nodes = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    if not any(state.rstrip("*") in ("idle", "mixed", "allocated") for state, *_ in nodes):
        return f"no usable node in partition {PARTITION!r} (sinfo: {proc.stdout.strip()!r})"
    if not any("gpu" in gres for _, *gres in nodes for gres in gres):
        return f"no node in partition {PARTITION!r} declares a GPU (gres)"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        hint = "start one with `bash tests/slurm/cluster.sh start` (root, Debian)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires a SLURM cluster, but {problem}; {hint}", pytrace=False)
        pytest.skip(f"no SLURM cluster: {problem}; {hint}")
    return {"sacct": _run("sacct", "-n", "-X").returncode == 0}


def test_cluster_gives_a_gpu_job_its_own_device(cluster):
    """What the profile relies on: `--gpus=1` gets a device, exported as CUDA_VISIBLE_DEVICES."""
    proc = _run(
        "sbatch",
        "--parsable",
        "--wait",
        "-A",
        ACCOUNT,
        "-p",
        PARTITION,
        "--gpus=1",
        "--mem=100",
        "-c",
        "1",
        "-t",
        "2",
        "-o",
        "/dev/null",
        "--wrap",
        "scontrol show job $SLURM_JOB_ID >/dev/null; "
        'test -n "$CUDA_VISIBLE_DEVICES" && test "$CUDA_VISIBLE_DEVICES" != NoDevFiles',
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _slurm_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYPHASE_SLURM_")}
    env.update(
        EARLYPHASE_SLURM_ACCOUNT=ACCOUNT,  # the user's settings, as the README documents them
        EARLYPHASE_SLURM_PARTITION=PARTITION,
        EARLYPHASE_SLURM_TRAIN_THREADS="1",  # the test node has 2 CPUs
    )
    return env


def _slurm_command(base: Path) -> list[str]:
    out = base / "slurm"
    sacct = _run("sacct", "-n", "-X").returncode == 0
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--directory",
        str(out),
        "--configfile",
        str(ROOT / "config.yaml"),
        str(ROOT / "config/smoke.yaml"),
        str(base / "slurm-overlay.yaml"),
        "--retries",
        "0",  # a failure shows at once
        "--slurm-init-seconds-before-status-checks",
        "5",  # the test's jobs take seconds
        "--slurm-keep-successful-logs",  # keep .snakemake/slurm_logs for the assertions
        *([] if sacct else ["--slurm-status-command", "squeue"]),
        *TARGETS,
    ]


# Started in the background when the suite is collected (tests/conftest.py): the run mostly waits
# for SLURM, so the workers run other tests meanwhile.
SHARED["slurm_run"] = SharedRun(
    "slurm",
    _slurm_command,
    prepare=lambda base: (base / "slurm-overlay.yaml").write_text(OVERLAY),
    env=_slurm_env,
    when=lambda: _cluster_problem() is None,
)


@pytest.fixture(scope="module")
def slurm_run(cluster):
    proc, seconds = SHARED["slurm_run"].result()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed:\n{log}"
    # "Job 3 has been submitted with SLURM jobid 17 (log: .../slurm_logs/rule_train_dense/...)."
    submitted = {}  # SLURM job id -> rule or group name
    for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: ([^\s)]+)\)", log):
        # rule_<rule>/<wildcards>/<id>.log, or group_<group id>_<its rules>/<id>.log
        kind, name = re.search(r"/(rule|group)_(\w+)/", m[2]).groups()
        submitted[int(m[1])] = name if kind == "rule" else name.split("_")[0]
    out = Path(proc.args[proc.args.index("--directory") + 1])
    return {"dir": out, "log": log, "submitted": submitted, "seconds": seconds, "args": proc.args}


def _accounting(job_ids) -> dict[int, dict[str, str]]:
    fields = ["JobID", "State", "ReqTRES", "Account", "Partition", "Timelimit", "Comment"]
    proc = _run(
        "sacct", "-X", "-n", "-P", "-j", ",".join(map(str, job_ids)), "-o", ",".join(fields)
    )
    assert proc.returncode == 0, proc.stderr
    rows = [
        dict(zip(fields, line.split("|"), strict=True)) for line in proc.stdout.splitlines() if line
    ]
    return {int(r["JobID"]): r for r in rows}


def _scontrol(job_id) -> dict[str, str]:
    proc = _run("scontrol", "show", "job", str(job_id))
    assert proc.returncode == 0, proc.stderr
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def test_every_job_went_through_sbatch(slurm_run):
    by_name = sorted(slurm_run["submitted"].values())
    # Training jobs each on their own; short CPU jobs bundled into the profile's two groups.
    assert by_name == sorted(
        [
            "prepare_data",
            "train_dense",
            "train_imp_level",
            "train_imp_level",
            "summaries",
            "telemetry",
        ]
    ), slurm_run["log"]
    logs = slurm_run["dir"] / ".snakemake" / "slurm_logs"
    kept = {int(p.stem) for p in logs.rglob("*.log")}
    assert set(slurm_run["submitted"]) <= kept, (sorted(kept), slurm_run["submitted"])
    # Nothing ran locally: no "localrule" job apart from the target-only rule.
    assert not re.search(r"localrule (?!all\b)", slurm_run["log"]), slurm_run["log"]


def test_accounting_shows_the_jobs_with_gpus_only_for_training(slurm_run, cluster):
    submitted = slurm_run["submitted"]
    if cluster["sacct"]:
        acct = _accounting(submitted)
        assert set(acct) == set(submitted), (acct, submitted)
        for job_id, name in submitted.items():
            row = acct[job_id]
            assert row["State"] == "COMPLETED", row
            assert (row["Account"], row["Partition"]) == (ACCOUNT, PARTITION), row
            assert ("gres/gpu=1" in row["ReqTRES"]) == (name in TRAINING), (name, row)
            assert name in row["Comment"], row  # the plugin's comment: rule_<name>_wildcards_...
        # Grouped jobs run one after another in their allocation, so their time limit is the sum
        # of the members' (10 min each): summarise + plot_figure1; telemetry_run + summary + plot_figure3.
        limits = {name: acct[j]["Timelimit"] for j, name in submitted.items()}
        assert limits["summaries"] == "00:20:00" and limits["telemetry"] == "00:30:00", limits
    else:  # no accounting database: slurmctld still remembers finished jobs for MinJobAge
        for job_id, name in submitted.items():
            job = _scontrol(job_id)
            assert job["JobState"] == "COMPLETED", job
            assert ("gpu" in job.get("TresPerJob", "")) == (name in TRAINING), (name, job)


def test_outputs_are_complete(slurm_run):
    res = slurm_run["dir"] / "results"
    dense = res / "resnet8_w4" / "seed1" / "dense"
    assert {p.name for p in (dense / "checkpoints").iterdir()} == {
        "iter0.pt",
        "iter4.pt",
        "iter8.pt",
    }
    for k in (0, 4):
        run = res / "resnet8_w4" / "seed1" / "imp" / f"rewind{k}" / "level1"
        assert {"mask.pt", "final.pt", "metrics.h5"} <= {p.name for p in run.iterdir()}
        with h5py.File(run / "metrics.h5") as f:
            assert f.attrs["weights_remaining_fraction"] == pytest.approx(0.8, abs=2e-3)
            assert f.attrs["init"].endswith(f"dense/checkpoints/iter{k}.pt")
            # It ran on the CPUs SLURM gave it (EARLYPHASE_SLURM_TRAIN_THREADS=1)
            assert f.attrs["threads"] == 1
    with h5py.File(res / "resnet8_w4" / "summary" / "imp.h5") as f:
        assert set(f["series"]) == {"dense", "rewind0", "rewind4"}
        assert f["series/rewind4/accuracy"].shape == (1, 1)  # levels x seeds
    with h5py.File(res / "resnet8_w4" / "summary" / "telemetry.h5") as f:
        assert f["accuracy/seeds"].shape[0] == 1
    for fig in ("figure1", "figure3"):
        assert (res / "figures" / fig / "resnet8_w4.png").stat().st_size > 1000
    print(f"SLURM slice: {len(slurm_run['submitted'])} sbatch jobs in {slurm_run['seconds']:.0f} s")


def test_status_of_the_slurm_run(slurm_run, capsys):
    """tools.status on the run the SLURM executor made: every planned job done, none failed."""
    from pipeline_scripts.tools import cost, status

    args = slurm_run["args"]
    files = args[args.index("--configfile") + 1 : args.index("--configfile") + 4]
    plan_args = [*TARGETS, "--configfile", *files, "--directory", str(slurm_run["dir"])]
    assert cost.main([*plan_args, "--save-plan"]) == 0
    st = status.read(slurm_run["dir"])
    total = {k: sum(r[k] for r in st.rows.values()) for k in ("jobs", "done", "failed", "running")}
    assert total["jobs"] >= 8 and total["done"] == total["jobs"], total
    assert total["failed"] == total["running"] == 0 and not st.lock
    assert "every planned job is done" in status.report(st)
