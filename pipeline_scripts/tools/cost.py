"""What a configuration costs before it is submitted: jobs, iterations, images and device-hours.

Run::

    python -m pipeline_scripts.tools.cost --config config.yaml [overlay.yaml ...]
                                               [--bench bench/out/bench.json] [--device-name NAME]

The config files are merged and completed exactly as Snakemake does (later files override earlier
ones key by key; ``config.schema.yaml`` fills the defaults). Jobs are counted per experiment family
the way ``rules/common.smk`` builds the DAG of the default target:

==========================  ===================================================================
family (rule)               jobs
==========================  ===================================================================
dense (train_dense)         networks x seeds
imp (train_imp_level)       networks x seeds x imp.rewind_iterations x imp.levels (Figure 1)
imp_pretrained              networks x seeds x pretrain.tasks x pretrain.epochs x imp.levels
  (train_imp_level)         (the chains rewound to a pre-trained state, Figure 9)
from_pretrained             networks x seeds x tasks x epochs: level 0 of those chains
  (train_from_pretrained)
perturb (train_perturbed)   networks x seeds x perturb.rewind_iterations x perturb.levels x
                            variants that run (Figures 4-8)
pretrain (pretrain)         networks x seeds x tasks x epochs, each ``epochs`` long
sparse_pretext              networks x seeds x sparse.kinds x sparse.levels, sparse.epochs long
sparse_train                networks x seeds x sparse.levels x (imp: pretrained;
                            reinit, random: scratch + pretrained) (Figure 10)
stability                   networks x seeds x stability.rewind_iterations x 2 copies x (dense
  (train_stability_copy)    + the IMP sub-network when sparse_level is set), each k..T
interpolate                 one per copy pair: points x test images evaluated (+ the BatchNorm
                            sample per point with batchnorm: recompute)
hessian                     networks x seeds: one job over every hessian.iterations point, each
                            steps Hessian-vector products over samples images (HVP_STEPS
                            training steps' worth of images each)
==========================  ===================================================================

plus the non-training jobs (data, telemetry, summaries, figures), counted for the DAG total.

Per job, iterations = ``TrainingHparams.total_iterations(n_train)`` with the job's own
hyperparameters (per-network batch size, pre-training overrides and lengths), images = the images
those iterations draw (a partial last batch per epoch), evaluations = ``runs.eval_schedule`` (plus
the telemetry points of dense runs) x test images. With the benchmark's images/s per network
(``bench.py``; ``ours`` for training, ``eval`` at the config's eval batch size)::

    device-seconds = sum over jobs of  images / train_img_s[net]  +  evaluated images / eval_img_s[net]

Masked jobs are costed at the dense rate (a mask costs ~0-1%, benchmarked separately). A job uses
the threads the rules give it (2), so on a 2-core machine device-hours = wall-clock hours.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline_scripts.earlyphase import runs, telemetry
from pipeline_scripts.earlyphase.hparams import TrainingHparams

SCHEMA = Path(__file__).resolve().parents[2] / "config.schema.yaml"
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
# in training steps of that batch: 5.4, measured on this 2-core CPU for ResNet-20 at batch 128 (one
# thread, median of 5, NCHW; README "Beyond the paper"); unmeasured on GPUs. The Hessian jobs'
# images are costed at the training rate times this.
HVP_STEPS = 5.4
MEASUREMENT_FAMILIES = ("interpolate", "hessian")  # costed, but not training jobs


def load_config(paths: list[str | Path], schema: str | Path = SCHEMA) -> dict:
    """Merge config files as ``snakemake --configfile a b`` does and fill the schema defaults."""
    from snakemake.utils import update_config, validate

    config: dict = {}
    for p in paths:
        with open(p) as f:
            update_config(config, yaml.safe_load(f) or {})
    validate(config, str(schema), set_default=True)
    return config


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


def jobs(config: dict) -> list[dict]:
    """Every training job of the default target: family, network, hyperparameters, evaluations."""
    nets, seeds = config["networks"], config["seeds"]
    imp = config["imp"]
    rewinds, levels = sorted(imp["rewind_iterations"]), list(range(1, imp["levels"] + 1))
    perturb = config["perturb"]
    variants = [v for v in perturb["variants"] if perturb["run"] is None or v in perturb["run"]]
    pre = config["pretrain"]
    sparse = pre["sparse"]
    tr = config["training"]
    hps = {n: {**tr["defaults"], **tr["per_network"].get(n, {})} for n in nets}
    every = config["evaluation"]["every_epochs"]
    tel = config["telemetry"]

    out = []

    rewinding = config["rewinding"]

    def add(family, net, hp: dict, count: int, telemetry: bool = False, k=0, pre_epochs=0.0):
        """``k``/``pre_epochs``: where the runs start in the schedule (config key rewinding)."""
        out.append(
            {
                "family": family,
                "network": net,
                "hparams": hp,
                "count": count,
                "telemetry": telemetry,
                "start_iteration": k if rewinding["schedule"] == "framework" else 0,
                "start_epochs": pre_epochs if rewinding["pretrained"] == "framework" else 0.0,
            }
        )

    s = len(seeds)
    for net in nets:
        hp = hps[net]
        add("dense", net, hp, s, telemetry=True)
        for k in rewinds:
            add("imp", net, hp, s * len(levels), k=k)
        if variants:
            for k in perturb["rewind_iterations"]:
                add("perturb", net, hp, s * len(perturb["levels"]) * len(variants), k=k)
        if pre["tasks"]:
            chains = s * len(pre["tasks"])
            for e in pre["epochs"]:
                add("pretrain", net, {**hp, **pre["hparams"], "epochs": float(e)}, chains)
                add("from_pretrained", net, hp, chains, pre_epochs=float(e))
                add("imp_pretrained", net, hp, chains * len(levels), pre_epochs=float(e))
        if sparse["kinds"]:
            lv, k = len(sparse["levels"]), sparse["rewind_iteration"]
            pretext_hp = {**hp, **pre["hparams"], "epochs": float(sparse["epochs"])}
            add("sparse_pretext", net, pretext_hp, s * len(sparse["kinds"]) * lv)
            scratch = sum(kind != "imp" for kind in sparse["kinds"])
            add("sparse_train", net, hp, s * scratch * lv, k=k)
            add(
                "sparse_train",
                net,
                hp,
                s * len(sparse["kinds"]) * lv,
                k=k,
                pre_epochs=float(sparse["epochs"]),
            )
        st = config["stability"]
        subs = 1 + (1 if st["sparse_level"] else 0)
        for k in st["rewind_iterations"]:
            add("stability", net, hp, s * 2 * subs, k=k)
    n_train, n_test = data_sizes(config)
    for j in out:
        hp = TrainingHparams.from_dict(j["hparams"])
        ipe, total = hp.iterations_per_epoch(n_train), hp.total_iterations(n_train)
        start = int(j.pop("start_iteration")) + round(float(j.pop("start_epochs")) * ipe)
        extra = []
        if j["telemetry"]:
            extra = telemetry.schedule(
                min(int(tel["iterations"]), total), int(tel["dense_until"]), int(tel["points"])
            )
        evals = [it for it in runs.eval_schedule(total, ipe, every, [start, *extra]) if it >= start]
        subset = min(int(tel["eval_subset"] or n_test), n_test) if j["telemetry"] else n_test
        j["start"] = start
        j["iterations"] = total - start
        j["images"] = _images(total, ipe, n_train, hp.batch_size) - _images(
            start, ipe, n_train, hp.batch_size
        )
        j["eval_images"] = sum(subset if it <= tel["eval_subset_until"] else n_test for it in evals)
    out += measurement_jobs(config, hps, n_train, n_test)
    return out


def measurement_jobs(config: dict, hps: dict, n_train: int, n_test: int) -> list[dict]:
    """The interpolate and hessian jobs (beyond the paper) as image counts: ``eval_images`` are
    forward passes at the evaluation rate, ``images`` training-step equivalents."""
    out, s = [], len(config["seeds"])
    st, he = config["stability"], config["hessian"]
    subs = 1 + (1 if st["sparse_level"] else 0)
    its = config["dense"]["checkpoint_iterations"] if he["iterations"] is None else he["iterations"]
    for net, hp in hps.items():
        if st["rewind_iterations"]:
            bn = min(st["bn_samples"], n_train) if st["batchnorm"] == "recompute" else 0
            out.append(
                {
                    "family": "interpolate",
                    "network": net,
                    "hparams": hp,
                    "telemetry": False,
                    "count": s * subs * len(st["rewind_iterations"]),
                    "start": 0,
                    "iterations": 0,
                    "images": 0,
                    "eval_images": st["points"] * (n_test + bn),
                }
            )
        if its:
            sample = min(he["samples"], n_train)
            out.append(
                {
                    "family": "hessian",
                    "network": net,
                    "hparams": hp,
                    "telemetry": False,
                    "count": s,
                    "start": 0,
                    "iterations": 0,
                    "images": round(len(its) * he["steps"] * sample * HVP_STEPS),
                    "eval_images": 0,
                }
            )
    return out


def other_jobs(config: dict) -> dict:
    """Non-training jobs of the default target (data, telemetry, summaries, figures, all)."""
    nets, seeds = len(config["networks"]), len(config["seeds"])
    perturb = config["perturb"]
    variants = [v for v in perturb["variants"] if perturb["run"] is None or v in perturb["run"]]
    tasks, sparse = config["pretrain"]["tasks"], config["pretrain"]["sparse"]["kinds"]
    summaries = 1 + (len(perturb["rewind_iterations"]) if variants else 0) + len(tasks)
    summaries += 1 if sparse else 0
    figures = 2 + (5 if variants else 0) + (1 if tasks else 0) + (1 if sparse else 0)
    st, he = config["stability"], config["hessian"]
    its = config["dense"]["checkpoint_iterations"] if he["iterations"] is None else he["iterations"]
    beyond = (2 if st["rewind_iterations"] else 0) + (2 if its else 0)  # summary + figure each
    return {
        "prepare_data": 1,
        "telemetry_run": nets * seeds,
        "summarise_telemetry": nets,
        "summarise": nets * summaries,
        "figures": nets * figures + 1,  # + figure A3 over all networks
        "summaries_and_figures_beyond": nets * beyond,
        "claims": 1,
        "all": 1,
    }


def throughput(bench: dict) -> dict[str, dict]:
    """network -> {"train": img/s, "eval": img/s} from a bench.py JSON file."""
    out = {}
    for key, e in bench.get("networks", {}).items():
        if e.get("sparsity"):
            continue
        ev = e.get("eval") or {}
        ev_ips = next(iter(ev.values()))["img_s"] if ev else None
        out[e.get("network", key)] = {"train": e["ours"]["img_s"], "eval": ev_ips}
    return out


def estimate(config: dict, bench: dict | None = None) -> dict:
    rates = throughput(bench) if bench else {}
    families: dict[str, Family] = {f: Family() for f in RULE_OF}
    n_train, n_test = data_sizes(config)
    for j in jobs(config):
        f = families[j["family"]]
        c = j["count"]
        f.jobs += c
        f.iterations += c * j["iterations"]
        f.images += c * j["images"]
        f.eval_images += c * j["eval_images"]
        r = rates.get(j["network"])
        seconds = 0.0
        if r is None:
            f.missing.add(j["network"])
        else:
            eval_rate = r["eval"] or 3 * r["train"]  # forward only ~ 1/3 of a training step
            seconds = c * (j["images"] / r["train"] + j["eval_images"] / eval_rate)
            f.seconds += seconds
        row = f.by_network[j["network"]]
        row[0] += c
        row[1] += c * j["iterations"]
        row[2] += seconds
    fams = {}
    for name, f in families.items():
        if f.jobs:
            fams[name] = {**f.to_dict(), "rule": RULE_OF[name]}
    rules: dict[str, int] = defaultdict(int)
    measuring: dict[str, int] = defaultdict(int)
    for name, f in fams.items():
        (measuring if name in MEASUREMENT_FAMILIES else rules)[f["rule"]] += f["jobs"]
    other = other_jobs(config)
    training_jobs = sum(rules.values())
    hours = [f["device_hours"] for f in fams.values()]
    return {
        "n_train": n_train,
        "n_test": n_test,
        "families": fams,
        "training_jobs_by_rule": dict(rules),
        "training_jobs": training_jobs,
        "measurement_jobs_by_rule": dict(measuring),
        "other_jobs": other,
        "total_jobs": training_jobs + sum(measuring.values()) + sum(other.values()),
        "total_iterations": sum(f["iterations"] for f in fams.values()),
        "total_images": sum(f["images"] for f in fams.values()),
        "device_hours": sum(hours) if hours and None not in hours else None,
        "throughput": rates,
    }


def report(est: dict, device_name: str = "") -> str:
    lines = [
        f"{'family':<16} {'rule':<22} {'jobs':>7} {'iterations':>14} {'images':>16} "
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
        f"DAG total {est['total_jobs']:,} jobs ({est['training_jobs']:,} training, "
        f"{sum(est['measurement_jobs_by_rule'].values())} interpolate/hessian, "
        f"{sum(est['other_jobs'].values())} data/telemetry/summary/figure/claims); "
        f"{est['n_train']:,} training and {est['n_test']:,} test images"
    )
    if est["throughput"]:
        where = f" on {device_name}" if device_name else ""
        rates = ", ".join(
            f"{n} {r['train']:.0f}" + (f"/{r['eval']:.0f}" if r["eval"] else "")
            for n, r in est["throughput"].items()
        )
        lines.append(f"measured img/s{where} (train/eval): {rates}")
        if h is not None:
            lines.append(
                f"= {h:,.0f} device-hours = {h / 24:,.1f} device-days at one job at a time"
            )
    missing = sorted({n for f in est["families"].values() for n in f["networks_without_benchmark"]})
    if missing:
        lines.append(f"no benchmark figure for {missing}: their hours are not estimated")
    lines.append(
        "formula: hours = sum over jobs (images / train img/s + evaluated images / eval img/s) "
        "/ 3600"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.cost",
        description="Jobs, iterations and projected device-hours of a configuration's DAG.",
    )
    p.add_argument("--config", nargs="+", default=["config.yaml"], help="config file(s), merged")
    p.add_argument("--bench", help="bench.py JSON with measured images/s per network")
    p.add_argument("--device-name", default="", help="label for the device the bench ran on")
    p.add_argument("--json", help="also write the estimate here")
    args = p.parse_args(argv)
    config = load_config(args.config)
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    name = args.device_name
    if bench and not name:
        m = bench.get("machine", {})
        name = f"{m.get('device', '?')} ({m.get('cpu', '?')}, {m.get('threads', '?')} threads)"
    est = estimate(copy.deepcopy(config), bench)
    print(report(est, name))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(est, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
