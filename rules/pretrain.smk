# The data-dependence of the early phase (Section 6, Figures 9, 10, A9-A12). A network is
# pre-trained on a task (random labels, rotation, blur, blur + rotation) from the seed's
# initialisation; its state then starts an IMP chain (rules/imp.smk, source pretrain/<task>/e<E>)
# whose level 0 trains the unpruned network normally from it. Sparse pre-training (6.4) pre-trains
# sub-networks under their masks with rotation prediction before training them on CIFAR-10.


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("pretrain", _seeds)
        input:
            data=DATA_FILE,
        output:
            final=per_seed("results/{net}/seed{seed}/pretrain/{task}/e{epochs}/state.pt", _seeds),
            metrics=per_seed(
                "results/{net}/seed{seed}/pretrain/{task}/e{epochs}/metrics.h5", _seeds
            ),
        log:
            per_group("logs/{net}/seed{seed}/pretrain/{task}/e{epochs}/train.log", _seeds),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/pretrain/{task}/e{epochs}/train.tsv",
                _seeds,
            )
        wildcard_constraints:
            net=group_nets(_nets),
        conda:
            "../envs/pipeline.yaml"
        threads: JOB_THREADS
        resources:
            **gpu_job_resources("pretrain", _seeds),
        params:
            job=per_run_params(pretrain_job, _seeds),
            members=members(_seeds),
        script:
            "../pipeline_scripts/train_job.py"


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("train_from_pretrained", _seeds)
        input:
            data=DATA_FILE,
            start=per_seed("results/{net}/seed{seed}/pretrain/{task}/e{epochs}/state.pt", _seeds),
        output:
            final=per_seed(
                "results/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/final.pt",
                _seeds,
            ),
            metrics=per_seed(
                "results/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/metrics.h5",
                _seeds,
            ),
        log:
            per_group(
                "logs/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/train.log",
                _seeds,
            ),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/train.tsv",
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
            job=per_run_params(level0_job, _seeds),
            members=members(_seeds),
        script:
            "../pipeline_scripts/train_job.py"


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("sparse_pretext", _seeds)
        input:
            unpack(per_seed_inputs(sparse_pretext_inputs, _seeds)),
            data=DATA_FILE,
        output:
            final=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/state.pt",
                _seeds,
            ),
            metrics=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/metrics.h5",
                _seeds,
            ),
            mask=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/mask.pt",
                _seeds,
            ),
        log:
            per_group(
                "logs/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/train.log",
                _seeds,
            ),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/train.tsv",
                _seeds,
            )
        wildcard_constraints:
            net=group_nets(_nets),
        conda:
            "../envs/pipeline.yaml"
        threads: JOB_THREADS
        resources:
            **gpu_job_resources("sparse_pretext", _seeds),
        params:
            job=per_run_params(sparse_pretext_job, _seeds),
            members=members(_seeds),
        script:
            "../pipeline_scripts/train_job.py"


for _seeds, _nets in SEED_GROUPS:

    rule:
        name:
            group_name("sparse_train", _seeds)
        input:
            unpack(per_seed_inputs(sparse_train_inputs, _seeds)),
            data=DATA_FILE,
        output:
            final=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/final.pt",
                _seeds,
            ),
            metrics=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/metrics.h5",
                _seeds,
            ),
            mask=per_seed(
                "results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/mask.pt",
                _seeds,
            ),
        log:
            per_group(
                "logs/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/train.log",
                _seeds,
            ),
        benchmark:
            per_group(
                "benchmarks/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/train.tsv",
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
            job=per_run_params(sparse_job, _seeds),
            members=members(_seeds),
        script:
            "../pipeline_scripts/train_job.py"
