# The Early Phase of Neural Network Training (Frankle, Schwab & Morcos, ICLR 2020), from raw data
# to every figure. The Snakefile only wires stages together; see README.md and docs/architecture.md.
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
#   results/{net}/seed{seed}/pretrain/{task}/e{E}/state.pt    pre-trained on a task (Section 6)
#   results/{net}/seed{seed}/imp/pretrain/{task}/e{E}/level{L}/  IMP chain rewound to that state
#   results/{net}/seed{seed}/sparse/rewind{k}/level{L}/{kind}/{pretext,scratch,pretrained}/
#                                                             sparse pre-training (Section 6.4)
#   results/{net}/summary/{imp,perturb_rewind{k},pretrain_{task},sparse_pretrain}.h5
#                                                             seeds summarised, one per figure
#   results/{net}/seed{seed}/perturb/rewind{k}/level{L}/{variant}/final.pt, metrics.h5
#                                                             a perturbed branch (Section 5)
#   results/figures/figure1/{net}.pdf|png                     Figure 1 / A2
#   results/figures/figure3/{net}.pdf|png, figureA3.pdf|png   Figure 3 / A3
#   results/figures/figure{4..8}/{net}.pdf|png                Figures 4-8 / A4-A8
#   results/figures/figure{9,10}/{net}.pdf|png                Figures 9-10 / A9-A12
# Beyond the paper:
#   results/{net}/seed{seed}/stability/{dense,level{L}}/k{k}/copy{1,2}/final.pt, metrics.h5
#                                          two copies trained k..T on independent SGD noise
#   results/{net}/seed{seed}/stability/{dense,level{L}}/k{k}/interpolation.h5   error on the path
#   results/{net}/seed{seed}/dense/hessian.h5                 top Hessian eigenvalue per checkpoint
#   results/{net}/summary/{stability,hessian}.h5              seeds summarised
#   results/figures/{instability,sharpness}/{net}.pdf|png     their figures
#   resume/<output dir>/                                      resume state of unfinished jobs

import os

from snakemake.utils import min_version

min_version("9.0")  # the settings API, YTE profiles and the executor plugins this workflow uses


# The paper's protocol; found beside this Snakefile even with --directory elsewhere.
configfile: os.path.join(workflow.basedir, "config.yaml")


# `snakemake --report report.html`: this front text, every figure with its caption (report/),
# the claims table and the run statistics, in one self-contained file.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/params.smk"
include: "rules/seed_groups.smk"
include: "rules/training.smk"
include: "rules/common_beyond.smk"
include: "rules/targets.smk"
include: "rules/data.smk"
include: "rules/dense.smk"
include: "rules/imp.smk"
include: "rules/telemetry.smk"
include: "rules/perturb.smk"
include: "rules/pretrain.smk"
include: "rules/stability.smk"
include: "rules/sharpness.smk"
include: "rules/summaries.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# One target rule per experiment of the paper (rules/targets.smk: EXPERIMENTS), for the configured
# networks and seeds: `snakemake --profile profiles/slurm figure1 --config networks=[resnet20]`, or
# `make figure1 NET=resnet20` (which prints its cost first).


rule table_a1:
    input:
        experiment("table_a1"),


rule figure1:
    input:
        experiment("figure1"),


rule figure2:
    input:
        experiment("figure2"),


rule figure3:
    input:
        experiment("figure3"),


rule figure4:
    input:
        experiment("figure4"),


rule figure5:
    input:
        experiment("figure5"),


rule figure6:
    input:
        experiment("figure6"),


rule figure7:
    input:
        experiment("figure7"),


rule figure8:
    input:
        experiment("figure8"),


rule figure9:
    input:
        experiment("figure9"),


rule figure10:
    input:
        experiment("figure10"),


rule instability:
    input:
        experiment("instability"),


rule sharpness:
    input:
        experiment("sharpness"),
