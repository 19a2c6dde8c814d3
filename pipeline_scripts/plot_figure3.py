"""Rule plot_figure3: Figure 3 (ResNet-20) and its per-network versions: early-phase telemetry."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
plots.figure3(smk.input.summary, [smk.output.pdf, smk.output.png], smk.wildcards.net)
log(f"drew {smk.output.pdf}")
