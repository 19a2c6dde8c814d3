"""Rule summarise_hessian: the top eigenvalue's mean and std across seeds at every point."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import hessian  # noqa: E402

smk = snakemake  # noqa: F821
out = hessian.summarise(list(smk.input.runs), smk.output[0], smk.wildcards.net, smk.params.rewinds)
for it, m, sd in zip(out["iteration"], out["mean"], out["std"], strict=True):
    log(f"iteration {int(it):>6}: top eigenvalue {m:.4g} ± {sd:.2g}")
