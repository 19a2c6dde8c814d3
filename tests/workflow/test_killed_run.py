"""A run SIGKILLed several times (Snakemake and its jobs, at points chosen by progress) resumes
without recomputing any job Snakemake had recorded as finished, and ends bit-identical to the
undisturbed smoke run (``smoke_session``); ``tools.status``, read while it runs, after each kill
and at the end, agrees with Snakemake's own records. A file of its own, so the test scheduler can run it
beside the other tests on the smoke run (--dist loadfile)."""

import base64
import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from test_incremental import SMOKE, mtimes
from test_run_status import smoke_plan
from test_workflow import ROOT, SNAKEMAKE, smk

from pipeline_scripts.tools import status


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


def recorded(out: Path) -> int:
    """How many outputs Snakemake has a metadata record of (cheap: a directory listing)."""
    return len(_persisted(out / ".snakemake" / "metadata"))


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
    live: status.Status  # tools.status read while Snakemake ran, just before the kill
    after: status.Status  # ... and after it


def check_status(st: status.Status, jobs: list[dict], finished: dict, marked: set[str]) -> None:
    """tools.status against Snakemake's own records: every job whose outputs Snakemake recorded
    as finished is done, every job with an incomplete mark is running, nothing failed, and each
    family's counts add up to its planned jobs."""
    rows = st.rows
    done_jobs = sum(r["done"] for r in rows.values())
    assert done_jobs >= sum(1 for j in jobs if j["outputs"] and set(j["outputs"]) <= set(finished))
    assert sum(r["running"] for r in rows.values()) == sum(
        1 for j in jobs if set(j["outputs"]) & marked
    )
    assert not st.failures and all(r["failed"] == 0 for r in rows.values())
    for family, r in rows.items():
        assert r["done"] + r["running"] + r["to run"] == r["jobs"], family


N_KILLS = 3
# A third of the smoke DAG (data, dense runs, IMP chains rewound to 0 and 4, perturbation branches,
# their summaries and figures): every kind of job a kill can hit, at a third of the CI time.
KILL_TARGETS = ("results/figures/figure1/resnet8_w4.png", "results/figures/figure4/resnet8_w4.png")


def test_killed_run_resumes_without_losing_finished_jobs(
    smoke_session, smoke_data_config, tmp_path
):
    out = tmp_path / "killed"
    cmd = [*SNAKEMAKE, *KILL_TARGETS, *SMOKE, "--directory", str(out), *smoke_data_config]
    rng = random.Random(85)
    jobs = smoke_plan(out, KILL_TARGETS, smoke_data_config)  # what tools.status compares with
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
            # kill once 1-3 more outputs are recorded as finished after the (re)start (progress,
            # not time: the machine's speed varies) and a training job is running, plus up to a
            # second (mid-job, mid-write, between jobs)
            target = recorded(out) + rng.randint(1, 3)
            kill_at = None
            while proc.poll() is None and len(kills) < N_KILLS:
                now = time.monotonic()
                if kill_at is None and recorded(out) >= target and training_running(out):
                    kill_at = now + rng.uniform(0.0, 1.0)
                if kill_at is not None and now >= kill_at:
                    running = training_running(out)
                    live = status.read(out)  # while Snakemake runs
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
                    after = status.read(out)
                    kills.append(
                        Kill(now - started, running, finished_outputs(out), partial, live, after)
                    )
                    check_status(after, jobs, kills[-1].finished, incomplete_outputs(out))
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
    # tools.status saw the run live and killed: a training job started and not finished when one
    # was running, Snakemake's stale lock after each kill; at the end, every planned job done
    for kill in kills:
        assert kill.live.seconds < 5 and kill.after.lock
        if kill.training_running:
            assert kill.after.running, kill
        assert "Snakemake: holds the directory's lock" in status.report(kill.after)
    final_status = status.read(out)
    check_status(final_status, jobs, finished_outputs(out), set())
    assert "every planned job is done" in status.report(final_status)
    assert not final_status.lock
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
