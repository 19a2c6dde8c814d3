"""Rule plot_figure1: Figure 1 / A2, accuracy vs % weights remaining per rewind point k."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
plots.figure1(smk.input.summary, [smk.output.pdf, smk.output.png], smk.wildcards.net)
log(f"drew {smk.output.pdf}")
