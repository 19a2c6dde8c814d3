# The Early Phase of Neural Network Training (Frankle, Schwab & Morcos, ICLR 2020), from raw data
# to every figure. The Snakefile only wires stages together; see README.md.
#
# Output path scheme (logs/ and benchmarks/ mirror results/):
#   results/data/cifar10.h5                                   the data set, prepared once
#   results/{net}/seed{seed}/dense/final.pt, metrics.h5       dense run (Section 3, App. A)
#   results/{net}/seed{seed}/dense/checkpoints/iter{k}.pt     its weights after k steps
#   results/{net}/seed{seed}/imp/rewind{k}/level{L}/          IMP level L rewound to k:
#                                          mask.pt, final.pt, metrics.h5   (Figure 1)
#   results/{net}/seed{seed}/dense/telemetry_raw.h5           first-T-iterations telemetry with
#                                                             float16 weight snapshots (Section 4)
#   results/{net}/seed{seed}/dense/telemetry.h5               + distances to the final weights
#   results/{net}/summary/telemetry.h5, timeline.txt          seeds summarised; Figure 2 timeline
#   results/{net}/summary/imp.h5                              all seeds, levels and k (Figure 1)
#   results/figures/figure1/{net}.pdf|png                     Figure 1 / A2
#   results/figures/figure3/{net}.pdf|png, figureA3.pdf|png   Figure 3 / A3
#   resume/<output dir>/                                      resume state of unfinished jobs

import os


# The paper's protocol; found beside this Snakefile even with --directory elsewhere.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/dense.smk"
include: "rules/imp.smk"
include: "rules/telemetry.smk"


rule all:
    default_target: True
    input:
        dense_targets(),
        figure1_targets(),
        figure3_targets(),


rule dense:
    input:
        dense_targets(),
