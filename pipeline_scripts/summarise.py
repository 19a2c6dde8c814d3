"""Rule summarise_*: gather the runs of one experiment into a summary HDF5 (mean/std over seeds)."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import aggregate, identity  # noqa: E402

smk = snakemake  # noqa: F821
# Each file must record the run it is read for: the rule's (series, level, seed) key, the
# network, and the experiment, series and rewind point its path names (identity.from_path).
entries = [
    {"series": series, "level": int(level), "seed": int(seed), "path": path,
     "expect": {"network": smk.wildcards.net, **identity.from_path(path)}}
    for (series, level, seed), path in zip(smk.params.runs, smk.input.runs, strict=True)
]  # fmt: skip
aggregate.summarise(
    entries,
    smk.output[0],
    attrs={"network": smk.wildcards.net, "rule": smk.rule},
    extra=("effective_mean", "effective_std"),
)
log(f"summarised {len(entries)} runs into {smk.output[0]}")
