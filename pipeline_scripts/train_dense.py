"""Rule train_dense: one dense run, keeping its weights at every rewind iteration."""

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
        workdir=smk.params.workdir,
        threads=smk.threads,
        snapshots=dict(zip(smk.params.checkpoint_iterations, smk.output.checkpoints, strict=True)),
        attrs={"experiment": "dense", "series": "dense"},
        telemetry=smk.params.telemetry,
        out_telemetry=smk.output.telemetry,
    ),
    log=log,
)
