# Beyond the paper: the top eigenvalue of the training-loss Hessian (Lanczos on
# Hessian-vector products over a fixed training sample) at the dense runs' kept states: every
# hessian.iterations (null = every dense checkpoint, the rewind points among them).
# pipeline_scripts/earlyphase/hessian.py.


rule hessian:
    input:
        data=DATA_FILE,
        checkpoints=expand(
            "results/{{net}}/seed{{seed}}/dense/checkpoints/iter{k}.pt", k=HESSIAN_ITS
        ),
    output:
        "results/{net}/seed{seed}/dense/hessian.h5",
    log:
        "logs/{net}/seed{seed}/dense/hessian.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/dense/hessian.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: JOB_THREADS
    resources:
        **gpu_job_resources("hessian"),
    params:
        iterations=HESSIAN_ITS,
        hparams=lambda w: _HPARAMS[w.net],
        samples=HESSIAN["samples"],
        steps=HESSIAN["steps"],
    script:
        "../pipeline_scripts/hessian_job.py"


rule summarise_hessian:
    input:
        runs=expand("results/{{net}}/seed{seed}/dense/hessian.h5", seed=SEEDS),
    output:
        "results/{net}/summary/hessian.h5",
    log:
        "logs/{net}/summary/hessian.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        rewinds=IMP_REWINDS,
    script:
        "../pipeline_scripts/summarise_hessian.py"


rule plot_sharpness:
    input:
        summary="results/{net}/summary/hessian.h5",
        code=[PLOTS_CODE, PLOTS_BEYOND_CODE],
    output:
        pdf="results/figures/sharpness/{net}.pdf",
        png=report(
            "results/figures/sharpness/{net}.png",
            caption="../report/sharpness.rst",
            category="Beyond the paper: instability and sharpness",
            subcategory="{net}",
            labels={"figure": "Sharpness", "network": "{net}"},
        ),
    log:
        "logs/figures/sharpness/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/plot_sharpness.py"
