"""What a configuration costs before it is submitted: jobs, iterations, images and device-hours.

Run::

    python -m pipeline_scripts.tools.cost [TARGET ...] [--profile DIR] [--configfile FILE ...]
        [--config KEY=VALUE ...] [--bench FILE] [--assume NET=MEASURED] [--save-plan]

The targets, ``--profile``, ``--configfile`` and ``--config`` are a snakemake command's own
(``command.py``), so the estimate is of exactly what that command would run.

One source: the jobs are the DAG Snakemake itself builds for the config (``dag``: the job list of a
dry run, ``snakemake -n``, in a scratch directory; about a minute for the paper's protocol), so the
counts are Snakemake's by construction and a config Snakemake refuses is refused here too. The
config files are merged over the Snakefile's config.yaml as Snakemake merges them, and
``config.schema.yaml`` fills the defaults. Each job's runs (N for a seed-group job of
``runtime.runs_per_job``) are costed by family, from the rule and its wildcards:

==========================  ===================================================================
family (rule)               runs
==========================  ===================================================================
dense (train_dense)         one per network x seed, with the telemetry evaluations
imp (train_imp_level)       IMP levels of the chains rewound to k (source rewind<k>; Figure 1)
imp_pretrained              IMP levels of the chains rewound to a pre-trained state
  (train_imp_level)         (source pretrain/<task>/e<E>; Figure 9)
from_pretrained             level 0 of those chains
perturb (train_perturbed)   perturbed branches (Figures 4-8)
pretrain (pretrain)         pre-training runs, each ``epochs`` long
sparse_pretext              sparse pre-training, ``pretrain.sparse.epochs`` long
sparse_train                sparse sub-networks on CIFAR-10 (Figure 10)
stability                   instability-analysis copies, each k..T
  (train_stability_copy)
interpolate                 one per copy pair: points x test images evaluated (+ the BatchNorm
                            sample per point with batchnorm: recompute)
hessian                     one per dense run: hessian.iterations x steps Hessian-vector
                            products over samples images (HVP_STEPS training steps' worth each)
==========================  ===================================================================

plus the non-training jobs (data, telemetry, summaries, figures), counted for the DAG total.

Per job, iterations = ``TrainingHparams.total_iterations(n_train)`` with the job's own
hyperparameters (per-network batch size, pre-training overrides and lengths), images = the images
those iterations draw (a partial last batch per epoch), evaluations = ``runs.eval_schedule`` (plus
the telemetry points of dense runs) x test images. With the benchmark's images/s per network
(``bench.py``; ``ours`` for training, ``eval`` at the config's eval batch size) or of N runs in
one process (``tools.gpu grid``/``check``, the rows in the config's precision and CUDA-graph
setting; ``throughput``, ``rate``)::

    device-seconds = sum over jobs of  (images of its N runs) / train_img_s[net, N]
                                       + evaluated images / eval_img_s[net]

Masked jobs are costed at the dense rate (a mask costs ~0-1%, benchmarked separately). A job uses
the threads the rules give it (2), so on a 2-core machine device-hours = wall-clock hours.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_scripts.earlyphase import runs, telemetry
from pipeline_scripts.earlyphase.hparams import TrainingHparams
from pipeline_scripts.tools import disk
from pipeline_scripts.tools.dryrun import (  # noqa: F401 - the planning's API, through cost too
    ROOT,
    SCHEMA,
    _base_rule,
    dag,
    dag_command,
    dry_run,
    load_config,
    merge,
    parse_dry_run,
    parse_dry_run_files,
    validate,
)
from pipeline_scripts.tools.rates import rate, throughput

CIFAR10 = {"n_train": 50_000, "n_test": 10_000}

# Training families in report order, and the Snakemake rule each belongs to.
RULE_OF = {
    "dense": "train_dense",
    "imp": "train_imp_level",
    "imp_pretrained": "train_imp_level",
    "from_pretrained": "train_from_pretrained",
    "perturb": "train_perturbed",
    "pretrain": "pretrain",
    "sparse_pretext": "sparse_pretext",
    "sparse_train": "sparse_train",
    "stability": "train_stability_copy",
    "interpolate": "interpolate",
    "hessian": "hessian",
}
# One Hessian-vector product (forward, backward with create_graph, double backward) over a batch,
# in training steps of that batch: 5.4, timed by hand for ResNet-20 at batch 128 (one thread,
# median of 5, NCHW) on the 2-core AVX-512 CPU of docs/performance.md, 2026-11-23 (commit a6ec493);
# no benchmark reproduces it yet, and it is unmeasured on GPUs. The Hessian jobs' images are
# costed at the training rate times this.
HVP_STEPS = 5.4
MEASUREMENT_FAMILIES = ("interpolate", "hessian")  # costed, but not training jobs
# The family of each rule's runs (train_imp_level's imp_pretrained is told by its source).
FAMILY_OF_RULE = {rule: family for family, rule in RULE_OF.items() if family != "imp_pretrained"}


@dataclass
class Family:
    jobs: int = 0
    iterations: int = 0
    images: int = 0
    eval_images: int = 0
    seconds: float = 0.0
    missing: set = field(default_factory=set)  # networks without a benchmark figure
    by_network: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0.0]))

    def to_dict(self) -> dict:
        return {
            "rule": None,
            "jobs": self.jobs,
            "iterations": self.iterations,
            "images": self.images,
            "eval_images": self.eval_images,
            "device_hours": self.seconds / 3600 if not self.missing else None,
            "networks_without_benchmark": sorted(self.missing),
            "by_network": {
                n: {"jobs": j, "iterations": i, "device_hours": s / 3600}
                for n, (j, i, s) in self.by_network.items()
            },
        }


def _images(total: int, ipe: int, n: int, batch: int) -> int:
    """Images drawn by ``total`` iterations: whole epochs of n, then full batches (capped)."""
    epochs, rest = divmod(total, ipe)
    return epochs * n + min(rest * batch, n)


def data_sizes(config: dict) -> tuple[int, int]:
    d = config["data"]
    base = d["synthetic"] if d["source"] == "synthetic" else CIFAR10
    n_train = d["n_train"] or base["n_train"]
    n_test = d["n_test"] or base["n_test"]
    return int(min(n_train, base["n_train"])), int(min(n_test, base["n_test"]))


def _run_keys(config: dict, dag_jobs: list[tuple[str, dict]]) -> list[tuple | None]:
    """Each DAG job's (family, net, k, pre_epochs, epochs, telemetry, runs per job): what its
    runs cost depends on only these; None for the jobs that train and measure nothing."""
    sparse_epochs = float(config["pretrain"]["sparse"]["epochs"])
    keys = []
    for rule, w in dag_jobs:
        base, count = _base_rule(rule)
        family = FAMILY_OF_RULE.get(base)
        if family is None:
            keys.append(None)
            continue
        k, pre_epochs, epochs = int(w.get("k", 0)), 0.0, None
        if base == "train_imp_level":
            src = re.fullmatch(r"rewind(\d+)|pretrain/\w+/e([\d.]+)", w["source"])
            if src[1] is not None:
                k = int(src[1])
            else:
                family, pre_epochs = "imp_pretrained", float(src[2])
        elif base == "train_from_pretrained":
            pre_epochs = float(w["epochs"])
        elif base == "pretrain":
            epochs = float(w["epochs"])
        elif base == "sparse_pretext":
            k, epochs = 0, sparse_epochs
        elif base == "sparse_train" and w["start"] == "pretrained":
            pre_epochs = sparse_epochs
        keys.append((family, w["net"], k, pre_epochs, epochs, base == "train_dense", count))
    return keys


def _run(config: dict, key: tuple, n_train: int, n_test: int) -> dict:
    """One run of the runs that share ``key`` (``_run_keys``): family, network, hyperparameters,
    start in the schedule, iterations, images, evaluated images, telemetry points."""
    family, net, k, pre_epochs, epochs, telemetry_, per_job = key
    tr, pre, tel = config["training"], config["pretrain"], config["telemetry"]
    hp_net = {**tr["defaults"], **tr["per_network"].get(net, {})}
    if family in MEASUREMENT_FAMILIES:
        return _measurement(family, net, hp_net, 1, config, n_train, n_test)
    hp_dict = hp_net if epochs is None else {**hp_net, **pre["hparams"], "epochs": epochs}
    hp = TrainingHparams.from_dict(hp_dict)
    ipe, total = hp.iterations_per_epoch(n_train), hp.total_iterations(n_train)
    rewinding = config["rewinding"]
    start = (k if rewinding["schedule"] == "framework" else 0) + round(
        (pre_epochs if rewinding["pretrained"] == "framework" else 0.0) * ipe
    )
    extra = []
    if telemetry_:
        extra = telemetry.schedule(
            min(int(tel["iterations"]), total), int(tel["dense_until"]), int(tel["points"])
        )
    every = config["evaluation"]["every_epochs"]
    evals = [it for it in runs.eval_schedule(total, ipe, every, [start, *extra]) if it >= start]
    subset = min(int(tel["eval_subset"] or n_test), n_test) if telemetry_ else n_test
    return {
        "family": family,
        "network": net,
        "hparams": hp_dict,
        "count": 1,
        "per_job": per_job,
        "telemetry": telemetry_,
        "telemetry_points": len(extra),
        "start": start,
        "iterations": total - start,
        "images": _images(total, ipe, n_train, hp.batch_size)
        - _images(start, ipe, n_train, hp.batch_size),
        "eval_images": sum(subset if it <= tel["eval_subset_until"] else n_test for it in evals),
    }


def jobs(config: dict, dag_jobs: list[tuple[str, dict]]) -> list[dict]:
    """The runs of every training, interpolation and Hessian job of ``dag_jobs`` (``dag``), one
    entry per kind of run with its ``count``: family, network, hyperparameters, start in the
    schedule, images and evaluated images of one run."""
    n_train, n_test = data_sizes(config)
    counts: dict[tuple, int] = defaultdict(int)
    for key in _run_keys(config, dag_jobs):
        if key is not None:
            counts[key] += key[-1]
    return [{**_run(config, key, n_train, n_test), "count": c} for key, c in counts.items()]


def per_job(config: dict, dag_jobs: list[tuple[str, dict]]) -> list[dict | None]:
    """Each DAG job's runs (``jobs``' entry with ``count`` = the runs of that one job), or None
    for a job that trains and measures nothing (data, telemetry distances, summaries, figures)."""
    n_train, n_test = data_sizes(config)
    keys = _run_keys(config, dag_jobs)
    runs_of = {key: _run(config, key, n_train, n_test) for key in set(keys) - {None}}
    return [None if key is None else {**runs_of[key], "count": key[-1]} for key in keys]


def seconds(run: dict, rates: dict) -> float | None:
    """Device-seconds of ``run['count']`` runs of one kind in jobs of ``run['per_job']`` runs at
    ``rates`` (``throughput``); None without a figure for its network."""
    r = rates.get(run["network"])
    if r is None:
        return None
    train_rate = rate(r, run["per_job"])  # N runs in one job at the rate of N runs together
    eval_rate = r["eval"] or 3 * train_rate  # forward only ~ 1/3 of a training step
    return run["count"] * (run["images"] / train_rate + run["eval_images"] / eval_rate)


def _measurement(family, net, hp, count, config, n_train, n_test) -> dict:
    """An interpolate or hessian job as image counts: ``eval_images`` are forward passes at the
    evaluation rate, ``images`` training-step equivalents."""
    st, he = config["stability"], config["hessian"]
    its = config["dense"]["checkpoint_iterations"] if he["iterations"] is None else he["iterations"]
    images, eval_images = 0, 0
    if family == "interpolate":
        bn = min(st["bn_samples"], n_train) if st["batchnorm"] == "recompute" else 0
        eval_images = st["points"] * (n_test + bn)
    else:
        images = round(len(its) * he["steps"] * min(he["samples"], n_train) * HVP_STEPS)
    return {
        "family": family,
        "network": net,
        "hparams": hp,
        "telemetry": False,
        "telemetry_points": 0,
        "count": count,
        "per_job": 1,
        "start": 0,
        "iterations": 0,
        "images": images,
        "eval_images": eval_images,
    }


def job_disk(config: dict, dag_job: tuple[str, dict], run: dict | None, files: dict) -> int:
    """Bytes of one DAG job's outputs (``disk``), its runs ``run`` (``per_job``) or None."""
    points = run["telemetry_points"] if run else 0
    return disk.job_bytes(files["output"], dag_job[1].get("net"), config, points)


def rates_for(config: dict, bench: dict | None, assume: dict[str, str] | None) -> tuple[dict, dict]:
    """(network -> ``throughput`` entry, the assumptions used) of a measurement file for the
    config's jobs; ``assume`` ({network: measured network}) costs a network the file did not
    measure at another's rates."""
    rates = throughput(bench, config["runtime"]) if bench else {}
    assume = {n: m for n, m in (assume or {}).items() if n not in rates}
    for net, like in assume.items():
        if like not in rates:
            raise ValueError(f"--assume {net}={like}: the benchmark has no figure for {like}")
        rates[net] = rates[like]
    return rates, assume


def estimate(
    config: dict,
    dag_jobs: list[tuple[str, dict]],
    bench: dict | None = None,
    assume: dict[str, str] | None = None,
    files: list[dict] | None = None,
) -> dict:
    """Runs, iterations, images, device-hours and, given each job's ``files``
    (``parse_dry_run_files``), the disk of ``dag_jobs`` (``dag``) under ``config``. ``assume``
    ({network: measured network}) costs a network the benchmark did not measure at another's
    rates, an estimate the result names (``assumed``)."""
    rates, assume = rates_for(config, bench, assume)
    families: dict[str, Family] = {f: Family() for f in RULE_OF}
    disk: dict[str, int] = defaultdict(int)
    for i, j in enumerate(per_job(config, dag_jobs)):
        if files is not None:
            disk[j["family"] if j else "other"] += job_disk(config, dag_jobs[i], j, files[i])
        if j is None:
            continue
        f = families[j["family"]]
        c = j["count"]
        f.jobs += c
        f.iterations += c * j["iterations"]
        f.images += c * j["images"]
        f.eval_images += c * j["eval_images"]
        s = seconds(j, rates)
        if s is None:
            f.missing.add(j["network"])
        f.seconds += s or 0.0
        row = f.by_network[j["network"]]
        row[0] += c
        row[1] += c * j["iterations"]
        row[2] += s or 0.0
    fams = {}
    for name, f in families.items():
        if f.jobs:
            fams[name] = {**f.to_dict(), "rule": RULE_OF[name]}
    rules: dict[str, int] = defaultdict(int)
    measuring: dict[str, int] = defaultdict(int)
    for name, f in fams.items():
        (measuring if name in MEASUREMENT_FAMILIES else rules)[f["rule"]] += f["jobs"]
    other: dict[str, int] = defaultdict(int)
    for rule, _ in dag_jobs:
        if _base_rule(rule)[0] not in FAMILY_OF_RULE:
            other[rule] += 1
    training_jobs = sum(rules.values())
    hours = [f["device_hours"] for f in fams.values()]
    n_train, n_test = data_sizes(config)
    return {
        "n_train": n_train,
        "n_test": n_test,
        "families": fams,
        "training_jobs_by_rule": dict(rules),
        "training_jobs": training_jobs,
        "measurement_jobs_by_rule": dict(measuring),
        "other_jobs": dict(other),
        "total_jobs": len(dag_jobs),
        "total_iterations": sum(f["iterations"] for f in fams.values()),
        "total_images": sum(f["images"] for f in fams.values()),
        "device_hours": sum(hours) if hours and None not in hours else None,
        "throughput": rates,
        "assumed": assume,
        "disk_bytes": dict(disk) if files is not None else None,
    }


def report(est: dict, device_name: str = "") -> str:
    lines = [
        f"{'family':<16} {'rule':<22} {'runs':>7} {'iterations':>14} {'images':>16} "
        f"{'device-hours':>13}"
    ]
    for name, f in est["families"].items():
        h = f["device_hours"]
        lines.append(
            f"{name:<16} {f['rule']:<22} {f['jobs']:>7,} {f['iterations']:>14,} "
            f"{f['images']:>16,} {(f'{h:,.0f}' if h is not None else 'n/a'):>13}"
        )
    h = est["device_hours"]
    lines.append(
        f"{'training total':<39} {est['training_jobs']:>7,} {est['total_iterations']:>14,} "
        f"{est['total_images']:>16,} {(f'{h:,.0f}' if h is not None else 'n/a'):>13}"
    )
    lines.append(
        f"DAG total {est['total_jobs']:,} jobs ({est['training_jobs']:,} training runs, "
        f"{sum(est['measurement_jobs_by_rule'].values())} interpolate/hessian, "
        f"{sum(est['other_jobs'].values())} data/telemetry/summary/figure/claims); "
        f"{est['n_train']:,} training and {est['n_test']:,} test images"
    )
    if est["throughput"]:
        where = f" on {device_name}" if device_name else ""
        rates = ", ".join(
            f"{n} {r['train']:.0f}"
            + (f"/{r['eval']:.0f}" if r["eval"] else "")
            + "".join(f", N={k}: {v:.0f}" for k, v in r.get("packed", {}).items())
            for n, r in est["throughput"].items()
        )
        lines.append(f"measured img/s{where} (train/eval; N runs in one process: in all): {rates}")
        if h is not None:
            lines.append(
                f"= {h:,.0f} device-hours = {h / 24:,.1f} device-days at one job at a time"
            )
    for net, like in est.get("assumed", {}).items():
        lines.append(f"estimate: {net} was not measured; costed at {like}'s rates")
    missing = sorted({n for f in est["families"].values() for n in f["networks_without_benchmark"]})
    if missing:
        lines.append(f"no benchmark figure for {missing}: their hours are not estimated")
    lines.append(
        "formula: hours = sum over jobs (images / train img/s + evaluated images / eval img/s) "
        "/ 3600"
    )
    return "\n".join(lines)


def _device_name(bench: dict) -> str:
    m = bench.get("machine", {})
    if "cpu" in m:  # tools.bench: a CPU
        return f"{m.get('device', '?')} ({m['cpu']}, {m.get('threads', '?')} threads)"
    return m.get("device") or bench.get("device", "?")  # tools.gpu grid or check


def summary(est: dict, device_name: str) -> str:
    """The lines a user reads before starting: jobs, device-hours, disk."""
    h = est["device_hours"]
    hours = "no device-hours (no --bench)"
    if h is not None:
        hours = f"{h:,.1f}" if h >= 1 else f"{h:.2g}"
        hours += f" {device_name or 'device'}-hours"
    disk_bytes = est["disk_bytes"]
    disk = f", {sum(disk_bytes.values()) / 1e9:,.2f} GB of results" if disk_bytes else ""
    return f"this command: {est['total_jobs']:,} jobs, {hours}{disk}"


def disk_report(disk_bytes: dict[str, int]) -> str:
    rows = ", ".join(f"{name} {b / 1e9:,.2f}" for name, b in disk_bytes.items())
    return f"disk (GB) by family: {rows}; resume states of running jobs come on top"


def main(argv=None) -> int:
    from pipeline_scripts.tools import command, plan

    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.cost",
        description="Jobs, iterations, device-hours and disk of what a snakemake command would "
        "run: give it that command's targets, --profile, --configfile and --config.",
    )
    command.add_arguments(p)
    p.add_argument("--bench", help="a measurement file: tools.bench JSON, or tools.gpu grid/check")
    p.add_argument("--device-name", default="", help="label for the device the bench ran on")
    p.add_argument("--json", help="also write the estimate here")
    p.add_argument(
        "--assume",
        nargs="+",
        default=[],
        metavar="NET=MEASURED",
        help="cost a network the benchmark lacks at a measured one's rates (an estimate)",
    )
    p.add_argument(
        "--save-plan",
        action="store_true",
        help="save the planned jobs in the run directory's plans/ (tools.status reads them)",
    )
    args = p.parse_args(argv)
    cmd = command.from_args(args)
    config = command.load_config(cmd)
    listing = dry_run(cmd.configfiles, tuple(cmd.targets), tuple(cmd.config))
    dag_jobs, files = parse_dry_run(listing), parse_dry_run_files(listing)
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    name = args.device_name or (_device_name(bench) if bench else "")
    assume = dict(a.split("=", 1) for a in args.assume)
    est = estimate(copy.deepcopy(config), dag_jobs, bench, assume, files)
    print(report(est, name))
    print(disk_report(est["disk_bytes"]))
    print(summary(est, name))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(est, indent=1) + "\n")
    if args.save_plan:
        rates, _ = rates_for(config, bench, assume)
        header = {
            "command": ["snakemake", *cmd.typed],
            "device": name,
            "bench": args.bench,
        }
        jobs_ = plan.jobs(config, dag_jobs, files, rates)
        path = plan.save(cmd.directory or Path.cwd(), cmd.targets, header, jobs_, cmd.config)
        print(f"plan saved: {path} (python -m pipeline_scripts.tools.status reads it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
