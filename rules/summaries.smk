# Seeds summarised, one file per figure family (results/{net}/summary/{name}.h5): the IMP chains
# (Figure 1), the perturbations at each k (Figures 4-8), each pre-training task (Figure 9) and
# sparse pre-training (Figure 10). The runs of each summary: summary_runs in rules/common.smk.
# (The telemetry, stability and Hessian families summarise in their own stage files.)


rule summarise:
    input:
        runs=summary_files,
    output:
        "results/{net}/summary/{name}.h5",
    log:
        "logs/{net}/summary/{name}.log",
    wildcard_constraints:
        name="imp|perturb_rewind\\d+|pretrain_[a-z0-9_]+|sparse_pretrain",
    conda:
        "../envs/pipeline.yaml"
    params:
        runs=summary_keys,
    script:
        "../pipeline_scripts/summarise.py"
