# The claims table (issue 8): every quantitative claim of the paper beside the value this run
# measured, with a verdict and the run's scale (pipeline_scripts/earlyphase/claims.py). It reads
# the dense runs' metrics files of every network (Table A1, the scale) and the summaries of the
# main network (ResNet-20 when configured, as in the paper's main body) for the experiments the
# config runs; a disabled experiment's claims say "not run". `snakemake --report` shows its HTML
# table beside the figures (captions in report/).

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
    + (  # beyond the paper (issue 14)
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


rule claims:
    input:
        files=[path for _, _, path in _CLAIMS_FILES],
        code=CLAIMS_CODE,
    output:
        h5="results/claims/claims.h5",
        tsv="results/claims/claims.tsv",
        html=report(
            "results/claims/claims.html",
            caption="../report/claims.rst",
            category="Claims table",
            labels={"table": "paper claims beside this run"},
        ),
    log:
        "logs/claims/claims.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        layout=[[kind, key] for kind, key, _ in _CLAIMS_FILES],
        networks=NETWORKS,
        main=CLAIMS_NETWORK,
        settings={
            "data_source": config["data"]["source"],
            "imp_levels": IMP["levels"],
            "imp_fraction": IMP["fraction"],
            "imp_rewinds": IMP_REWINDS,
            "perturb_rewinds": PERTURB_REWINDS if VARIANTS else [],
            "variants": VARIANTS,
            "figure8_level": PERTURB["figure8_level"],
            "pretrain_tasks": PRE_TASKS,
            "pretrain_epochs": PRE_EPOCHS,
            "sparse": SPARSE,
        },
    script:
        "../pipeline_scripts/claims.py"
