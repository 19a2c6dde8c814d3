"""Rule telemetry_run: add distances/cosines to the final weights and the test accuracy at every
telemetry iteration to one dense run's raw telemetry (Section 4)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import checkpoint, telemetry  # noqa: E402

smk = snakemake  # noqa: F821
final = checkpoint.load(smk.input.final)["state_dict"]
out = telemetry.finalise(smk.input.raw, final, smk.input.metrics, smk.output[0])
log(f"telemetry at {len(out['iteration'])} iterations -> {smk.output[0]}")
