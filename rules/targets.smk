from snakemake.exceptions import WorkflowError


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


# The paper's experiments, each the target of the Snakefile's rule of its name. Name -> (what it
# reproduces, its files for the configured networks and seeds, the config key that leaves it out
# when empty; None: always configured). Restricting networks and seeds (--config networks=[...] seeds=[...])
# restricts every one of them.
EXPERIMENTS = {
    "table_a1": ("Table A1: the dense runs", dense_targets, None),
    "figure1": ("Figures 1, A2: IMP with rewinding", lambda: _figures(["figure1"]), None),
    "figure2": (
        "Figure 2: the early-phase timeline",
        lambda: expand("results/{net}/summary/timeline.txt", net=NETWORKS),
        None,
    ),
    "figure3": (
        "Figures 3, A3: early-phase telemetry",
        lambda: _figures(["figure3"])
        + expand("results/figures/figureA3.{ext}", ext=["pdf", "png"]),
        None,
    ),
    **{
        f"figure{n}": (
            f"Figure {n} (A{n}): perturbations (Figures 4-8 share their runs)",
            lambda n=n: _figures([f"figure{n}"]),
            "perturb.run" if not VARIANTS else None,
        )
        for n in (4, 5, 6, 7, 8)
    },
    "figure9": (
        "Figures 9, A9-A12: pre-training on other tasks",
        lambda: _figures(["figure9"]),
        "pretrain.tasks" if not PRE_TASKS else None,
    ),
    "figure10": (
        "Figure 10: sparse pre-training",
        lambda: _figures(["figure10"]),
        "pretrain.sparse.kinds" if not SPARSE["kinds"] else None,
    ),
    "instability": (
        "beyond the paper: instability analysis",
        stability_targets,
        "stability.rewind_iterations" if not STABILITY_REWINDS else None,
    ),
    "sharpness": (
        "beyond the paper: top Hessian eigenvalue",
        sharpness_targets,
        "hessian.iterations" if not HESSIAN_ITS else None,
    ),
    "claims": (
        "the claims table",
        lambda: [f"results/claims/claims.{ext}" for ext in ("h5", "tsv", "html")],
        None,
    ),
}


def experiment(name):
    """The input function of the experiment ``name``'s target, which lists its files, or, when the
    config leaves the experiment out, stops naming the key (a target that would do nothing)."""
    _, files, off = EXPERIMENTS[name]

    def inputs(wildcards):
        if off:
            raise WorkflowError(
                f"target {name}: this config runs none of it ({off} is empty); "
                f"set {off} in your config overlay to run it"
            )
        return files()

    return inputs


def all_targets():
    """Every experiment the config runs (the default target)."""
    return [f for _, files, off in EXPERIMENTS.values() if not off for f in files()]


# ---- the claims table's inputs (rules/report.smk) ---------------------------------------------
CLAIMS_NETWORK = "resnet20" if "resnet20" in NETWORKS else NETWORKS[0]
# Its code as inputs: editing how a claim is judged or written re-makes the table, nothing else.
CLAIMS_CODE = [
    os.path.join(workflow.basedir, "pipeline_scripts", "earlyphase", f"{name}.py")
    for name in (
        "paper",
        "claim",
        "claims",
        "claims_paper",
        "claims_perturb",
        "claims_beyond",
        "claims_io",
    )
]


# (kind, key, path) of every file the claims table reads, for the configured experiments.
_CLAIMS_FILES = (
    [
        ("dense", f"{n}/{s}", f"results/{n}/seed{s}/dense/metrics.h5")
        for n in NETWORKS
        for s in SEEDS
    ]
    + [("telemetry", CLAIMS_NETWORK, f"results/{CLAIMS_NETWORK}/summary/telemetry.h5")]
    + (
        [("imp", CLAIMS_NETWORK, f"results/{CLAIMS_NETWORK}/summary/imp.h5")]
        if IMP_LEVELS and IMP_REWINDS
        else []
    )
    + [
        ("perturb", k, f"results/{CLAIMS_NETWORK}/summary/perturb_rewind{k}.h5")
        for k in (PERTURB_REWINDS if VARIANTS else [])
    ]
    + [
        ("pretrain", task, f"results/{CLAIMS_NETWORK}/summary/pretrain_{task}.h5")
        for task in PRE_TASKS
    ]
    + (
        [
            (
                "sparse",
                CLAIMS_NETWORK,
                f"results/{CLAIMS_NETWORK}/summary/sparse_pretrain.h5",
            )
        ]
        if SPARSE["kinds"]
        else []
    )
    + (  # beyond the paper
        [
            (
                "stability",
                CLAIMS_NETWORK,
                f"results/{CLAIMS_NETWORK}/summary/stability.h5",
            )
        ]
        if STABILITY_REWINDS
        else []
    )
    + (
        [("hessian", CLAIMS_NETWORK, f"results/{CLAIMS_NETWORK}/summary/hessian.h5")]
        if HESSIAN_ITS
        else []
    )
)
