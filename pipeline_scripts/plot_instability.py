"""Rule plot_instability: error barrier against the rewind point k, and the error curves."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots_beyond  # noqa: E402

smk = snakemake  # noqa: F821
plots_beyond.figure_instability(
    smk.input.summary, [smk.output.pdf, smk.output.png], smk.wildcards.net
)
log(f"drew {smk.output.pdf}")
