"""Rule plot_sharpness: the top Hessian eigenvalue against iteration and against k."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots_beyond  # noqa: E402

smk = snakemake  # noqa: F821
plots_beyond.figure_sharpness(
    smk.input.summary, [smk.output.pdf, smk.output.png], smk.wildcards.net
)
log(f"drew {smk.output.pdf}")
