# Config -> params functions and target lists of the measurements beyond the paper:
# rules/stability.smk (instability analysis) and rules/sharpness.smk (top Hessian eigenvalue).
# Defines no rules; included after common.smk.

STABILITY = config["stability"]
STABILITY_REWINDS = sorted(STABILITY["rewind_iterations"])
STABILITY_SUBS = ["dense"] + (
    [f"level{STABILITY['sparse_level']}"] if STABILITY["sparse_level"] else []
)
PLOTS_BEYOND_CODE = os.path.join(
    workflow.basedir, "pipeline_scripts", "earlyphase", "plots_beyond.py"
)


def _level_of(sub):
    return 0 if sub == "dense" else int(sub.removeprefix("level"))


def stability_copy_inputs(wildcards):
    base = f"results/{wildcards.net}/seed{wildcards.seed}"
    out = {"start": f"{base}/dense/checkpoints/iter{wildcards.k}.pt"}
    if wildcards.sub != "dense":
        out["mask"] = f"{base}/imp/rewind{wildcards.k}/{wildcards.sub}/mask.pt"
    return out


def stability_copy_job(wildcards):
    w = wildcards
    return _job(
        w,
        level=_level_of(w.sub),
        data_stream=w.replica,
        attrs={
            "experiment": "stability",
            "series": f"{w.sub}/{w.replica}",
            "rewind_iteration": int(w.k),
            "data_stream": w.replica,
        },
        **_start_at(w.k),
    )


def stability_files(wildcards):
    return [
        f"results/{wildcards.net}/seed{s}/stability/{sub}/k{k}/interpolation.h5"
        for sub in STABILITY_SUBS
        for k in STABILITY_REWINDS
        for s in SEEDS
    ]


def stability_targets():
    if not STABILITY_REWINDS:
        return []
    return expand("results/figures/instability/{net}.{ext}", net=NETWORKS, ext=["pdf", "png"])


HESSIAN = config["hessian"]
HESSIAN_ITS = sorted(DENSE_CKPTS if HESSIAN["iterations"] is None else HESSIAN["iterations"])


def sharpness_targets():
    if not HESSIAN_ITS:
        return []
    return expand("results/figures/sharpness/{net}.{ext}", net=NETWORKS, ext=["pdf", "png"])
