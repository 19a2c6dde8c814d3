# Beyond the paper: instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020).
# For each dense run and rewind point k (stability.rewind_iterations), two copies train from the
# iteration-k weights to the end (steps k..T, as every rewound run) on independent samples of SGD
# noise (data streams copy1 / copy2); the test error along the straight line between them gives the
# error barrier. With stability.sparse_level L the same for the IMP sub-network of chain rewind<k>
# at level L (its mask, the iteration-k weights). pipeline_scripts/earlyphase/stability.py.


rule train_stability_copy:
    input:
        unpack(stability_copy_inputs),
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/stability/{sub}/k{k}/{replica}/final.pt",
        metrics="results/{net}/seed{seed}/stability/{sub}/k{k}/{replica}/metrics.h5",
    log:
        "logs/{net}/seed{seed}/stability/{sub}/k{k}/{replica}/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/stability/{sub}/k{k}/{replica}/train.tsv"
    wildcard_constraints:
        sub=r"dense|level[1-9]\d*",
        replica="copy[12]",
    conda:
        "../envs/pipeline.yaml"
    threads: JOB_THREADS
    resources:
        **gpu_job_resources("train"),
    params:
        job=stability_copy_job,
    script:
        "../pipeline_scripts/train_job.py"


rule interpolate:
    input:
        data=DATA_FILE,
        finals=expand(
            "results/{{net}}/seed{{seed}}/stability/{{sub}}/k{{k}}/{replica}/final.pt",
            replica=["copy1", "copy2"],
        ),
        metrics=expand(
            "results/{{net}}/seed{{seed}}/stability/{{sub}}/k{{k}}/{replica}/metrics.h5",
            replica=["copy1", "copy2"],
        ),
    output:
        "results/{net}/seed{seed}/stability/{sub}/k{k}/interpolation.h5",
    log:
        "logs/{net}/seed{seed}/stability/{sub}/k{k}/interpolate.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/stability/{sub}/k{k}/interpolate.tsv"
    wildcard_constraints:
        sub=r"dense|level[1-9]\d*",
    conda:
        "../envs/pipeline.yaml"
    threads: JOB_THREADS
    resources:
        **gpu_job_resources("interpolate"),
    params:
        hparams=lambda w: _HPARAMS[w.net],
        points=STABILITY["points"],
        batchnorm=STABILITY["batchnorm"],
        bn_samples=STABILITY["bn_samples"],
    script:
        "../pipeline_scripts/interpolate.py"


rule summarise_stability:
    input:
        runs=stability_files,
    output:
        "results/{net}/summary/stability.h5",
    log:
        "logs/{net}/summary/stability.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/summarise_stability.py"


rule plot_instability:
    input:
        summary="results/{net}/summary/stability.h5",
        code=[PLOTS_CODE, PLOTS_BEYOND_CODE],
    output:
        pdf="results/figures/instability/{net}.pdf",
        png=report(
            "results/figures/instability/{net}.png",
            caption="../report/instability.rst",
            category="Beyond the paper: instability and sharpness",
            subcategory="{net}",
            labels={"figure": "Instability", "network": "{net}"},
        ),
    log:
        "logs/figures/instability/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    script:
        "../pipeline_scripts/plot_instability.py"
