"""Incremental re-runs of the smoke preset, end to end.

A changed perturbation setting and a new seed each schedule exactly the jobs they affect and
everything downstream of those (computed here from the full job graph), and nothing else. A
deleted intermediate file is made again only when asked for (Snakemake 9 re-creates one only for
a reader that has to run), and then only what reads a changed file follows.

The no-op re-run, the plotting-code edit and new rewind points / levels are in test_workflow.py;
a run killed several times is in test_killed_run.py. The undisturbed run is the suite's
``smoke_session`` (conftest.py); tests that change files work on a copy of it.
"""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
from test_workflow import job_counts, smk

SMOKE = ("--profile", "profiles/smoke")
NET = "resnet8_w4"
TRAINING = {
    "train_dense",
    "train_imp_level",
    "train_perturbed",
    "pretrain",
    "train_from_pretrained",
    "sparse_pretext",
    "sparse_train",
    "train_stability_copy",
}


# ---- the job graph, as Snakemake prints it in a dry run ---------------------------------------
@dataclass(frozen=True)
class Job:
    rule: str
    input: frozenset
    output: tuple
    reason: str


def planned_jobs(stdout: str) -> list[Job]:
    """The jobs of a dry run (`-n`), parsed from its job blocks; target rules without outputs
    (`all`) are left out."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", stdout, flags=re.M)[1:]:
        head, *lines = block.splitlines()
        fields = {}
        for line in lines:
            m = re.fullmatch(r" {4}(\w+): (.*)", line)
            if not m:
                break
            fields[m[1]] = m[2]
        if "output" in fields:
            jobs.append(
                Job(
                    rule=re.match(r"(?:local)?rule (\w+):", head)[1],
                    input=frozenset(fields.get("input", "").split(", ")) - {""},
                    output=tuple(fields["output"].split(", ")),
                    reason=fields.get("reason", ""),
                )
            )
    return jobs


def downstream(graph: list[Job], roots: list[Job]) -> set[tuple]:
    """The roots and every job that (transitively) consumes one of their outputs, by outputs."""
    chosen = {j.output for j in roots}
    made = {f for j in roots for f in j.output}
    grown = True
    while grown:
        grown = False
        for j in graph:
            if j.output not in chosen and j.input & made:
                chosen.add(j.output)
                made.update(j.output)
                grown = True
    return chosen


def plan_and_graph(*args) -> tuple[list[Job], list[Job], str]:
    """(jobs a dry run schedules, every job of the DAG, the dry run's output) for these args."""
    plan = smk(*args, "-n").stdout
    graph = planned_jobs(smk(*args, "-n", "--forceall").stdout)
    assert len(graph) > 80, "could not parse the dry run's job list"
    return planned_jobs(plan), graph, plan


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run, modification times included (to the nanosecond: copystat), so
    Snakemake sees the same state."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for p in (out / "results").rglob("*")
        if p.is_file()
    }


def outputs(jobs) -> set[str]:
    return {f for j in jobs for f in j.output}


# ---- 1. a perturbation setting ------------------------------------------------------------------
def test_changed_perturbation_setting_reruns_only_that_branch(smoke_session, tmp_path):
    out = copy_run(smoke_session.out, tmp_path / "run")
    overlay = tmp_path / "noise.yaml"
    overlay.write_text("perturb:\n  variants:\n    noise_1: {kind: noise, scale: 1.25}\n")
    args = (
        *SMOKE,
        "--directory",
        str(out),
        "--configfile",
        "config.yaml",
        "config/smoke.yaml",
        str(overlay),
    )
    plan, graph, text = plan_and_graph(*args)
    roots = [j for j in graph if j.rule == "train_perturbed" and "/noise_1/" in j.output[0]]
    assert len(roots) == 2  # seeds x rewind points x levels of the smoke preset: 2 x 1 x 1
    assert {j.output for j in plan} == downstream(graph, roots)
    counts = job_counts(text)
    assert {r: n for r, n in counts.items() if r in TRAINING} == {"train_perturbed": 2}, counts
    assert counts["summarise"] == 1 and counts["plot_figure_perturb"] == 5, counts
    assert {f for j in plan if j.rule == "summarise" for f in j.output} == {
        f"results/{NET}/summary/perturb_rewind4.h5"
    }
    for j in plan:
        if j.rule == "train_perturbed":  # Snakemake's params trigger: the job dict changed
            assert "/noise_1/" in j.output[0] and "Params have changed" in j.reason, j

    before = mtimes(out)
    smk(*args)
    after = mtimes(out)
    assert set(after) == set(before)
    assert {f for f in after if after[f] != before[f]} == outputs(plan)  # the rest untouched
    for seed in (1, 2):
        branch = out / "results" / NET / f"seed{seed}" / "perturb" / "rewind4" / "level2"
        ref = smoke_session.out / branch.relative_to(out)
        with (
            h5py.File(branch / "noise_1" / "metrics.h5") as f,
            h5py.File(ref / "noise_1" / "metrics.h5") as g,
        ):
            assert json.loads(f.attrs["perturbation"]) == {"kind": "noise", "scale": 1.25}
            assert f.attrs["effective_std"] > g.attrs["effective_std"]  # more noise


# ---- 2. a new seed ------------------------------------------------------------------------------
def test_new_seed_adds_only_its_jobs(smoke_session, tmp_path):
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text("seeds: [1, 2, 3]\n")
    # a dry run only: the shared run is not changed
    plan, graph, text = plan_and_graph(
        *SMOKE,
        "--directory",
        str(smoke_session.out),
        "--configfile",
        "config.yaml",
        "config/smoke.yaml",
        str(overlay),
    )
    roots = [j for j in graph if any("/seed3/" in f for f in j.output)]
    assert {j.output for j in plan} == downstream(graph, roots)
    per_seed = [f for j in plan for f in j.output if re.search(r"/seed\d+/", f)]
    assert per_seed and all("/seed3/" in f for f in per_seed), per_seed
    counts = job_counts(text)
    # one seed of the smoke preset: 2 rewind chains + 2 pre-trained chains of 2 levels, 4 variants,
    # 2 pre-training tasks, 3 sparse kinds (pretext) and 5 sparse trainings (Figure 10)
    assert {r: n for r, n in counts.items() if r in TRAINING} == {
        "train_dense": 1,
        "train_imp_level": (2 + 2) * 2,
        "train_perturbed": 4,
        "pretrain": 2,
        "train_from_pretrained": 2,
        "sparse_pretext": 3,
        "sparse_train": 5,
        "train_stability_copy": 2 * 2,  # (dense + level-2 sub-network) x 2 copies at k = 4
    }, counts
    assert counts["telemetry_run"] == 1 and "prepare_data" not in counts, counts


# ---- 3. a deleted intermediate file -------------------------------------------------------------
def test_deleted_intermediate_recomputes_only_what_needs_it(smoke_session, tmp_path):
    out = copy_run(smoke_session.out, tmp_path / "run")
    base = (*SMOKE, "--directory", str(out))
    level1 = f"results/{NET}/seed1/imp/rewind0/level1"
    victim = f"{level1}/mask.pt"  # read by level 2 of the chain only
    original = {f: (out / f).read_bytes() for f in (victim, f"{level1}/final.pt")}
    (out / victim).unlink()
    # Snakemake 9 makes a missing intermediate again only for a job that has to run and reads
    # it (dag.py, update_needrun): every reader is up to date, so a re-run does nothing.
    assert "Nothing to be done" in smk(*base, "-n").stdout
    # Asked for, it is made by its producer alone, which rewrites the producer's other outputs
    (job,) = planned_jobs(smk(*base, "-n", victim).stdout)
    assert job.rule == "train_imp_level" and victim in job.output, job
    assert job.reason.startswith("Missing output files"), job
    before = mtimes(out)
    smk(*base, victim)
    after = mtimes(out)
    assert set(after) == set(before) | {victim}
    assert {f for f in after if after[f] != before.get(f)} == set(job.output)
    for f, content in original.items():  # training is deterministic: the same bytes again
        assert (out / f).read_bytes() == content, f
    # Then a re-run: the reader of those byte-identical checkpoints (level 2) stays, as Snakemake
    # compares the checksums of inputs under 1 MB; the readers of the rewritten metrics file (it
    # records timings) run again, with everything downstream of them, and nothing else.
    plan, graph, text = plan_and_graph(*base)
    readers = [j for j in graph if f"{level1}/metrics.h5" in j.input]
    assert readers and {j.rule for j in readers} == {"summarise"}, readers
    assert {j.output for j in plan} == downstream(graph, readers)
    assert not [j for j in plan if j.rule in TRAINING], job_counts(text)


# ---- 4. SIGKILL, several times ------------------------------------------------------------------
