# Perturbing rewound sub-networks (Section 5, Figures 4-8). A branch takes the IMP mask of level L
# in the chain rewound to k, perturbs the dense run's iteration-k weights under it (signs and
# magnitudes, shuffles, same-sign shuffles, noise), and trains the result under the same mask.


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("train_perturbed", _seeds)
        input:
            data=DATA_FILE,
            start=per_seed("results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt", _seeds),
            init0=per_seed("results/{net}/seed{seed}/dense/checkpoints/iter0.pt", _seeds),
            mask=per_seed("results/{net}/seed{seed}/imp/rewind{k}/level{level}/mask.pt", _seeds),
        output:
            final=per_seed(
                "results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/final.pt",
                _seeds,
            ),
            metrics=per_seed(
                "results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/metrics.h5",
                _seeds,
            ),
        log:
            per_group(
                "logs/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.log",
                _seeds,
            ),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.tsv",
                _seeds,
            )
        wildcard_constraints:
            net=group_nets(_nets),
        conda:
            "../envs/pipeline.yaml"
        threads: JOB_THREADS
        resources:
            **gpu_job_resources("train", _seeds),
        params:
            job=perturb_job,
            seeds=_seeds,
        script:
            "../pipeline_scripts/train_job.py"
