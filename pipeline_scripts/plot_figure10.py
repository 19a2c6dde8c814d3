"""Rule plot_figure10: Figure 10, sparse pre-training of sub-networks."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
p = smk.params
plots.figure10(
    smk.input.summary,
    [smk.output.pdf, smk.output.png],
    smk.wildcards.net,
    rewind=p.rewind,
    task=p.task,
    epochs=p.epochs,
)
log(f"drew {smk.output.pdf}")
