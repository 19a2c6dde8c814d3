"""Rule telemetry_run: add distances/cosines to the final weights and the test accuracy at every
telemetry iteration to one dense run's raw telemetry (Section 4)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import checkpoint, identity, telemetry  # noqa: E402

smk = snakemake  # noqa: F821
run = identity.from_path(smk.input.metrics)  # network, seed, experiment dense, level 0
final = checkpoint.load(smk.input.final)
identity.check(smk.input.final, final, {"network": run["network"]}, identity.describe(run))
identity.check(smk.input.final, final["meta"], {"seed": run["seed"]}, identity.describe(run))
out = telemetry.finalise(
    smk.input.raw, final["state_dict"], smk.input.metrics, smk.output[0], expect=run
)
log(f"telemetry at {len(out['iteration'])} iterations -> {smk.output[0]}")
