# Dense training (Section 3, Appendix A): one job per network x seed. Keeps the weights at every
# dense.checkpoint_iterations as separate outputs, so each downstream job depends on exactly the
# rewind point it uses, and records the early-phase telemetry (Section 4).


rule train_dense:
    input:
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/dense/final.pt",
        metrics="results/{net}/seed{seed}/dense/metrics.h5",
        telemetry="results/{net}/seed{seed}/dense/telemetry_raw.h5",
        checkpoints=expand(
            "results/{{net}}/seed{{seed}}/dense/checkpoints/iter{k}.pt", k=DENSE_CKPTS
        ),
    log:
        "logs/{net}/seed{seed}/dense/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/dense/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: JOB_THREADS
    resources:
        **gpu_job_resources("train_dense"),
    params:
        job=dense_job,
    script:
        "../pipeline_scripts/train_job.py"
