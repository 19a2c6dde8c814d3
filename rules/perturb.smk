# Perturbing rewound sub-networks (Section 5, Figures 4-8). A branch takes the IMP mask of level L
# in the chain rewound to k, perturbs the dense run's iteration-k weights under it (signs and
# magnitudes, shuffles, same-sign shuffles, noise), and trains the result under the same mask.


for (_seeds, _nets), _variants in itertools.product(SEED_GROUPS, VARIANT_GROUPS):

    rule:
        name:
            group_name("train_perturbed", _seeds, _variants)
        input:
            data=DATA_FILE,
            start=per_seed(
                "results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt", _seeds, _variants
            ),
            init0=per_seed("results/{net}/seed{seed}/dense/checkpoints/iter0.pt", _seeds, _variants),
            mask=per_seed(
                "results/{net}/seed{seed}/imp/rewind{k}/level{level}/mask.pt", _seeds, _variants
            ),
        output:
            final=per_seed(
                "results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/final.pt",
                _seeds,
                _variants,
            ),
            metrics=per_seed(
                "results/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/metrics.h5",
                _seeds,
                _variants,
            ),
        log:
            per_group(
                "logs/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.log",
                _seeds,
                _variants,
            ),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}/train.tsv",
                _seeds,
                _variants,
            )
        wildcard_constraints:
            net=group_nets(_nets),
        conda:
            "../envs/pipeline.yaml"
        threads: JOB_THREADS
        resources:
            **gpu_job_resources("train", _seeds, _variants),
        params:
            job=per_run_params(perturb_job, _seeds, _variants),
            members=members(_seeds, _variants),
        script:
            "../pipeline_scripts/train_job.py"
