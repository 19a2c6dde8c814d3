# The data-dependence of the early phase (Section 6, Figures 9, 10, A9-A12). A network is
# pre-trained on a task (random labels, rotation, blur, blur + rotation) from the seed's
# initialisation; its state then starts an IMP chain (rules/imp.smk, source pretrain/<task>/e<E>)
# whose level 0 trains the unpruned network normally from it. Sparse pre-training (6.4) pre-trains
# sub-networks under their masks with rotation prediction before training them on CIFAR-10.


rule pretrain:
    input:
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/pretrain/{task}/e{epochs}/state.pt",
        metrics="results/{net}/seed{seed}/pretrain/{task}/e{epochs}/metrics.h5",
    log:
        "logs/{net}/seed{seed}/pretrain/{task}/e{epochs}/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/pretrain/{task}/e{epochs}/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        job=pretrain_job,
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_job.py"


rule train_from_pretrained:
    input:
        data=DATA_FILE,
        start="results/{net}/seed{seed}/pretrain/{task}/e{epochs}/state.pt",
    output:
        final="results/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/final.pt",
        metrics="results/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/metrics.h5",
    log:
        "logs/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        job=level0_job,
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_job.py"


rule sparse_pretext:
    input:
        unpack(sparse_inputs),
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/state.pt",
        metrics="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/metrics.h5",
        mask="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/mask.pt",
    log:
        "logs/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        job=sparse_pretext_job,
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_job.py"


rule sparse_train:
    input:
        unpack(sparse_inputs),
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/final.pt",
        metrics="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/metrics.h5",
        mask="results/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/mask.pt",
    log:
        "logs/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/train.log",
    benchmark:
        "benchmarks/{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}/train.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        job=sparse_job,
        workdir=resume_dir,
    script:
        "../pipeline_scripts/train_job.py"


rule figure9:
    input:
        summaries=expand("results/{{net}}/summary/pretrain_{task}.h5", task=PRE_TASKS),
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure9/{net}.pdf",
        png="results/figures/figure9/{net}.png",
    log:
        "logs/figures/figure9/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        tasks=PRE_TASKS,
        epochs=PRE_EPOCHS,
        references=PRETRAIN["reference_rewinds"],
    script:
        "../pipeline_scripts/figure9.py"


rule figure10:
    input:
        summary="results/{net}/summary/sparse_pretrain.h5",
        code=PLOTS_CODE,
    output:
        pdf="results/figures/figure10/{net}.pdf",
        png="results/figures/figure10/{net}.png",
    log:
        "logs/figures/figure10/{net}.log",
    conda:
        "../envs/pipeline.yaml"
    params:
        rewind=SPARSE["rewind_iteration"],
        task=SPARSE["task"],
        epochs=SPARSE["epochs"],
    script:
        "../pipeline_scripts/figure10.py"
