"""A run's plan: every job one command will run, with its experiment family, outputs, log,
device-hours at the measured rates and disk. ``tools.cost --save-plan`` writes it (from the dry
run it costs) to ``<run directory>/plans/<targets>.json``; ``tools.status`` reads every plan of a
run directory and compares it with the files there, so a status never re-plans the DAG.

A plan is JSON: ``format``, ``created`` (UTC), ``command`` (the snakemake arguments it planned),
``device`` (the rates' device), ``bench`` (the measurement file) and ``jobs``, a list of
``{rule, family, network, outputs, log, hours, bytes}`` (``hours`` null where the file has no
rate for the network; ``family`` "other" for data, telemetry distances, summaries, figures and
the claims table).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from pipeline_scripts.tools import cost

FORMAT = "earlyphase-plan/1"
PLANS = "plans"  # under the run directory


def jobs(
    config: dict, dag_jobs: list[tuple[str, dict]], files: list[dict], rates: dict
) -> list[dict]:
    """The plan's job list for ``dag_jobs`` (``cost.dag``), their ``files``
    (``cost.parse_dry_run_files``) and ``rates`` (``cost.rates_for``)."""
    out = []
    for (rule, wildcards), run, f in zip(
        dag_jobs, cost.per_job(config, dag_jobs), files, strict=True
    ):
        hours = None
        if run is not None:
            s = cost.seconds(run, rates)
            hours = None if s is None else s / 3600
        out.append(
            {
                "rule": rule,
                "family": run["family"] if run else "other",
                "network": wildcards.get("net"),
                "outputs": f["output"],
                "log": f["log"],
                "hours": hours if run else 0.0,
                "bytes": cost.job_disk(config, (rule, wildcards), run, f),
            }
        )
    return out


def name_of(targets: list[str], config: list[str] = ()) -> str:
    """A plan's file name: its targets (``all`` for the default one) and --config entries (but
    the data's, which changes no job), readable and safe: ``figure1+networks_resnet20_``."""
    words = [*(targets or ["all"]), *(c for c in config if not c.startswith("data="))]
    return re.sub(r"[^\w.+-]+", "_", "+".join(words))[:120]


def save(
    run_dir: str | Path,
    targets: list[str],
    header: dict,
    job_list: list[dict],
    config: list[str] = (),
) -> Path:
    """Write the plan of ``targets`` with --config entries ``config`` into ``run_dir``/plans/
    (replacing the same command's earlier plan) and return its path."""
    folder = Path(run_dir) / PLANS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name_of(targets, config)}.json"
    body = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **header,
        "jobs": job_list,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def load(run_dir: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """(each plan's header, the union of their jobs keyed by their first output) of a run
    directory; an unreadable plan is an error naming the file and what to do."""
    headers, union = [], {}
    for path in sorted((Path(run_dir) / PLANS).glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"cannot read the plan {path} ({e}): delete it and plan again") from e
        if body.get("format") != FORMAT:
            raise SystemExit(
                f"{path} is not an {FORMAT} file (format {body.get('format')!r}): delete it "
                "and plan again (python -m pipeline_scripts.tools.cost ... --save-plan)"
            )
        job_list = body.pop("jobs")
        headers.append({**body, "path": str(path), "jobs": len(job_list)})
        for job in job_list:
            if job["outputs"]:
                union[job["outputs"][0]] = job
    return headers, union
