"""End-to-end: the smoke preset through Snakemake, lint, planning of the paper's DAG, config errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from pipeline_scripts.earlyphase import prune

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(*args, cwd=ROOT, check=True):
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# smoke_run: one undisturbed smoke run for the whole session (tests/workflow/conftest.py).


def test_smoke_preset_runs_the_whole_dag(smoke_run):
    out, _ = smoke_run
    res = out / "results"
    assert (res / "data" / "cifar10.h5").is_file()
    for seed in (1, 2):
        dense = res / "resnet8_w4" / f"seed{seed}" / "dense"
        assert {p.name for p in (dense / "checkpoints").iterdir()} == {
            "iter0.pt",
            "iter4.pt",
            "iter8.pt",
        }
        for k in (0, 4):
            for level in (1, 2):
                run = res / "resnet8_w4" / f"seed{seed}" / "imp" / f"rewind{k}" / f"level{level}"
                assert {"mask.pt", "final.pt", "metrics.h5"} <= {p.name for p in run.iterdir()}
                with h5py.File(run / "metrics.h5") as f:
                    assert f.attrs["weights_remaining_fraction"] == pytest.approx(
                        0.8**level, abs=2e-3
                    )
                    assert f.attrs["rewind_iteration"] == k
                    # rewound as OpenLTH does: steps k..T of the dense run's schedule (T = 16)
                    assert f.attrs["start_iteration"] == k and f["eval/iteration"][0] == k
                    assert f.attrs["total_iterations"] == 16
    with h5py.File(res / "resnet8_w4" / "summary" / "imp.h5") as f:
        assert set(f["series"]) == {"dense", "rewind0", "rewind4"}
        assert f["series/rewind4/accuracy"].shape == (2, 2)  # levels x seeds
    for ext in ("pdf", "png"):
        assert (res / "figures" / "figure1" / f"resnet8_w4.{ext}").stat().st_size > 1000
        assert (res / "figures" / "figure3" / f"resnet8_w4.{ext}").stat().st_size > 1000
        assert (res / "figures" / f"figureA3.{ext}").stat().st_size > 1000
    with h5py.File(res / "resnet8_w4" / "summary" / "telemetry.h5") as f:
        assert list(f["iteration"][:11]) == list(range(11))  # every one of the first ten steps
        assert f["accuracy/seeds"].shape[0] == 2
        assert f["cos_final/mean"][-1] > 0.9999  # the last snapshot is the final state (float16)
    assert "grad_min_iteration" in (res / "resnet8_w4" / "summary" / "timeline.txt").read_text()
    for fig in ("figure4", "figure5", "figure6", "figure7", "figure8", "figure9", "figure10"):
        assert (res / "figures" / fig / "resnet8_w4.png").stat().st_size > 1000, fig
    # Perturbation branches record their effective change (Figure 8's x-axis)
    branch = res / "resnet8_w4" / "seed1" / "perturb" / "rewind4" / "level2" / "noise_1"
    with h5py.File(branch / "metrics.h5") as f:
        assert f.attrs["effective_std"] > 0 and f.attrs["perturbation_family"] == "noise"
        assert f.attrs["start_iteration"] == 4
    # Pre-trained chains: level 0 trains the unpruned network from the pre-trained state
    chain = res / "resnet8_w4" / "seed1" / "imp" / "pretrain" / "blur_rotation" / "e1"
    assert (chain / "level0" / "final.pt").is_file() and (chain / "level2" / "mask.pt").is_file()
    with h5py.File(chain / "level1" / "metrics.h5") as f:
        assert f.attrs["init"].endswith("pretrain/blur_rotation/e1/state.pt")
        assert f.attrs["start_iteration"] == 8  # 1 epoch of pre-training = the first 8 steps
    sparse = res / "resnet8_w4" / "seed1" / "sparse" / "rewind4" / "level2"
    for kind, start, first in (("random", "scratch", 4), ("random", "pretrained", 4 + 8)):
        with h5py.File(sparse / kind / start / "metrics.h5") as f:
            assert f.attrs["start_iteration"] == first, (kind, start)
    with h5py.File(res / "resnet8_w4" / "summary" / "sparse_pretrain.h5") as f:
        assert {"imp_scratch", "imp_pretrained", "reinit_pretrained", "random_scratch"} <= set(
            f["series"]
        )
    _assert_beyond_the_paper(res)
    assert not (out / "resume").exists() or not any((out / "resume").rglob("*.pt"))


def _assert_beyond_the_paper(res):
    """Instability analysis and sharpness on the smoke DAG."""
    net = res / "resnet8_w4"
    for seed in (1, 2):
        for sub in ("dense", "level2"):
            base = net / f"seed{seed}" / "stability" / sub / "k4"
            acc = []
            for replica in ("copy1", "copy2"):
                with h5py.File(base / replica / "metrics.h5") as f:
                    assert f.attrs["start_iteration"] == 4 and f.attrs["data_stream"] == replica
                    assert f.attrs["experiment"] == "stability"
                    want = 1.0 if sub == "dense" else 0.64
                    assert f.attrs["weights_remaining_fraction"] == pytest.approx(want, abs=2e-3)
                    acc.append(f.attrs["final_test_accuracy"])
            with h5py.File(base / "interpolation.h5") as f:
                assert len(f["alpha"]) == 5 and f.attrs["batchnorm"] == "interpolate"
                err = f["test_error"][()]
                ends = f["test_accuracy"][()][[0, -1]]
                assert list(ends) == acc  # endpoints: the copies themselves, bit for bit
                assert f.attrs["barrier"] == pytest.approx(err.max() - (err[0] + err[-1]) / 2)
        with h5py.File(net / f"seed{seed}" / "dense" / "hessian.h5") as f:
            assert list(f["iteration"]) == [0, 4, 8]
            assert (f["top_eigenvalue"][()] > 0).all() and (f["hvps"][()] == 5).all()
    with h5py.File(net / "summary" / "stability.h5") as f:
        assert set(f) == {"dense", "level2"} and list(f["dense/n"]) == [2]
    for fig in ("instability", "sharpness"):
        assert (res / "figures" / fig / "resnet8_w4.png").stat().st_size > 1000, fig
    rows = (res / "claims" / "claims.tsv").read_text()
    for cid in (
        "beyond_lmc_dense_stable",
        "beyond_lmc_stable_iff_matching",
        "beyond_hessian_grows",
    ):
        assert cid in rows


def test_rerun_is_a_no_op_and_plot_code_change_redraws_only_figures(smoke_run):
    out, _ = smoke_run
    assert (
        "Nothing to be done"
        in smk("--profile", "profiles/smoke", "--directory", str(out), "-n").stdout
    )
    # Snakemake >= 9.18 compares input checksums, so an edit (not a touch) is what triggers.
    plots = ROOT / "pipeline_scripts" / "earlyphase" / "plots.py"
    original = plots.read_text()
    try:
        plots.write_text(original + "\n# an edit to the plotting code\n")
        counts = job_counts(
            smk("--profile", "profiles/smoke", "--directory", str(out), "-n").stdout
        )
    finally:
        plots.write_text(original)
    figures = {
        "plot_figure1",
        "plot_figure3",
        "plot_figure_a3",
        "plot_figure_perturb",
        "plot_figure9",
        "plot_figure10",
        "plot_instability",
        "plot_sharpness",
    }
    assert set(counts) - {"total", "all"} == figures, counts


def test_new_rewind_point_or_level_adds_only_new_jobs(smoke_run, tmp_path):
    out, _ = smoke_run
    overlay = tmp_path / "more.yaml"
    base = ["--profile", "profiles/smoke", "--directory", str(out), "-n"]
    # k = 8 is already kept by the dense runs (dense.checkpoint_iterations), so only IMP jobs
    overlay.write_text("imp: {rewind_iterations: [0, 4, 8], levels: 2}\n")
    counts = job_counts(
        smk(*base, "--configfile", "config.yaml", "config/smoke.yaml", str(overlay)).stdout
    )
    assert counts["train_imp_level"] == 2 * 2  # 2 seeds x 2 levels of the new chain
    assert "train_dense" not in counts and "train_perturbed" not in counts
    # one more level: one new job per existing chain (2 seeds x (2 rewind + 2 pre-trained))
    overlay.write_text("imp: {levels: 3}\n")
    counts = job_counts(
        smk(*base, "--configfile", "config.yaml", "config/smoke.yaml", str(overlay)).stdout
    )
    assert counts["train_imp_level"] == 2 * (2 + 2)
    assert "train_dense" not in counts and "pretrain" not in counts


def test_default_config_plans_the_paper_dag(paper_job_counts):
    counts = paper_job_counts  # `snakemake -n` on config.yaml, once for the suite (conftest.py)
    runs = 5 * 5  # networks x seeds
    assert counts["train_dense"] == runs
    pretrained_chains = 4 * 5  # tasks x durations
    assert (
        counts["train_imp_level"] == runs * (6 + pretrained_chains) * 14
    )  # rewind points x levels
    assert counts["train_perturbed"] == runs * 2 * 7 * 16  # k x levels x variants
    assert counts["pretrain"] == counts["train_from_pretrained"] == runs * pretrained_chains
    assert counts["sparse_pretext"] == runs * 7 * 3 and counts["sparse_train"] == runs * 7 * 5
    assert counts["plot_figure1"] == counts["plot_figure9"] == counts["plot_figure10"] == 5
    assert counts["plot_figure_perturb"] == 5 * 5  # Figures 4-8 per network
    # beyond the paper: 2 copies x (dense + level-8 sub-network) x 6 rewind points; one Hessian
    # job per dense run over its 9 checkpoints
    assert counts["train_stability_copy"] == runs * 6 * 2 * 2
    assert counts["interpolate"] == runs * 6 * 2
    assert counts["hessian"] == runs
    assert counts["plot_instability"] == counts["plot_sharpness"] == 5


def test_checked_in_rule_graph_is_current():
    """docs/rulegraph.dot (and .svg, drawn from it by `make rulegraph`) shows today's rules."""
    proc = smk("--profile", "profiles/smoke", "--rulegraph", "--quiet", "all")
    current = sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())
    checked_in = (ROOT / "docs" / "rulegraph.dot").read_text().splitlines()
    assert current == sorted(line.strip() for line in checked_in if line.strip()), (
        "the rule graph changed: run `make rulegraph` and commit docs/rulegraph.*"
    )


def test_runs_per_job_trains_seeds_together_with_the_same_outputs(
    smoke_run, smoke_data_config, tmp_path
):
    """runtime.runs_per_job = 2 for the network: one job per seed pair, same per-seed files, the
    config's threads and resources declared on the grouped rules, results equal to separate jobs
    up to float tolerance."""
    out, _ = smoke_run
    overlay = tmp_path / "grouped.yaml"
    overlay.write_text("runtime: {runs_per_job: {resnet8_w4: 2, default: 1}}\n")
    work = tmp_path / "grouped"
    args = [
        "--profile",
        "profiles/smoke",
        "--directory",
        str(work),
        "--configfile",
        "config.yaml",
        "config/smoke.yaml",
        str(overlay),
        *smoke_data_config,  # the session run's data (a fresh directory has none recorded)
    ]
    counts = job_counts(smk(*args, "-n").stdout)
    assert counts["train_imp_level_seeds1_2"] == (2 + 2) * 2 and "train_imp_level" not in counts
    assert counts["train_perturbed_seeds1_2"] == 4 and counts["train_dense"] == 2
    level = "imp/rewind4/level1"
    targets = [f"results/resnet8_w4/seed{s}/{level}/metrics.h5" for s in (1, 2)]
    smk(*targets, *args)  # targets first: --configfile takes every word after it
    log = (work / "logs/resnet8_w4/seeds1_2" / level / "train.log").read_text()
    assert "training 2 runs together (grouped)" in log and "1 thread(s)" in log  # runtime.threads
    for seed in (1, 2):
        alone = out / f"results/resnet8_w4/seed{seed}/{level}"
        group = work / f"results/resnet8_w4/seed{seed}/{level}"
        ma, mg = prune.load(alone / "mask.pt"), prune.load(group / "mask.pt")
        assert ma.keys() == mg.keys() and all(torch.equal(ma[k], mg[k]) for k in ma)
        with h5py.File(alone / "metrics.h5") as a, h5py.File(group / "metrics.h5") as g:
            assert g.attrs["runs_per_job"] == 2 and g.attrs["seed"] == seed
            assert g["eval/accuracy"][-1] == pytest.approx(a["eval/accuracy"][-1], abs=0.02)


def test_planning_benchmark_reports_jobs_time_and_memory(tmp_path):
    """The planning benchmark runs (it asserts nothing about speed) and counts the DAG."""
    out = tmp_path / "plan.json"
    cmd = [
        sys.executable,
        "-m",
        "pipeline_scripts.tools.planning",
        "--configfile",
        "config.yaml",
        "config/smoke.yaml",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    planned = job_counts(
        smk(
            "-n",
            "--quiet",
            "rules",
            "--profile",
            "profiles/smoke",
            "--directory",
            str(tmp_path / "d"),
        ).stdout
    )
    assert result["jobs"] == planned["total"] > 50
    assert result["dry_run"]["wall_s"] > 0 and result["dry_run"]["peak_rss_mb"] > 50
