"""Rule plot_figure9: Figure 9 / A9-A12, IMP rewound to states pre-trained on other tasks."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
p = smk.params
plots.figure9(
    list(smk.input.summaries),
    list(p.tasks),
    list(p.epochs),
    list(p.references),
    [smk.output.pdf, smk.output.png],
    smk.wildcards.net,
)
log(f"drew {smk.output.pdf}")
