"""Rule summarise_telemetry: mean/std across seeds and the Figure 2 timeline table."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from pipeline_scripts.earlyphase import telemetry  # noqa: E402

smk = snakemake  # noqa: F821
net = smk.wildcards.net
result = telemetry.summarise(list(smk.input.runs), smk.output.summary, net)
table = telemetry.timeline_table(net, result["timeline"])
Path(smk.output.timeline).write_text(table)
log("\n" + table)
