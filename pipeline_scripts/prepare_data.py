"""Rule prepare_data: build results/data/cifar10.h5 from the configured source."""

from entry import open_log

log = open_log(snakemake)  # noqa: F821 - injected by Snakemake

from pipeline_scripts.earlyphase import data  # noqa: E402

cfg = snakemake.params.data  # noqa: F821
provenance = data.prepare(
    snakemake.output[0],  # noqa: F821
    cfg["source"],
    path=cfg.get("path"),
    root=cfg.get("root"),
    n_train=cfg.get("n_train"),
    n_test=cfg.get("n_test"),
    seed=cfg.get("subset_seed", 0),
    synthetic=cfg.get("synthetic"),
)
log(f"prepared {snakemake.output[0]}: {provenance}")  # noqa: F821
