# Validation, wildcard constraints, config -> params functions and target lists. Defines no rules.
# Everything here runs once per planning (or once per job for the small input/params functions),
# so it stays cheap: the paper-scale DAG has ~16,000 jobs.

import os
import re
import sys

import yaml
from snakemake.utils import validate

if workflow.basedir not in sys.path:  # the package, also when snakemake runs from elsewhere
    sys.path.insert(0, workflow.basedir)
from pipeline_scripts.earlyphase import config_check

# Planning-time checks (issue 13): numbers typed on the command line become numbers, the schema
# checks types, ranges, unknown keys and duplicates, and config_check everything else that can be
# seen before a job runs (network, task and perturbation names and parameters against their
# registries, empty lists that would leave a figure empty, iterations beyond the training length,
# path-spelling collisions). Each error names the config key.
_SCHEMA = os.path.join(workflow.basedir, "config.schema.yaml")
with open(_SCHEMA) as _f:
    config_check.coerce(config, yaml.safe_load(_f))
validate(config, _SCHEMA, set_default=True)
# (registry checks in a child process: torch stays out of the planning process; their success
# is remembered in the run directory's .snakemake/)
config_check.check(config, cache_dir=".snakemake", isolate=True)


def _sorted_keys(value):
    return {k: _sorted_keys(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


# Key order of these mappings carries no meaning, but it reaches params, and Snakemake re-runs a job
# whose params differ in key order: it depends on how config files were merged (the profile's
# overlay vs the same files given with --configfile). Sorted, the params are the same either way.
# (perturb.variants keeps its order, the figures' legend order; each variant's spec is sorted.)
for _key in ("data", "training", "telemetry", "rewinding", "evaluation"):
    config[_key] = _sorted_keys(config[_key])
config["perturb"]["variants"] = {
    name: _sorted_keys(spec) for name, spec in config["perturb"]["variants"].items()
}
config["pretrain"]["hparams"] = _sorted_keys(config["pretrain"]["hparams"])


NETWORKS = config["networks"]
SEEDS = config["seeds"]
DENSE_CKPTS = sorted(config["dense"]["checkpoint_iterations"])
IMP = config["imp"]
IMP_REWINDS = sorted(IMP["rewind_iterations"])
IMP_LEVELS = list(range(1, IMP["levels"] + 1))
DATA_FILE = "results/data/cifar10.h5"
# Figures list their plotting code as an input: editing it redraws figures and nothing else.
PLOTS_CODE = os.path.join(workflow.basedir, "pipeline_scripts", "earlyphase", "plots.py")

# ---- perturbations (Section 5): a catalogue of variants and the list that runs ----------------
PERTURB = config["perturb"]
PERTURB_REWINDS = sorted(PERTURB["rewind_iterations"])
PERTURB_LEVELS = sorted(PERTURB["levels"])
VARIANTS = config_check.running_variants(config)  # `run` narrows the catalogue (lists replace)

# ---- pre-training (Section 6) -------------------------------------------------------------------
PRETRAIN = config["pretrain"]
PRE_TASKS = PRETRAIN["tasks"]
PRE_EPOCHS = [
    f"{e:g}" for e in PRETRAIN["epochs"]
]  # path spelling: 40 -> "40", 0.5 -> "0.5" (config_check refuses collisions)
SPARSE = PRETRAIN["sparse"]


wildcard_constraints:
    net="[a-z][a-z0-9_]*",
    seed=r"\d+",
    k=r"\d+",
    level=r"[1-9]\d*",
    variant="[a-z][a-z0-9_.]*",
    task="[a-z][a-z0-9_]*",
    epochs=r"\d+(\.\d+)?",
    source=r"rewind\d+|pretrain/[a-z][a-z0-9_]*/e\d+(\.\d+)?",
    kind="imp|reinit|random",
    start="scratch|pretrained",


# ---- config -> params -------------------------------------------------------------------------
# Every training rule passes one `job` dict (runs.Job fields that come from the config); Snakemake
# compares it between runs, so a changed setting re-runs exactly the jobs it affects.
_HPARAMS = {
    net: {
        **config["training"]["defaults"],
        **config["training"]["per_network"].get(net, {}),
    }
    for net in NETWORKS
}


def _job(wildcards, **extra):
    # config["runtime"] is not here: it says how a job runs (device, threads, logging), not what
    # it computes, so the training script reads it from the config and changing it re-runs nothing.
    return {
        "hparams": _HPARAMS[wildcards.net],
        "eval_every": config["evaluation"]["every_epochs"],
        **extra,
    }


REWINDING = config["rewinding"]


def _start_at(k=0, pretrained_epochs=0):
    """Where a run's start state stands in the schedule (config key `rewinding`; runs.Job):
    the dense run's step k, plus pre-training that counts as the schedule's first epochs."""
    out = {}
    if int(k) and REWINDING["schedule"] == "framework":
        out["start_iteration"] = int(k)
    if float(pretrained_epochs) and REWINDING["pretrained"] == "framework":
        out["start_epochs"] = float(pretrained_epochs)
    return out


def dense_job(wildcards):
    return _job(
        wildcards,
        snapshot_iterations=DENSE_CKPTS,
        telemetry=config["telemetry"],
        attrs={"experiment": "dense", "series": "dense"},
    )


def _rewind_attr(source):
    m = re.fullmatch(r"rewind(\d+)", source)
    return {"rewind_iteration": int(m[1])} if m else {}


def _source_start(source):
    """_start_at for an IMP chain's source: rewind<k> or pretrain/<task>/e<E>."""
    m = re.fullmatch(r"rewind(\d+)|pretrain/[^/]+/e(.+)", source)
    return _start_at(m[1] or 0, m[2] or 0)


def imp_job(wildcards):
    return _job(
        wildcards,
        prune_fraction=IMP["fraction"],
        prune_exclude=IMP["exclude"],
        level=int(wildcards.level),
        attrs={"experiment": "imp", "series": wildcards.source, **_rewind_attr(wildcards.source)},
        **_source_start(wildcards.source),
    )


def level0_job(wildcards):
    """Level 0 of a chain rewound to a pre-trained state: train the unpruned network from it."""
    source = f"pretrain/{wildcards.task}/e{wildcards.epochs}"
    return _job(
        wildcards,
        attrs={"experiment": "imp", "series": source},
        **_start_at(0, wildcards.epochs),
    )


def perturb_job(wildcards):
    w = wildcards
    return _job(
        w,
        level=int(w.level),
        perturbation=VARIANTS[w.variant],
        perturb_key=f"{w.variant}/rewind{w.k}/level{w.level}",
        attrs={
            "experiment": "perturb",
            "series": w.variant,
            "rewind_iteration": int(w.k),
        },
        **_start_at(w.k),
    )


def pretrain_job(wildcards):
    """Pre-training on a task for `epochs` epochs from the seed's initialisation (Section 6)."""
    hp = {
        **_HPARAMS[wildcards.net],
        **PRETRAIN["hparams"],
        "epochs": float(wildcards.epochs),
    }
    return {
        **_job(wildcards),
        "hparams": hp,
        "task": wildcards.task,
        "attrs": {
            "experiment": "pretrain",
            "series": f"{wildcards.task}/e{wildcards.epochs}",
        },
    }


def sparse_pretext_job(wildcards):
    """Sparse pre-training (Section 6.4): the pretext task under a sub-network's mask."""
    hp = {
        **_HPARAMS[wildcards.net],
        **PRETRAIN["hparams"],
        "epochs": float(SPARSE["epochs"]),
    }
    return {
        **_job(wildcards),
        "hparams": hp,
        "task": SPARSE["task"],
        "level": int(wildcards.level),
        "init_purpose": "reinit",
        "attrs": {
            "experiment": "sparse_pretrain",
            "series": f"{wildcards.kind}_pretext",
        },
    }


def sparse_job(wildcards):
    pretrained = SPARSE["epochs"] if wildcards.start == "pretrained" else 0
    return _job(
        wildcards,
        level=int(wildcards.level),
        init_purpose="reinit",
        attrs={
            "experiment": "sparse_pretrain",
            "series": f"{wildcards.kind}_{wildcards.start}",
        },
        **_start_at(wildcards.k, pretrained),
    )


# ---- several seeds per training job (runtime.runs_per_job; issue 7) ----------------------------
# With runs_per_job R > 1 each training rule except train_dense is defined once per group of R
# seeds (named <name>_seeds<a>_<b>...); its outputs are the same per-seed files as before, so
# everything downstream is unchanged, and the runs train together (runs.run_group). With R = 1
# (the default) each rule is defined once, with a {seed} wildcard.
RUNS_PER_JOB = config["runtime"]["runs_per_job"]
SEED_GROUPS = (
    [None]
    if RUNS_PER_JOB == 1
    else [SEEDS[i : i + RUNS_PER_JOB] for i in range(0, len(SEEDS), RUNS_PER_JOB)]
)


def group_name(base, seeds):
    """The rule's name for a seed group; profiles' set-threads/set-resources of `base` apply."""
    if seeds is None:
        return base
    name = f"{base}_seeds" + "_".join(str(s) for s in seeds)
    rs = workflow.resource_settings
    for table in ("_parsed_overwrite_threads", "_parsed_overwrite_resources"):
        overrides = getattr(rs, table)
        if base in overrides:
            overrides[name] = overrides[base]
    return name


def per_seed(pattern, seeds):
    """An input/output pattern for a seed group: one file per seed (or the pattern itself)."""
    if seeds is None:
        return pattern
    return [pattern.replace("{seed}", str(s)) for s in seeds]


def per_group(pattern, seeds):
    """A log/benchmark pattern: one file per job (seed{seed} -> seeds1_2)."""
    if seeds is None:
        return pattern
    return pattern.replace("seed{seed}", "seeds" + "_".join(str(s) for s in seeds))


class _SeedWildcards:
    """A job's wildcards plus one seed of its group, for the per-seed input functions."""

    def __init__(self, wildcards, seed):
        self.__dict__.update(dict(wildcards.items()), seed=str(seed))


def per_seed_inputs(fn, seeds):
    """A named-input function for a seed group: each name maps to one file per seed."""
    if seeds is None:
        return fn

    def inputs(wildcards):
        out = {}
        for s in seeds:
            for name, path in fn(_SeedWildcards(wildcards, s)).items():
                out.setdefault(name, []).append(path)
        return out

    return inputs


# ---- IMP chains: rewound to a dense checkpoint (rewind<k>) or to a pre-trained state ----------
_REWIND = re.compile(r"rewind(\d+)")


def imp_inputs(wildcards):
    """Start state and level L-1 of a chain. Level 0 is the dense run for rewind<k> chains and
    the unpruned network trained from the pre-trained state for pre-trained chains."""
    base = f"results/{wildcards.net}/seed{wildcards.seed}"
    src, level = wildcards.source, int(wildcards.level)
    m = _REWIND.fullmatch(src)
    if m:
        start, level0 = (
            f"{base}/dense/checkpoints/iter{m[1]}.pt",
            f"{base}/dense/final.pt",
        )
    else:
        start, level0 = f"{base}/{src}/state.pt", f"{base}/imp/{src}/level0/final.pt"
    if level == 1:
        return {"start": start, "prev_final": level0}
    prev = f"{base}/imp/{src}/level{level - 1}"
    return {
        "start": start,
        "prev_final": f"{prev}/final.pt",
        "prev_mask": f"{prev}/mask.pt",
    }


def sparse_inputs(wildcards, pretrained):
    """Section 6.4's sub-networks at level L of the chain rewound to k: the IMP mask with the
    iteration-k weights (imp), with a fresh random init (reinit), or a random mask of the same
    per-layer sparsity with the iteration-k weights (random); ``pretrained``: start from that
    sub-network's pretext-trained state instead.
    """
    base = f"results/{wildcards.net}/seed{wildcards.seed}"
    k, level = wildcards.k, wildcards.level
    mask = f"{base}/imp/rewind{k}/level{level}/mask.pt"
    out = {"mask_like" if wildcards.kind == "random" else "mask": mask}
    if pretrained:
        out["start"] = f"{base}/sparse/rewind{k}/level{level}/{wildcards.kind}/pretext/state.pt"
    elif wildcards.kind != "reinit":
        out["start"] = f"{base}/dense/checkpoints/iter{k}.pt"
    return out


def sparse_pretext_inputs(wildcards):
    """The sub-network the pretext task trains (sparse_pretext): never pre-trained itself."""
    return sparse_inputs(wildcards, pretrained=False)


def sparse_train_inputs(wildcards):
    """The sub-network trained on CIFAR-10 (sparse_train), from scratch or pre-trained."""
    return sparse_inputs(wildcards, pretrained=wildcards.start == "pretrained")


# ---- runs of each figure: (series, level, seed, metrics path) ----------------------------------
def _dense_runs(net):
    return [("dense", 0, s, f"results/{net}/seed{s}/dense/metrics.h5") for s in SEEDS]


def _chain_runs(net, source, series, levels):
    return [
        (
            series,
            level,
            s,
            f"results/{net}/seed{s}/imp/{source}/level{level}/metrics.h5",
        )
        for level in levels
        for s in SEEDS
    ]


def summary_runs(net, name):
    """Every run of one summary file (results/{net}/summary/{name}.h5)."""
    runs = _dense_runs(net)
    if name == "imp":
        for k in IMP_REWINDS:
            runs += _chain_runs(net, f"rewind{k}", f"rewind{k}", IMP_LEVELS)
    elif name.startswith("perturb_rewind"):
        k = int(name.removeprefix("perturb_rewind"))
        runs += _chain_runs(net, f"rewind{k}", "imp", PERTURB_LEVELS)
        if 0 in IMP_REWINDS:
            runs += _chain_runs(net, "rewind0", "rewind0", PERTURB_LEVELS)
        runs += [
            (
                v,
                lv,
                s,
                f"results/{net}/seed{s}/perturb/rewind{k}/level{lv}/{v}/metrics.h5",
            )
            for v in VARIANTS
            for lv in PERTURB_LEVELS
            for s in SEEDS
        ]
    elif name.startswith("pretrain_"):
        task = name.removeprefix("pretrain_")
        for k in PRETRAIN["reference_rewinds"]:
            runs += _chain_runs(net, f"rewind{k}", f"rewind{k}", IMP_LEVELS)
        for e in PRE_EPOCHS:
            runs += _chain_runs(net, f"pretrain/{task}/e{e}", f"e{e}", [0, *IMP_LEVELS])
    elif name == "sparse_pretrain":
        k = SPARSE["rewind_iteration"]
        runs += _chain_runs(net, f"rewind{k}", "imp_scratch", SPARSE["levels"])
        if 0 in IMP_REWINDS:
            runs += _chain_runs(net, "rewind0", "rewind0", SPARSE["levels"])
        for kind in SPARSE["kinds"]:
            for start in (("scratch", "pretrained") if kind != "imp" else ("pretrained",)):
                runs += [
                    (f"{kind}_{start}", lv, s,
                     f"results/{net}/seed{s}/sparse/rewind{k}/level{lv}/{kind}/{start}/metrics.h5")
                    for lv in SPARSE["levels"]
                    for s in SEEDS
                ]  # fmt: skip
    else:
        raise ValueError(f"no summary called {name}")
    return runs


def summary_files(wildcards):
    return [r[3] for r in summary_runs(wildcards.net, wildcards.name)]


def summary_keys(wildcards):
    return [r[:3] for r in summary_runs(wildcards.net, wildcards.name)]


# ---- targets ----------------------------------------------------------------------------------
def _figures(names, nets=None):
    return expand(
        "results/figures/{fig}/{net}.{ext}",
        fig=names,
        net=nets or NETWORKS,
        ext=["pdf", "png"],
    )


def dense_targets():
    return expand("results/{net}/seed{seed}/dense/metrics.h5", net=NETWORKS, seed=SEEDS)


def all_targets():
    targets = dense_targets() + _figures(["figure1", "figure3"])
    targets += ["results/figures/figureA3.pdf", "results/figures/figureA3.png"]
    if VARIANTS:
        targets += _figures([f"figure{n}" for n in (4, 5, 6, 7, 8)])
    if PRE_TASKS:
        targets += _figures(["figure9"])
    if SPARSE["kinds"]:
        targets += _figures(["figure10"])
    targets += stability_targets() + sharpness_targets()  # beyond the paper (issue 14)
    targets += [f"results/claims/claims.{ext}" for ext in ("h5", "tsv", "html")]
    return targets
