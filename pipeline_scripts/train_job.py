"""Entry point of every training rule (train_dense, train_imp_level, train_perturbed, pretrain,
train_from_pretrained, sparse_pretext, sparse_train).

The rules differ only in which files they name, so one entry point maps Snakemake's named
inputs/outputs onto ``runs.Job`` and takes everything else from the rule's ``params.job`` dict
(built in rules/common.smk). Named inputs: data, start (starting weights), prev_final/prev_mask
(the level to prune from), mask (train under it), mask_like (random mask of its sparsity), init0
(iteration-0 weights for perturbations). Named outputs: final, metrics, mask, telemetry,
checkpoints (one per params.job["snapshot_iterations"]).
"""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import runs  # noqa: E402

smk = snakemake  # noqa: F821
i, o = smk.input, smk.output
spec = dict(smk.params.job)
snapshots = dict(zip(spec.pop("snapshot_iterations", []), o.get("checkpoints", []), strict=True))
runs.run(
    runs.Job(
        network=smk.wildcards.net,
        seed=int(smk.wildcards.seed),
        data_path=i.data,
        out_final=o.final,
        out_metrics=o.metrics,
        out_mask=o.get("mask"),
        out_telemetry=o.get("telemetry"),
        snapshots=snapshots,
        workdir=smk.params.workdir,
        threads=smk.threads,
        init=i.get("start"),
        mask_in=i.get("mask"),
        random_mask_like=i.get("mask_like"),
        perturb_init0=i.get("init0"),
        prune_from=(i.prev_final, i.get("prev_mask")) if "prev_final" in i.keys() else None,
        **spec,
    ),
    log=log,
)
