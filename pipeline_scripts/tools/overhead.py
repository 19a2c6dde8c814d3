"""Per-job overhead of a run's training jobs: where a job's wall time goes beside training.

    python -m pipeline_scripts.tools.overhead runs/<run> [--json overhead.json]

For every metrics file under ``<run>/results`` that records its job's phases (``job_phase_seconds``,
written by ``runs.JobClock``): the Snakemake process that ran the job (on SLURM it parses the
workflow before the rule runs), the Python process's imports, device set-up, data load and hash,
preparing the runs, the first training step (compilation included), the rest of training, and
-- from ``sacct``, for jobs that ran under SLURM (``slurm_job_id``) -- the job's elapsed time, so
what SLURM and Snakemake spend outside the rule shows too. ``fixed`` is everything but training:
elapsed (or the phases' sum) minus the first step and the rest of training. Prints a table and
the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import h5py

PHASES = ("snakemake", "imports", "device", "data", "prepare", "first_step", "train")


def jobs(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted((run_dir / "results").rglob("metrics.h5")):
        with h5py.File(path) as f:
            if "job_phase_seconds" not in f.attrs:
                continue
            out.append(
                {
                    "metrics": str(path.relative_to(run_dir)),
                    "phases": json.loads(f.attrs["job_phase_seconds"]),
                    "slurm_job_id": str(f.attrs.get("slurm_job_id", "")),
                }
            )
    # one job of several runs writes the same phases into each run's file: count it once
    seen, unique = set(), []
    for j in out:
        key = (j["slurm_job_id"], json.dumps(j["phases"], sort_keys=True))
        if key not in seen:
            seen.add(key)
            unique.append(j)
    return unique


def sacct_elapsed(ids: list[str]) -> dict[str, float]:
    if not ids:
        return {}
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,ElapsedRaw"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"sacct failed: {proc.stderr.strip()}")
    return {i: float(e) for i, e in (line.split("|") for line in proc.stdout.split())}


def summarise(run_dir: str | Path) -> dict:
    rows = jobs(Path(run_dir))
    if not rows:
        raise SystemExit(f"no metrics file under {run_dir}/results records its job's phases")
    elapsed = sacct_elapsed(sorted({r["slurm_job_id"] for r in rows if r["slurm_job_id"]}))
    for r in rows:
        ph = r["phases"]
        inside = sum(ph.values())
        r["elapsed"] = elapsed.get(r["slurm_job_id"])
        total = r["elapsed"] if r["elapsed"] is not None else inside
        r["outside"] = None if r["elapsed"] is None else r["elapsed"] - inside
        r["training"] = ph.get("first_step", 0.0) + ph.get("train", 0.0)
        r["fixed"] = total - r["training"]
    medians = {
        k: statistics.median(r[k] for r in rows if r.get(k) is not None)
        for k in ("elapsed", "outside", "training", "fixed")
        if any(r.get(k) is not None for r in rows)
    }
    medians |= {
        p: statistics.median(r["phases"][p] for r in rows if p in r["phases"])
        for p in PHASES
        if any(p in r["phases"] for r in rows)
    }
    return {"jobs": rows, "median": medians}


def table(result: dict) -> str:
    cols = ("elapsed", "outside", *PHASES, "fixed")
    lines = ["  ".join(f"{c:>10}" for c in cols) + "  metrics"]

    def cell(v):
        return f"{v:10.2f}" if isinstance(v, float | int) else f"{'-':>10}"

    for r in result["jobs"]:
        values = [r.get("elapsed"), r.get("outside"), *(r["phases"].get(p) for p in PHASES)]
        lines.append("  ".join(cell(v) for v in [*values, r["fixed"]]) + "  " + r["metrics"])
    m = result["median"]
    lines.append("  ".join(cell(m.get(c)) for c in cols) + "  median")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.overhead", description=__doc__
    )
    p.add_argument("run_dir")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = summarise(args.run_dir)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
