"""Planning benchmark: how long Snakemake takes to build the DAG of a config, and to find out that
there is nothing to do once every output exists.

    python -m pipeline_scripts.tools.planning                       # the paper's config (config.yaml), 3 rounds
    python -m pipeline_scripts.tools.planning --configfile config.yaml my_overlay.yaml --rounds 5 --no-op

Prints, per measurement, the median wall time, the median CPU time (user + system: steadier than
wall time on a shared machine) and the peak resident memory of the Snakemake process, plus the
number of jobs. ``--no-op`` also creates every output file of the DAG (empty files with one
modification time, in a scratch directory) and times the up-to-date check (`snakemake -n` printing
"Nothing to be done"); ``--touch`` first records Snakemake's metadata for them as a finished run
would have (slow: a few outputs a second). It is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], cwd: Path) -> dict:
    """Run cmd; its wall seconds, CPU seconds (user + system) and peak RSS (MB), via wait4."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "out": out,
    }


def measure(cmd: list[str], cwd: Path, rounds: int) -> dict:
    runs = [timed(cmd, cwd) for _ in range(rounds)]
    return {
        "wall_s": statistics.median(r["wall"] for r in runs),
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "peak_rss_mb": max(r["rss_mb"] for r in runs),
        "rounds": rounds,
        "out": runs[-1]["out"],
    }


def jobs_in(dry_run_output: str) -> int:
    m = re.search(r"^total\s+(\d+)$", dry_run_output, re.M)
    return int(m[1]) if m else 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configfile", nargs="+", help="config files (default: the Snakefile's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-op", action="store_true", help="also time the up-to-date check")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument(
        "--touch",
        action="store_true",
        help="with --no-op: also record Snakemake metadata for every output (`--touch`; a few "
        "outputs a second, hours for the paper's DAG), as a real finished run would have",
    )
    args = p.parse_args(argv)

    smk = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--cores",
        "1",
    ]
    if args.configfile:
        smk += ["--configfile", *[str(Path(c).resolve()) for c in args.configfile]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        work = Path(tmp)
        print(f"planning in {work} ({args.rounds} rounds each; medians)", flush=True)
        # `-n` without --quiet: Snakemake prints every job, which costs as much as planning
        # itself on big DAGs; --quiet rules keeps the per-rule job table.
        r = measure([*smk, "-n", "--quiet", "rules"], work, args.rounds)
        results["dry_run"] = r
        results["jobs"] = jobs_in(r["out"])
        print(
            f"dry run: {results['jobs']} jobs  wall {r['wall_s']:.1f} s  CPU {r['cpu_s']:.1f} s  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        if args.no_op:
            summary = timed([*smk, "--summary", "--quiet", "all"], work)["out"]
            files = [
                line.split("\t")[0]
                for line in summary.splitlines()
                if "\t" in line and not line.startswith("output_file")
            ]
            for f in files:
                path = work / f
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            now = time.time()  # one modification time: nothing is older than its inputs
            for f in files:
                os.utime(work / f, (now, now))
            print(f"created {len(files)} outputs", flush=True)
            if args.touch:
                t = timed([*smk, "--touch", "--quiet", "all"], work)
                print(f"recorded their metadata (--touch) in {t['wall']:.1f} s", flush=True)
            r = measure([*smk, "-n", "--quiet", "all"], work, args.rounds)
            if "Nothing to be done" not in r["out"]:
                raise SystemExit(
                    "the up-to-date check still wants to run jobs:\n" + r["out"][-2000:]
                )
            results["no_op"] = r
            print(
                f"no-op check: wall {r['wall_s']:.1f} s  CPU {r['cpu_s']:.1f} s  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    for r in results.values():
        if isinstance(r, dict):
            r.pop("out", None)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
