# The training rules' one definition: every stage whose jobs run pipeline_scripts/train_job.py
# for one run or for a group of runs (rules/seed_groups.smk) declares its rules by calling
# training_rule (rules/imp.smk, perturb.smk, pretrain.smk). Defines no rules itself.
#
# A function, not Snakemake's `use rule X as Y with`, because each stage needs one rule per seed
# group (and per variant group) under a generated name, so `use rule` would still need this loop
# in every stage file and would override nearly every directive (name, input, output, log,
# benchmark, params, resources, wildcard constraints). A call naming only what differs between
# stages reads as the stage's declaration, and a new stage is one more call.

import itertools


def training_rule(name, run, outputs, job, inputs=None, stage="train"):
    """Declare the rules of one training stage: ``name`` (the rule's base name), ``run`` (the run
    directory under results/, logs/ and benchmarks/, with {net} and {seed} wildcards), ``outputs``
    ({name: file in the run directory}), ``job`` (the params.job function of one run, params.smk),
    ``inputs`` besides the data set (a {name: pattern} dict, or a function of one run's wildcards
    returning such a dict) and ``stage`` (its STAGE_SHARE entry, for the resources).

    One rule per seed group (runtime.runs_per_job) and, when ``run`` has a {variant} wildcard, per
    variant group (runtime.variants_per_job); a group's job trains its runs together and writes
    each run's own files, with one log and one benchmark per job."""
    variant_groups = VARIANT_GROUPS if "{variant}" in run else [None]
    for (seeds, nets), variants in itertools.product(SEED_GROUPS, variant_groups):
        if callable(inputs):  # a function of one run's wildcards
            unpacked, named = [unpack(per_seed_inputs(inputs, seeds, variants))], {}
        else:  # patterns of one run
            unpacked = []
            named = {key: per_seed(path, seeds, variants) for key, path in (inputs or {}).items()}

        rule:
            name:
                group_name(name, seeds, variants)
            input:
                *unpacked,
                **{"data": DATA_FILE, **named},
            output:
                **{
                    key: per_seed(f"results/{run}/{file}", seeds, variants)
                    for key, file in outputs.items()
                },
            log:
                per_group(f"logs/{run}/train.log", seeds, variants),
            benchmark:
                per_group(f"benchmarks/{run}/train.tsv", seeds, variants)
            wildcard_constraints:
                net=group_nets(nets),
            conda:
                "../envs/pipeline.yaml"
            threads: JOB_THREADS
            resources:
                **gpu_job_resources(stage, seeds, variants),
            params:
                job=per_run_params(job, seeds, variants),
                members=members(seeds, variants),
            script:
                "../pipeline_scripts/train_job.py"
