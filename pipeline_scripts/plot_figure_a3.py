"""Rule plot_figure_a3: Figure A3, the telemetry of every network in one figure."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
plots.figure_a3(
    list(smk.input.summaries), list(smk.params.networks), [smk.output.pdf, smk.output.png]
)
log(f"drew {smk.output.pdf}")
