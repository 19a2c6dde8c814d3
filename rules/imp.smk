# Iterative magnitude pruning with rewinding (Section 3, Figure 1). One job per level: it prunes
# 20% of the weights level L-1 kept (global magnitude), rewinds to the dense run's weights at
# iteration k, and trains under the new mask. Mask, weights and metrics are the level's own files.


rule train_imp_level:
    input:
        unpack(imp_previous),
        data=DATA_FILE,
        start="results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt",
    output:
        mask="results/{net}/seed{seed}/imp/rewind{k}/level{level}/mask.pt",
        final="results/{net}/seed{seed}/imp/rewind{k}/level{level}/final.pt",
        metrics="results/{net}/seed{seed}/imp/rewind{k}/level{level}/metrics.h5",
    log:
        "logs/{net}/seed{seed}/imp/rewind{k}/level{level}/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/imp/rewind{k}/level{level}/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        hparams=hparams,
        runtime=runtime,
        eval_every=config["evaluation"]["every_epochs"],
        fraction=IMP["fraction"],
        exclude=IMP["exclude"],
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_imp_level.py"


rule summarise_imp:
    input:
        runs=imp_summary_files,
    output:
        "results/{net}/summary/imp.h5",
    log:
        "logs/{net}/summary/imp.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        runs=imp_summary_keys,
    script:
        "../pipeline_scripts/summarise.py"


rule figure1:
    input:
        summary="results/{net}/summary/imp.h5",
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure1/{net}.pdf",
        png="results/figures/figure1/{net}.png",
    log:
        "logs/figures/figure1/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/figure1.py"
