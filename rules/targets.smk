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
    targets += stability_targets() + sharpness_targets()  # beyond the paper
    targets += [f"results/claims/claims.{ext}" for ext in ("h5", "tsv", "html")]
    return targets


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
