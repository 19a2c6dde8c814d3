# The claims table: every quantitative claim of the paper beside the value this run
# measured, with a verdict and the run's scale (pipeline_scripts/earlyphase/claims.py). It reads
# the dense runs' metrics files of every network (Table A1, the scale) and the summaries of the
# main network (ResNet-20 when configured, as in the paper's main body) for the experiments the
# config runs; a disabled experiment's claims say "not run". `snakemake --report` shows its HTML
# table beside the figures (captions in report/).


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
