"""Incremental re-runs of the smoke preset, end to end (issue #8, item 5).

A changed perturbation setting and a new seed each schedule exactly the jobs they affect and
everything downstream of those (computed here from the full job graph), and nothing else. A
deleted intermediate file is made again only when asked for (Snakemake 9 re-creates one only for
a reader that has to run), and then only what reads a changed file follows. A run SIGKILLed
several times (Snakemake and its jobs) resumes without recomputing any job Snakemake had recorded
as finished and ends bit-identical to an undisturbed run.

The no-op re-run, the plotting-code edit and new rewind points / levels are in test_workflow.py.
The undisturbed run is the session's ``smoke_session`` (conftest.py); tests that change files
work on a copy of it.
"""

import base64
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_workflow import ROOT, SNAKEMAKE, job_counts, smk

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
@pytest.mark.slow
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
    assert counts["summarise"] == 1 and counts["figure_perturb"] == 5, counts
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
@pytest.mark.slow
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
    # one seed of the smoke preset: 2 rewind chains + 4 pre-trained chains of 2 levels, 4 variants,
    # 4 pre-training tasks, 3 sparse kinds (pretext) and 5 sparse trainings (Figure 10)
    assert {r: n for r, n in counts.items() if r in TRAINING} == {
        "train_dense": 1,
        "train_imp_level": (2 + 4) * 2,
        "train_perturbed": 4,
        "pretrain": 4,
        "train_from_pretrained": 4,
        "sparse_pretext": 3,
        "sparse_train": 5,
        "train_stability_copy": 2 * 2,  # (dense + level-2 sub-network) x 2 copies at k = 4
    }, counts
    assert counts["telemetry_run"] == 1 and "prepare_data" not in counts, counts


# ---- 3. a deleted intermediate file -------------------------------------------------------------
@pytest.mark.slow
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
def _persisted(root: Path) -> dict[str, Path]:
    """Snakemake's file-backed records under .snakemake/<root>: one file per output path, named by
    the path's urlsafe base64 (split into '@'-prefixed directories when too long for a name)."""
    found = {}
    for p in root.rglob("*") if root.is_dir() else ():
        if p.is_file():
            b64 = "".join(part.removeprefix("@") for part in p.relative_to(root).parts)
            try:
                found[base64.urlsafe_b64decode(b64).decode()] = p
            except (ValueError, UnicodeDecodeError):
                pass  # not a record (e.g. incomplete/migration_underway)
    return found


def incomplete_outputs(out: Path) -> set[str]:
    """Outputs of jobs Snakemake started and has not recorded as finished."""
    return set(_persisted(out / ".snakemake" / "incomplete"))


def finished_outputs(out: Path) -> dict[str, int]:
    """Outputs Snakemake has recorded as finished (a metadata record, no incomplete mark) and
    their modification times."""
    pending = incomplete_outputs(out)
    done = {}
    for path, record in _persisted(out / ".snakemake" / "metadata").items():
        try:
            meta = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if path not in pending and meta.get("incomplete") is False and (out / path).is_file():
            done[path] = (out / path).stat().st_mtime_ns
    return done


def training_running(out: Path) -> bool:
    return any(p.endswith(".pt") for p in incomplete_outputs(out))  # only training writes .pt


def _group_alive(pgid: int) -> list[int]:
    """Processes of a process group that are neither zombies nor dead."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


VOLATILE = re.compile(
    r"seconds|per_second|_utc$"
)  # timings and timestamps: differ between any two runs


def _plain(value):
    """A value in a form that compares bit for bit."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        return (
            "tensor",
            str(value.dtype),
            tuple(value.shape),
            t.view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, np.ndarray | np.generic):
        value = np.asarray(value)
        if value.dtype == object:
            return ("object", value.shape, value.tolist())
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def result_content(path: Path):
    """Everything a result file records except timings: HDF5 datasets and attributes, checkpoint
    and mask contents, text. Figures are not compared (PDFs carry a creation date)."""
    if path.suffix == ".h5":
        items = {}
        with h5py.File(path) as f:

            def visit(name, obj):
                for key, value in obj.attrs.items():
                    if not VOLATILE.search(key):
                        items[f"{name}@{key}"] = _plain(value)
                if isinstance(obj, h5py.Dataset) and not VOLATILE.search(name):
                    items[name] = _plain(obj[()])

            visit("/", f)
            f.visititems(visit)
        return items
    if path.suffix == ".pt":
        return _plain(torch.load(path, map_location="cpu", weights_only=True))
    if path.suffix in (".txt", ".tsv"):
        return path.read_text()
    return None


@dataclass
class Kill:
    after_seconds: float  # since that (re)start
    training_running: bool
    finished: dict  # outputs recorded as finished at the kill -> mtime
    partial: dict  # outputs on disk whose job had started and not finished -> mtime


N_KILLS = 3
# A third of the smoke DAG (data, dense runs, IMP chains rewound to 0 and 4, perturbation branches,
# their summaries and figures): every kind of job a kill can hit, at a third of the CI time.
KILL_TARGETS = ("results/figures/figure1/resnet8_w4.png", "results/figures/figure4/resnet8_w4.png")


@pytest.mark.slow
def test_killed_run_resumes_without_losing_finished_jobs(
    smoke_session, smoke_data_config, tmp_path
):
    out = tmp_path / "killed"
    cmd = [*SNAKEMAKE, *KILL_TARGETS, *SMOKE, "--directory", str(out), *smoke_data_config]
    rng = random.Random(85)
    kills: list[Kill] = []
    refusals = 0  # restarts that stopped at a killed run's stale lock
    logs = []

    def launch():
        logs.append(tmp_path / f"attempt{len(logs)}.log")
        with open(logs[-1], "w") as log:
            return subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    proc = launch()
    try:
        while True:
            started = time.monotonic()
            # kill a random fraction of an undisturbed run's time after the (re)start, once a
            # training job is running, plus up to a second (mid-job, mid-write, between jobs)
            delay = rng.uniform(0.03, 0.08) * smoke_session.seconds
            kill_at = None
            while proc.poll() is None and len(kills) < N_KILLS:
                now = time.monotonic()
                if kill_at is None and now - started >= delay and training_running(out):
                    kill_at = now + rng.uniform(0.0, 1.0)
                if kill_at is not None and now >= kill_at:
                    running = training_running(out)
                    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its jobs
                    proc.wait()
                    deadline = time.monotonic() + 30
                    while _group_alive(proc.pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert not _group_alive(proc.pid), "a job survived SIGKILL of its group"
                    partial = {
                        p: (out / p).stat().st_mtime_ns
                        for p in incomplete_outputs(out)
                        if (out / p).is_file()
                    }
                    kills.append(Kill(now - started, running, finished_outputs(out), partial))
                    break
                time.sleep(0.05)
            else:
                if len(kills) == N_KILLS and proc.poll() is None:
                    proc.wait(timeout=1800)  # the last restart runs to the end
            if proc.returncode == -signal.SIGKILL:
                # A user's first reaction: run the same command again. Snakemake 9 refuses (the
                # killed run's lock is still there) and says to remove it with --unlock, which a
                # user then does first after any later kill (safe: nothing else runs here).
                if refusals:
                    smk(*SMOKE, "--directory", str(out), "--unlock")
                proc = launch()
                continue
            text = logs[-1].read_text()
            if proc.returncode != 0 and "Directory cannot be locked" in text:
                refusals += 1
                smk(*SMOKE, "--directory", str(out), "--unlock")
                proc = launch()
                continue
            assert proc.returncode == 0, text
            break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert len(kills) == N_KILLS, f"the run ended after {len(kills)} kills"
    assert any(k.training_running for k in kills), kills
    assert refusals == 1  # the first restart stopped at the killed run's stale lock
    assert "Nothing to be done" in smk(*KILL_TARGETS, *SMOKE, "--directory", str(out), "-n").stdout
    assert not incomplete_outputs(out)
    assert not [p for p in (out / "resume").rglob("*") if p.is_file()]

    # No finished job was run again; every partial output was recomputed.
    final = mtimes(out)
    for n, kill in enumerate(kills):
        assert kill.finished, f"kill {n}: no output recorded as finished (metadata not found?)"
        redone = sorted(p for p, t in kill.finished.items() if final.get(p) != t)
        assert not redone, (
            f"kill {n} ({kill.after_seconds:.0f} s): finished outputs redone: {redone}"
        )
        kept = sorted(p for p, t in kill.partial.items() if final.get(p) == t)
        assert not kept, f"kill {n}: outputs of unfinished jobs kept: {kept}"
    # The undisturbed run's files (of these targets), with bit-identical contents.
    ref = smoke_session.out
    assert all(t in final for t in KILL_TARGETS)
    assert set(final) <= set(mtimes(ref)), sorted(set(final) - set(mtimes(ref)))
    assert sum(p.endswith("final.pt") for p in final) >= 2 + 8 + 8  # dense, IMP, perturbed
    differ = [p for p in sorted(final) if result_content(out / p) != result_content(ref / p)]
    assert not differ, f"results differ from the undisturbed run: {differ}"
