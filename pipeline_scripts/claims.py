"""Rule claims: the paper's quantitative claims beside this run's values (HDF5, TSV, HTML)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import claims  # noqa: E402

smk = snakemake  # noqa: F821
claims.check_dense_runs(smk.params.layout, list(smk.input.files))
files = claims.from_layout(smk.params.layout, list(smk.input.files))
settings = dict(smk.params.settings)
rows, scales = claims.build_claims(
    networks=list(smk.params.networks), settings=settings, main=smk.params.main, **files
)
claims.write_all(
    rows, scales, settings, h5=smk.output.h5, tsv=smk.output.tsv, html_path=smk.output.html
)
for line in claims.scale_text(scales, settings):
    log(line)
for row in rows:
    log(f"{row.id:<40} {row.verdict:<29} {row.measured}")
log(", ".join(f"{n} {v}" for v, n in claims.verdict_counts(rows).items()))
