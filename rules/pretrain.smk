# The data-dependence of the early phase (Section 6, Figures 9, 10, A9-A12). A network is
# pre-trained on a task (random labels, rotation, blur, blur + rotation) from the seed's
# initialisation; its state then starts an IMP chain (rules/imp.smk, source pretrain/<task>/e<E>)
# whose level 0 trains the unpruned network normally from it. Sparse pre-training (6.4) pre-trains
# sub-networks under their masks with rotation prediction before training them on CIFAR-10.


training_rule(
    "pretrain",
    run="{net}/seed{seed}/pretrain/{task}/e{epochs}",
    outputs={"final": "state.pt", "metrics": "metrics.h5"},
    job=pretrain_job,
    stage="pretrain",
)

training_rule(
    "train_from_pretrained",
    run="{net}/seed{seed}/imp/pretrain/{task}/e{epochs}/level0",
    inputs={"start": "results/{net}/seed{seed}/pretrain/{task}/e{epochs}/state.pt"},
    outputs={"final": "final.pt", "metrics": "metrics.h5"},
    job=level0_job,
)

training_rule(
    "sparse_pretext",
    run="{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/pretext",
    inputs=sparse_pretext_inputs,
    outputs={"final": "state.pt", "metrics": "metrics.h5", "mask": "mask.pt"},
    job=sparse_pretext_job,
    stage="sparse_pretext",
)

training_rule(
    "sparse_train",
    run="{net}/seed{seed}/sparse/rewind{k}/level{level}/{kind}/{start}",
    inputs=sparse_train_inputs,
    outputs={"final": "final.pt", "metrics": "metrics.h5", "mask": "mask.pt"},
    job=sparse_job,
)
