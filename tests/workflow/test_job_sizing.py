"""Job sizing: runs_per_job per network, and every GPU job's threads and
resources declared by the workflow itself -- the same function for a one-run job and an N-run
job, site facts from the environment -- through public Snakemake API only."""

import os
import re
import subprocess

from test_workflow import ROOT, SNAKEMAKE

OVERLAY = """
runtime:
  runs_per_job: {resnet8_w4: 2, default: 1}
  minutes_per_run: {resnet8_w4: 10, default: 240}
  packing_speedup: {resnet8_w4: 1.6}
  threads: 3
  mem_mb_per_thread: 1000
"""


def _plan(tmp_path, env_extra):
    overlay = tmp_path / "sizing.yaml"
    overlay.write_text(OVERLAY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYPHASE_SLURM_")}
    env.update(env_extra)
    cmd = [*SNAKEMAKE, "-n", "--profile", "profiles/smoke", "--directory", str(tmp_path / "w")]
    cmd += ["--configfile", "config.yaml", "config/smoke.yaml", str(overlay)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {}  # rule -> resources of its first job
    for block in re.split(r"\n(?=rule \w+:|localrule \w+:)", proc.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if m and res and m[1] not in jobs:
            jobs[m[1]] = dict(kv.split("=", 1) for kv in res[1].split(", "))
    return jobs


def test_gpu_jobs_are_sized_by_one_function_for_one_and_n_runs(tmp_path):
    jobs = _plan(tmp_path, {"EARLYPHASE_SLURM_GPU_PARTITION": "gpuq"})
    # one 160-epoch run = 10 min; dense x1.2 + 5; a level x runs / packing speed-up + 5;
    # Hessian x0.1 + 10
    assert jobs["train_dense"]["runtime"] == str(int(10 * 1.2 + 5))
    assert jobs["train_imp_level_seeds1_2"]["runtime"] == str(int(10 * 2 / 1.6 + 5))
    assert jobs["hessian"]["runtime"] == str(int(10 * 0.1 + 10))
    for rule in ("train_dense", "train_imp_level_seeds1_2", "train_stability_copy", "hessian"):
        assert jobs[rule]["gpu"] == "1" and jobs[rule]["slurm_partition"] == "gpuq", rule
        assert jobs[rule]["mem_mb"] == "3000", rule  # 3 threads x 1000 MB
    assert "gpu" not in jobs["prepare_data"] and "gpu" not in jobs["summarise"]
    assert "train_imp_level" not in jobs  # the network's seeds are all grouped


def test_gres_replaces_the_gpu_count_and_threads_come_from_the_environment(tmp_path):
    jobs = _plan(
        tmp_path,
        {"EARLYPHASE_SLURM_GPU_GRES": "gpu:a100:1", "EARLYPHASE_SLURM_TRAIN_THREADS": "2"},
    )
    assert jobs["train_dense"]["gres"] == "gpu:a100:1" and "gpu" not in jobs["train_dense"]
    assert jobs["train_dense"]["mem_mb"] == "2000"


def test_no_writes_into_snakemakes_private_state_and_a_minimum_version():
    sources = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    for path in sources:
        assert "_parsed_overwrite" not in path.read_text(), path
    assert re.search(r'^min_version\("9\.\d+"\)', (ROOT / "Snakefile").read_text(), re.M)


def test_perturbation_variants_train_together_with_the_same_outputs(
    smoke_run, smoke_data_config, tmp_path
):
    """runtime.variants_per_job = 2: the variants of one (k, level) are one job of two runs (each
    its own perturbation, files and metrics), equal to the one-variant jobs to float tolerance."""
    import h5py
    import pytest
    from test_workflow import smk

    out, _ = smoke_run
    overlay = tmp_path / "variants.yaml"
    overlay.write_text("runtime: {variants_per_job: 2}\n")
    work = tmp_path / "grouped"
    args = ["--profile", "profiles/smoke", "--directory", str(work)]
    args += ["--configfile", "config.yaml", "config/smoke.yaml", str(overlay), *smoke_data_config]
    branch = "results/resnet8_w4/seed1/perturb/rewind4/level2"
    variants = ["signs_k_mags_0", "shuffle_layer"]  # the first chunk of the smoke run's variants
    smk(*[f"{branch}/{v}/metrics.h5" for v in variants], *args)
    logs = work / "logs/resnet8_w4/seed1/perturb/rewind4/level2"
    log = (logs / "variants_signs_k_mags_0..shuffle_layer" / "train.log").read_text()
    assert "training 2 runs together (grouped)" in log
    for v in variants:
        alone, grouped = out / branch / v / "metrics.h5", work / branch / v / "metrics.h5"
        with h5py.File(alone) as a, h5py.File(grouped) as g:
            assert g.attrs["series"] == v and g.attrs["runs_per_job"] == 2
            assert g.attrs["perturbation"] == a.attrs["perturbation"]
            assert g.attrs["effective_std"] == a.attrs["effective_std"]  # the same perturbation
            assert g["eval/accuracy"][-1] == pytest.approx(a["eval/accuracy"][-1], abs=0.02)
