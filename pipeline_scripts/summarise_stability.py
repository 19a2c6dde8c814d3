"""Rule summarise_stability: error barriers and curves across seeds, per sub-network and k."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import stability  # noqa: E402

smk = snakemake  # noqa: F821
out = stability.summarise(list(smk.input.runs), smk.output[0], smk.wildcards.net)
for sub, s in out.items():
    for k, m, sd, n in zip(s["rewind"], s["barrier_mean"], s["barrier_std"], s["n"], strict=True):
        log(f"{sub:>8} k={k:<6} barrier {m:6.2f} ± {sd:.2f} pp (n = {n})")
