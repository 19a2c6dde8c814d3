# Perturbing rewound sub-networks (Section 5, Figures 4-8). A branch takes the IMP mask of level L
# in the chain rewound to k, perturbs the dense run's iteration-k weights under it (signs and
# magnitudes, shuffles, same-sign shuffles, noise), and trains the result under the same mask.
# The {variant} in the run directory lets runtime.variants_per_job batch variants of one (k, level).


training_rule(
    "train_perturbed",
    run="{net}/seed{seed}/perturb/rewind{k}/level{level}/{variant}",
    inputs={
        "start": "results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt",
        "init0": "results/{net}/seed{seed}/dense/checkpoints/iter0.pt",
        "mask": "results/{net}/seed{seed}/imp/rewind{k}/level{level}/mask.pt",
    },
    outputs={"final": "final.pt", "metrics": "metrics.h5"},
    job=perturb_job,
)
