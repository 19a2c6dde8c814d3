"""Rule hessian: the top Hessian eigenvalue of the training loss at a dense run's kept states."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import device, hessian  # noqa: E402

smk = snakemake  # noqa: F821
runtime = smk.config["runtime"]
device.configure_from(runtime, smk.threads)
checkpoints = dict(zip(smk.params.iterations, smk.input.checkpoints, strict=True))
its, results, attrs = hessian.measure(
    checkpoints,
    smk.input.data,
    network=smk.wildcards.net,
    seed=int(smk.wildcards.seed),
    hparams=dict(smk.params.hparams),
    samples=int(smk.params.samples),
    steps=int(smk.params.steps),
    runtime=runtime,
    log=log,
)
hessian.write(smk.output[0], its, results, attrs)
log(f"{len(its)} points -> {smk.output[0]}")
