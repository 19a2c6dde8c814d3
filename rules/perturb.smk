# Perturbing rewound sub-networks (Section 5, Figures 4-8). A branch takes the IMP mask of level L
# in the chain rewound to k, perturbs the dense run's iteration-k weights under it (signs and
# magnitudes, shuffles, same-sign shuffles, noise), and trains the result under the same mask.


rule train_perturbed:
    input:
        data=DATA_FILE,
        start="results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt",
        init0="results/{net}/seed{seed}/dense/checkpoints/iter0.pt",
        mask="results/{net}/seed{seed}/imp/rewind{k}/level{level}/mask.pt",
    output:
        final="results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/final.pt",
        metrics="results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/metrics.h5",
    log:
        "logs/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        job=perturb_job,
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_job.py"


rule figure_perturb:
    input:
        summaries=expand(
            "results/{{net}}/summary/perturb_rewind{k}.h5", k=PERTURB_REWINDS
        ),
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure{fig}/{net}.pdf",
        png="results/figures/figure{fig}/{net}.png",
    log:
        "logs/figures/figure{fig}/{net}.log",
    wildcard_constraints:
        fig="[4-8]",
    conda:
        "../envs/pipeline.yaml"
    params:
        rewinds=PERTURB_REWINDS,
        variants=VARIANTS,
        figure8_level=PERTURB["figure8_level"],
    script:
        "../pipeline_scripts/figure_perturb.py"
