# Iterative magnitude pruning with rewinding (Section 3, Figure 1). One job per level: it prunes
# 20% of the weights level L-1 kept (global magnitude), rewinds to the chain's start state and
# trains under the new mask. The start ("source") is the dense run's weights at iteration k
# (rewind<k>) or a pre-trained state (pretrain/<task>/e<epochs>, Section 6): one mechanism.


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("train_imp_level", _seeds)
        input:
            unpack(per_seed_inputs(imp_inputs, _seeds)),
            data=DATA_FILE,
        output:
            mask=per_seed("results/{net}/seed{seed}/imp/{source}/level{level}/mask.pt", _seeds),
            final=per_seed("results/{net}/seed{seed}/imp/{source}/level{level}/final.pt", _seeds),
            metrics=per_seed(
                "results/{net}/seed{seed}/imp/{source}/level{level}/metrics.h5", _seeds
            ),
        log:
            per_group("logs/{net}/seed{seed}/imp/{source}/level{level}/train.log", _seeds),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/imp/{source}/level{level}/train.tsv",
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
            job=per_run_params(imp_job, _seeds),
            members=members(_seeds),
        script:
            "../pipeline_scripts/train_job.py"
