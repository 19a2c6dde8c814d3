"""Rule interpolate: the test error along the line between a stability run's two copies."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import device, stability  # noqa: E402

smk = snakemake  # noqa: F821
w = smk.wildcards
runtime = smk.config["runtime"]
device.configure_from(runtime, smk.threads)
run = {
    "network": w.net,
    "seed": int(w.seed),
    "level": 0 if w.sub == "dense" else int(w.sub.removeprefix("level")),
    "rewind_iteration": int(w.k),
}
result = stability.measure(
    tuple(smk.input.finals),
    tuple(smk.input.metrics),
    smk.input.data,
    run=run,
    hparams=dict(smk.params.hparams),
    points=int(smk.params.points),
    batchnorm=smk.params.batchnorm,
    bn_samples=int(smk.params.bn_samples),
    runtime=runtime,
    log=log,
)
stability.write(smk.output[0], result, result["attrs"])
log(
    f"{w.net} seed {w.seed} {w.sub} k={w.k}: error barrier {100 * result['barrier']:.2f} pp "
    f"(BatchNorm: {smk.params.batchnorm}) -> {smk.output[0]}"
)
