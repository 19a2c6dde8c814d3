"""Entry point of every training rule (train_dense, train_imp_level, train_perturbed, pretrain,
train_from_pretrained, sparse_pretext, sparse_train).

The rules differ only in which files they name, so one entry point maps Snakemake's named
inputs/outputs onto ``runs.Job`` and takes everything else from the rule's ``params.job`` dict
(built in rules/common.smk). Named inputs: data, start (starting weights), prev_final/prev_mask
(the level to prune from), mask (train under it), mask_like (random mask of its sparsity), init0
(iteration-0 weights for perturbations). Named outputs: final, metrics, mask, telemetry,
checkpoints (one per params.job["snapshot_iterations"]).

With ``runtime.runs_per_job`` > 1 (or ``variants_per_job`` > 1 for train_perturbed) a rule covers
several runs (``params.members``: each run's seed and variant): every named input and output and
``params.job`` are then lists with one entry per run, and the runs train together
(runs.run_group). ``runtime`` comes from the config, not from params: it says how jobs run, not
what they compute, so changing it re-runs nothing.
"""

import os

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import runs  # noqa: E402

smk = snakemake  # noqa: F821
i, o = smk.input, smk.output
runtime = smk.config["runtime"]
members = smk.params.get("members") or []  # grouped: one {seed, variant} per run


def pick(value, j):
    """The j-th run's file of a grouped rule (value is a list), or the file itself."""
    return value if value is None or j is None else value[j]


def job(j=None):
    """runs.Job of the j-th run of a grouped rule, or of the rule's one run (j None)."""
    member = members[j] if j is not None else {}
    spec = dict(smk.params.job[j] if j is not None else smk.params.job)
    ckpts = list(o.get("checkpoints") or []) if j is None else []  # dense runs: never grouped
    snapshots = dict(zip(spec.pop("snapshot_iterations", []), ckpts, strict=True))
    final = pick(o.final, j)
    prev_final = pick(i.get("prev_final"), j)
    return runs.Job(
        network=smk.wildcards.net,
        seed=int(member.get("seed", smk.wildcards.get("seed"))),
        data_path=i.data,
        out_final=final,
        out_metrics=pick(o.metrics, j),
        out_mask=pick(o.get("mask"), j),
        out_telemetry=o.get("telemetry"),
        snapshots=snapshots,
        # Resume state lives beside, never inside, the outputs (Snakemake deletes those on failure)
        workdir=os.path.join("resume", os.path.dirname(final)),
        threads=smk.threads,
        runtime=runtime,
        init=pick(i.get("start"), j),
        mask_in=pick(i.get("mask"), j),
        random_mask_like=pick(i.get("mask_like"), j),
        perturb_init0=pick(i.get("init0"), j),
        prune_from=(prev_final, pick(i.get("prev_mask"), j)) if prev_final else None,
        **spec,
    )


if not members:
    runs.run(job(), log=log)
else:
    runs.run_group(
        [job(j) for j in range(len(members))], method=runtime["multirun_method"], log=log
    )
