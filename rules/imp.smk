# Iterative magnitude pruning with rewinding (Section 3, Figure 1). One job per level: it prunes
# 20% of the weights level L-1 kept (global magnitude), rewinds to the chain's start state and
# trains under the new mask. The start ("source") is the dense run's weights at iteration k
# (rewind<k>) or a pre-trained state (pretrain/<task>/e<epochs>, Section 6): one mechanism.


training_rule(
    "train_imp_level",
    run="{net}/seed{seed}/imp/{source}/level{level}",
    inputs=imp_inputs,
    outputs={"mask": "mask.pt", "final": "final.pt", "metrics": "metrics.h5"},
    job=imp_job,
)
