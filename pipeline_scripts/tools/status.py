"""A live view of a run: per experiment family the jobs done, running, failed and still to run,
the device-hours spent and left at the measured rates, an ETA, and the last failures with their
log files.

Run::

    python -m pipeline_scripts.tools.status runs/paper [--watch [SECONDS]]
    make status PROFILE=slurm

It reads files only, so it works while Snakemake runs, on a SLURM login node or a workstation,
and never re-plans the DAG:

* the run's plans (``plans/*.json``: ``tools.cost --save-plan``, which every ``make <experiment>``
  runs first): the jobs, their outputs, logs, device-hours and disk;
* the files under the run directory: a job is *done* when all its outputs exist and Snakemake has
  no incomplete mark on them; its outputs' modification times say when it finished;
* Snakemake's own records: ``.snakemake/incomplete/`` marks the outputs of every job it started
  and has not finished (on SLURM with the job's id: submitted, queued or running), so such a job
  is *running* -- or, after Snakemake was killed, *interrupted*, which the lock and the log's age
  tell; ``.snakemake/log/*.snakemake.log`` names every failed job ("Error in rule") with its log;
* the pace: the device-hours of the jobs finished in the last ``--window`` hours, per hour, which
  gives the ETA of the hours left.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_scripts.tools import cost, plan

FAMILIES = [*cost.RULE_OF, "other"]  # report order; "other": data, distances, summaries, figures
SMK = ".snakemake"


@dataclass
class Failure:
    rule: str
    when: str  # Snakemake's timestamp of the error
    outputs: list[str]
    logs: list[str]  # the rule's log and, on SLURM, the job's SLURM log
    message: str


@dataclass
class Status:
    run_dir: Path
    plans: list[dict]
    rows: dict[str, dict] = field(default_factory=dict)  # family -> counts and hours
    failures: list[tuple[dict, Failure]] = field(default_factory=list)  # newest first
    running: list[tuple[dict, str | None]] = field(default_factory=list)  # (job, external id)
    finished: list[tuple[float, float]] = field(default_factory=list)  # (mtime, hours) of done
    lock: bool = False  # a Snakemake holds (or held, if killed) the directory's lock
    log: Path | None = None  # the newest Snakemake log
    seconds: float = 0.0  # how long reading took


def _files(root: Path) -> dict[str, float]:
    """{path relative to ``root``'s parent: mtime} of every file under ``root`` (one walk)."""
    out, base = {}, len(str(root.parent)) + 1
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    try:
                        out[e.path[base:]] = e.stat().st_mtime
                    except OSError:
                        pass
    return out


def incomplete(run_dir: Path) -> dict[str, str | None]:
    """{output: external job id} of Snakemake's incomplete marks: one file per output, named by
    its path's urlsafe base64 (split into '@'-prefixed directories when too long for a name)."""
    import json

    root = run_dir / SMK / "incomplete"
    out = {}
    for p in root.rglob("*") if root.is_dir() else ():
        if not p.is_file():
            continue
        b64 = "".join(part.removeprefix("@") for part in p.relative_to(root).parts)
        try:
            path = base64.urlsafe_b64decode(b64).decode()
        except (ValueError, UnicodeDecodeError):
            continue  # not a mark (e.g. migration_underway)
        try:
            out[path] = json.loads(p.read_text()).get("external_jobid")
        except (OSError, ValueError, AttributeError):
            out[path] = None
    return out


ERROR = re.compile(
    r"^\[(?P<when>[^\]]+)\]\nError in rule (?P<rule>\w+):\n(?P<body>(?: {4}.*\n?)*)", re.M
)
# a group's error (SLURM groups several short jobs in one allocation): its members indented
GROUP_ERROR = re.compile(
    r"^\[(?P<when>[^\]]+)\]\n(?P<body>(?: {4}.*\n?)* {4}jobs:\n(?: {8}.*\n?)*)", re.M
)
MEMBER = re.compile(r"^ {8}rule (?P<rule>\w+):\n(?P<body>(?: {12}.*\n?)*)", re.M)


def _fields(body: str, indent: int) -> dict[str, str]:
    return dict(re.findall(rf"^ {{{indent}}}(\w+): (.*)$", body, re.M))


def _logs(field: str, body: str) -> list[str]:
    logs = [p.split(" (")[0] for p in field.split(", ") if p]
    logs += re.findall(r"\.snakemake/slurm_logs/\S+\.log", body)  # named in a SLURM message
    return list(dict.fromkeys(logs))


def failures(run_dir: Path) -> list[Failure]:
    """Every failed job the run's Snakemake logs name ("Error in rule", and the members of a
    failed group job), oldest first."""
    out = []
    for log in sorted((run_dir / SMK / "log").glob("*.snakemake.log")):
        text = log.read_text(errors="replace")
        for m in ERROR.finditer(text):
            fields = _fields(m["body"], 4)
            outputs = [p for p in fields.get("output", "").split(", ") if p]
            logs = _logs(fields.get("log", ""), m["body"])
            out.append(Failure(m["rule"], m["when"], outputs, logs, fields.get("message", "")))
        for g in GROUP_ERROR.finditer(text):
            group = _fields(g["body"].split("    jobs:\n")[0], 4)
            for m in MEMBER.finditer(g["body"]):
                fields = _fields(m["body"], 12)
                outputs = [p for p in fields.get("output", "").split(", ") if p]
                logs = _logs(", ".join(filter(None, (fields.get("log"), group.get("log")))), "")
                out.append(Failure(m["rule"], g["when"], outputs, logs, group.get("message", "")))
    return out


def read(run_dir: str | Path) -> Status:
    """The status of ``run_dir`` from its files (see the module's docstring)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    headers, jobs = plan.load(run_dir)
    if not headers:
        raise SystemExit(
            f"{run_dir}: no plan in {run_dir / plan.PLANS}/. Plan the command you run once, e.g. "
            "`make cost PROFILE=slurm` or `make figure1 COST=1` (or python -m "
            "pipeline_scripts.tools.cost <your snakemake arguments> --save-plan)"
        )
    st = Status(run_dir, headers)
    files = _files(run_dir / "results") if (run_dir / "results").is_dir() else {}
    marks = incomplete(run_dir)
    failed_by_output = {}
    for f in failures(run_dir):
        for out in f.outputs:
            failed_by_output[out] = f
    st.rows = {
        fam: {"jobs": 0, "done": 0, "running": 0, "failed": 0, "to run": 0, "hours_done": 0.0,
              "hours_left": 0.0, "unpriced": 0}
        for fam in FAMILIES
    }  # fmt: skip
    for first, job in jobs.items():
        row = st.rows[job["family"]]
        row["jobs"] += 1
        hours = job["hours"]
        if hours is None:
            row["unpriced"] += 1
            hours = 0.0
        outs = job["outputs"]
        marked = [o for o in outs if o in marks]
        if not marked and all(o in files for o in outs):
            row["done"] += 1
            row["hours_done"] += hours
            st.finished.append((max(files[o] for o in outs), hours))
            continue
        row["hours_left"] += hours
        if marked:
            row["running"] += 1
            st.running.append((job, marks[marked[0]]))
        elif first in failed_by_output:
            row["failed"] += 1
            st.failures.append((job, failed_by_output[first]))
        else:
            row["to run"] += 1
    st.failures.sort(key=lambda jf: _when(jf[1].when), reverse=True)
    st.lock = (
        any((run_dir / SMK / "locks").glob("*")) if (run_dir / SMK / "locks").is_dir() else False
    )
    logs = sorted((run_dir / SMK / "log").glob("*.snakemake.log"))
    st.log = logs[-1] if logs else None
    st.seconds = time.perf_counter() - started
    return st


def _when(stamp: str) -> float:
    try:
        return time.mktime(time.strptime(stamp, "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return 0.0


def pace(st: Status, window_hours: float, now: float) -> tuple[float | None, int]:
    """(device-hours finished per wall-clock hour over the last ``window_hours``, jobs finished
    in it); None when fewer than two jobs finished there."""
    since = now - window_hours * 3600
    recent = [(t, h) for t, h in st.finished if t >= since]
    if len(recent) < 2:
        return None, len(recent)
    span = now - min(t for t, _ in recent)
    return (sum(h for _, h in recent) / (span / 3600) if span > 0 else None), len(recent)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report(st: Status, window_hours: float = 24.0, failures_shown: int = 5, now=None) -> str:
    now = time.time() if now is None else now
    device = st.plans[-1].get("device") or "device"
    lines = [f"{st.run_dir}: {len(st.plans)} plan(s)"]
    for h in st.plans:
        lines.append(f"  {Path(h['path']).name}: {h['jobs']:,} jobs, {h['created']}: "
                     f"{' '.join(h['command'])}")  # fmt: skip
    head = (f"{'family':<16} {'jobs':>7} {'done':>7} {'running':>8} {'failed':>7} {'to run':>7}"
            f" {'hours done':>11} {'hours left':>11}")  # fmt: skip
    lines += [f"device-hours at the measured rates of {device}", head]
    total = defaultdict(float)
    for r in st.rows.values():
        for k, v in r.items():
            total[k] += v
    decimals = 1 if total["hours_done"] + total["hours_left"] >= 10 else 3
    lines += [_row(fam, r, decimals) for fam, r in st.rows.items() if r["jobs"]]
    lines.append(_row("all", total, decimals))
    if total["unpriced"]:
        lines.append(f"({int(total['unpriced'])} jobs of networks without a measured rate are "
                     "counted at 0 hours)")  # fmt: skip
    rate, n = pace(st, window_hours, now)
    left = total["hours_left"]
    if not any(total[k] for k in ("running", "failed", "to run")):
        lines.append("every planned job is done")
    elif rate:
        eta = now + left / rate * 3600
        lines.append(
            f"pace: {rate:,.1f} device-hours per hour over the last {window_hours:g} h "
            f"({n} jobs finished); ETA {time.strftime('%Y-%m-%d %H:%M', time.localtime(eta))} "
            f"({_age(left / rate * 3600)})"
        )
    else:
        lines.append(f"pace: {n} job(s) finished in the last {window_hours:g} h: no ETA yet")
    lines.append(_snakemake_line(st, now))
    if st.running:
        ids = [i for _, i in st.running if i]
        lines.append(
            f"started, not finished: {len(st.running)} job(s)"
            + (
                f"; SLURM ids {' '.join(ids[:10])}{' ...' if len(ids) > 10 else ''} "
                "(squeue -j <id>)"
                if ids
                else ""
            )
            + ("" if st.lock else "; no Snakemake runs here, so they were interrupted: the same "
               "command runs them again")
        )  # fmt: skip
        for job, _ in st.running[:5]:
            lines.append(f"  {job['rule']}: {job['outputs'][0]}  log {_first(job['log'])}")
    if st.failures:
        lines.append(f"last failures ({min(failures_shown, len(st.failures))} of "
                     f"{len(st.failures)}, newest first):")  # fmt: skip
        for job, f in st.failures[:failures_shown]:
            lines.append(f"  [{f.when}] {f.rule}: {job['outputs'][0]}")
            for log in f.logs or job["log"]:
                lines.append(f"    log {log}{_last_line(st.run_dir / log)}")
    lines.append(f"(read in {st.seconds:.2f} s)")
    return "\n".join(lines)


def _row(name: str, r: dict, decimals: int) -> str:
    return (
        f"{name:<16} {int(r['jobs']):>7,} {int(r['done']):>7,} {int(r['running']):>8,} "
        f"{int(r['failed']):>7,} {int(r['to run']):>7,} {r['hours_done']:>11,.{decimals}f} "
        f"{r['hours_left']:>11,.{decimals}f}"
    )


def _first(paths: list[str]) -> str:
    return paths[0] if paths else "-"


def _last_line(path: Path) -> str:
    """': <its last non-empty line>' of a log file, or ' (missing)'."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return " (missing)"
    return f": {tail[-1].strip()[:160]}" if tail else ""


def _snakemake_line(st: Status, now: float) -> str:
    if st.log is None:
        return "Snakemake: no log yet in .snakemake/log/"
    age = now - st.log.stat().st_mtime
    where = f"its log {st.log.relative_to(st.run_dir)} was written {_age(age)} ago"
    if not st.lock:
        return f"Snakemake: not running on this directory (no lock); {where}"
    hint = ""
    if st.running and age > 3600:
        hint = (" -- if no Snakemake runs here any more (killed), the jobs above were "
                "interrupted: run the same command again (with --unlock first if it refuses)")  # fmt: skip
    return f"Snakemake: holds the directory's lock; {where}{hint}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.status",
        description="Progress of a run directory per experiment family, from its files only.",
    )
    p.add_argument("run_dir", help="the run directory, e.g. runs/paper")
    p.add_argument(
        "--watch",
        nargs="?",
        const=60.0,
        type=float,
        metavar="SECONDS",
        help="redraw every SECONDS (default 60) until interrupted",
    )
    p.add_argument("--window", type=float, default=24.0, help="hours the pace is measured over")
    p.add_argument("--failures", type=int, default=5, help="failures shown (newest first)")
    args = p.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        raise SystemExit(f"{args.run_dir}: no such run directory")
    while True:
        text = report(read(args.run_dir), args.window, args.failures)
        if args.watch is None:
            print(text)
            return 0
        sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + text + "\n")
        sys.stdout.flush()
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
