# Validation, wildcard constraints, config -> params functions and target lists. Defines no rules.
# Everything here runs once per planning (or once per job for the small input/params functions),
# so it stays cheap: the paper-scale DAG has ~16,000 jobs.

import os

from snakemake.utils import validate

validate(config, workflow.source_path("../config.schema.yaml"), set_default=True)

NETWORKS = config["networks"]
SEEDS = config["seeds"]
DENSE_CKPTS = sorted(config["dense"]["checkpoint_iterations"])
IMP = config["imp"]
IMP_REWINDS = sorted(IMP["rewind_iterations"])
IMP_LEVELS = list(range(1, IMP["levels"] + 1))
DATA_FILE = "results/data/cifar10.h5"
# Figures list their plotting code as an input: editing it redraws figures and nothing else.
PLOTS_CODE = os.path.join(
    workflow.basedir, "pipeline_scripts", "earlyphase", "plots.py"
)


def _config_error(key, message):
    raise ValueError(f"config key {key}: {message}")


_missing = sorted(set(IMP_REWINDS) - set(DENSE_CKPTS))
if _missing:
    _config_error(
        "imp.rewind_iterations",
        f"{_missing} are not in dense.checkpoint_iterations {DENSE_CKPTS}; add them there "
        "(the dense runs must keep those weights).",
    )
if config["data"]["source"] == "imagefolder" and not config["data"]["path"]:
    _config_error(
        "data.path",
        "data.source is imagefolder, so data.path must name a directory or .tar.gz",
    )


wildcard_constraints:
    net="[a-z][a-z0-9_]*",
    seed=r"\d+",
    k=r"\d+",
    level=r"[1-9]\d*",


# ---- config -> params -------------------------------------------------------------------------
_HPARAMS = {
    net: {
        **config["training"]["defaults"],
        **config["training"]["per_network"].get(net, {}),
    }
    for net in NETWORKS
}


def hparams(wildcards):
    """Training hyperparameters of a network: defaults, then its per-network overrides."""
    return _HPARAMS[wildcards.net]


def runtime(wildcards):
    return config["runtime"]


def resume_dir(wildcards, output):
    """Resume state lives beside, never inside, the job's outputs (Snakemake deletes those on
    failure): resume/<first output's directory>."""
    return os.path.join("resume", os.path.dirname(output[0]))


# ---- IMP chain inputs -------------------------------------------------------------------------
def imp_previous(wildcards):
    """Level L is pruned from level L-1's trained weights (level 0 = the dense run)."""
    level = int(wildcards.level)
    base = f"results/{wildcards.net}/seed{wildcards.seed}"
    if level == 1:
        return {"prev_final": f"{base}/dense/final.pt"}
    prev = f"{base}/imp/rewind{wildcards.k}/level{level - 1}"
    return {"prev_final": f"{prev}/final.pt", "prev_mask": f"{prev}/mask.pt"}


# ---- targets ----------------------------------------------------------------------------------
def dense_targets():
    return expand("results/{net}/seed{seed}/dense/metrics.h5", net=NETWORKS, seed=SEEDS)


def imp_runs(net):
    """(series, level, seed, metrics path) of every run in a network's Figure 1."""
    runs = [("dense", 0, s, f"results/{net}/seed{s}/dense/metrics.h5") for s in SEEDS]
    runs += [
        (
            f"rewind{k}",
            level,
            s,
            f"results/{net}/seed{s}/imp/rewind{k}/level{level}/metrics.h5",
        )
        for k in IMP_REWINDS
        for level in IMP_LEVELS
        for s in SEEDS
    ]
    return runs


def imp_summary_files(wildcards):
    return [r[3] for r in imp_runs(wildcards.net)]


def imp_summary_keys(wildcards):
    return [r[:3] for r in imp_runs(wildcards.net)]


def figure1_targets():
    return expand(
        "results/figures/figure1/{net}.{ext}", net=NETWORKS, ext=["pdf", "png"]
    )


def figure3_targets():
    return expand(
        "results/figures/figure3/{net}.{ext}", net=NETWORKS, ext=["pdf", "png"]
    ) + [
        "results/figures/figureA3.pdf",
        "results/figures/figureA3.png",
    ]
