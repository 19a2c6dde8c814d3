"""Rule plot_figure_perturb: Figures 4-7 (one family of perturbations, a panel per k) and Figure 8
(effective standard deviation vs accuracy, Pearson r and p)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import plots  # noqa: E402

smk = snakemake  # noqa: F821
fig = int(smk.wildcards.fig)
args = (list(smk.input.summaries), list(smk.params.rewinds), dict(smk.params.variants))
out = [smk.output.pdf, smk.output.png]
if fig == 8:
    for k, r, p, points in plots.figure8(*args, smk.params.figure8_level, out, smk.wildcards.net):
        log(f"k={k}: Pearson r={r:.3f} p={p:.3g} over {len(points)} variants")
        for pt in points:
            log(
                f"  {pt['variant']:<28} {pt['family']:<18} eff.std {pt['effective_std']:.4f}"
                f"  acc {pt['accuracy']:.2f}"
            )
else:
    plots.figure_perturbations(*args, fig, out, smk.wildcards.net)
log(f"drew {smk.output.pdf}")
