"""Rule train_imp_level: prune level L-1's weights to make level L's mask, rewind to iteration k,
train under the mask (Section 3)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import runs  # noqa: E402

smk = snakemake  # noqa: F821
runs.run(
    runs.Job(
        network=smk.wildcards.net,
        seed=int(smk.wildcards.seed),
        data_path=smk.input.data,
        hparams=smk.params.hparams,
        runtime=smk.params.runtime,
        eval_every=smk.params.eval_every,
        out_final=smk.output.final,
        out_metrics=smk.output.metrics,
        out_mask=smk.output.mask,
        workdir=smk.params.workdir,
        threads=smk.threads,
        init=smk.input.start,
        prune_from=(smk.input.prev_final, smk.input.get("prev_mask")),
        prune_fraction=smk.params.fraction,
        prune_exclude=smk.params.exclude,
        level=int(smk.wildcards.level),
        attrs={
            "experiment": "imp",
            "series": f"rewind{smk.wildcards.k}",
            "rewind_iteration": int(smk.wildcards.k),
        },
    ),
    log=log,
)
