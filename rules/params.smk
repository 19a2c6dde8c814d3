# Config -> params and inputs of the training rules: every training rule passes one `job` dict
# (runs.Job fields that come from the config); Snakemake compares it between runs, so a changed
# setting re-runs exactly the jobs it affects. Defines no rules.

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
