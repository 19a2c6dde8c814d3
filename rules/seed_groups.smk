# ---- job sizing: several runs per training job, and each GPU job's resources -------------------
# runtime.variants_per_job V > 1 also batches the perturbation variants of one (k, level):
# train_perturbed is then defined once per (seed group, chunk of V variants), its jobs training
# seeds x variants runs (named <rule>[_seeds...]_v<V>g<index>).
# runtime.runs_per_job N (an integer, or per network: {resnet20: 8, default: 1}) makes the
# training rules declared by training_rule in rules/training.smk (all but train_dense and
# train_stability_copy) train N seeds of one network together (train.train_runs). Such a rule
# is defined once per seed group (named <rule>_seeds<a>_<b>..., net constrained to the
# networks grouped that way); its outputs are the same per-seed files as one-run jobs, so
# everything downstream is unchanged. With N = 1 a rule is defined once, with a {seed} wildcard.
# Only public API: `name:` and `wildcard_constraints:` in generated rules, and every GPU job's
# threads and resources declared in the rule itself (gpu_job_resources), not copied from the
# profile, so a one-run job and an N-run job are sized by the same function.

import itertools

RUNS_PER_JOB = config_check.runs_per_job(config)  # {network: N}


def _seed_groups():
    """[(seeds or None, networks)]: None = the one-run rule (for the networks with N = 1)."""
    by_group = {}
    for net in NETWORKS:
        n = RUNS_PER_JOB[net]
        groups = [None] if n == 1 else [tuple(SEEDS[i : i + n]) for i in range(0, len(SEEDS), n)]
        for g in groups:
            by_group.setdefault(g, []).append(net)
    return [(None if g is None else list(g), nets) for g, nets in by_group.items()]


SEED_GROUPS = _seed_groups()
_ALL_ONE = all(n == 1 for n in RUNS_PER_JOB.values())


VARIANTS_PER_JOB = config["runtime"]["variants_per_job"]
# Perturbation variants of one (k, level) trained together (runtime.variants_per_job): chunks of the
# variants that run, in their order; None = the one-variant rule with a {variant} wildcard.
VARIANT_GROUPS = (
    [None]
    if VARIANTS_PER_JOB == 1
    else [
        list(VARIANTS)[i : i + VARIANTS_PER_JOB] for i in range(0, len(VARIANTS), VARIANTS_PER_JOB)
    ]
)


def _joined(seeds):
    return "_".join(str(s) for s in seeds)


def group_name(base, seeds, variants=None):
    """The rule's name for a group (the base name for one-run jobs): _seeds<a>_<b> for a seed
    group, _v<size>g<index> for a variant group (tools/cost.py reads the run count from it)."""
    name = base if seeds is None else f"{base}_seeds{_joined(seeds)}"
    if variants is not None:
        name += f"_v{len(variants)}g{VARIANT_GROUPS.index(variants)}"
    return name


def group_nets(nets):
    """The {net} wildcard constraint of a seed group's rule (unconstrained when no network
    groups its runs, as before runs_per_job existed)."""
    return "[a-z][a-z0-9_]*" if _ALL_ONE else "|".join(sorted(nets))


def members(seeds, variants=None):
    """The runs of a group's job: one {seed, variant} substitution each (an empty list: a
    one-run rule whose paths keep their wildcards)."""
    if seeds is None and variants is None:
        return []
    return [
        {
            **({"seed": str(s)} if s is not None else {}),
            **({"variant": v} if v is not None else {}),
        }
        for s in (seeds or [None])
        for v in (variants or [None])
    ]


def _substitute(pattern, member):
    for key, value in member.items():
        pattern = pattern.replace(f"{{{key}}}", value)
    return pattern


def per_seed(pattern, seeds, variants=None):
    """An input/output pattern for a group: one file per run (or the pattern itself)."""
    runs = members(seeds, variants)
    return [_substitute(pattern, m) for m in runs] if runs else pattern


def per_group(pattern, seeds, variants=None):
    """A log/benchmark pattern: one file per job (seed{seed} -> seeds1_2, {variant} ->
    variants_<first>..<last>)."""
    if seeds is not None:
        pattern = pattern.replace("seed{seed}", f"seeds{_joined(seeds)}")
    if variants is not None:
        pattern = pattern.replace("{variant}", f"variants_{variants[0]}..{variants[-1]}")
    return pattern


class _MemberWildcards:
    """A job's wildcards plus one run's seed and variant, for the per-run functions."""

    def __init__(self, wildcards, member):
        self.__dict__.update(dict(wildcards.items()), **member)


def per_seed_inputs(fn, seeds, variants=None):
    """A named-input function for a group: each name maps to one file per run."""
    runs = members(seeds, variants)
    if not runs:
        return fn

    def inputs(wildcards):
        out = {}
        for m in runs:
            for name, path in fn(_MemberWildcards(wildcards, m)).items():
                out.setdefault(name, []).append(path)
        return out

    return inputs


def per_run_params(fn, seeds, variants=None):
    """A params function for a group: one value per run (its own seed's and variant's)."""
    runs = members(seeds, variants)
    if not runs:
        return fn
    return lambda wildcards: [fn(_MemberWildcards(wildcards, m)) for m in runs]


# ---- resources of the GPU jobs (training, interpolation, Hessian) -----------------------------
# Threads: runtime.threads, or EARLYPHASE_SLURM_TRAIN_THREADS when set (profiles/slurm); a
# profile's set-threads still overrides a one-run rule by its name (profiles/laptop does).
# Memory: runtime.mem_mb_per_thread x threads. Time limit (minutes; SLURM only): one 160-epoch
# run of the network alone (runtime.minutes_per_run; `python -m pipeline_scripts.tools.gpu sizes`
# measures it on a GPU) x the stage's share of a run below x the runs in the job / the speed-up
# of that many runs in one process (runtime.packing_speedup, capped at the runs), + a fixed
# start-up allowance, x the attempt (a retry resumes with twice the time). GPU: every
# such job asks for one (`gpu: 1`: sbatch --gpus=1; the local profile's GPU slots; no effect
# where no gpu resource limit is set, as on a laptop); EARLYPHASE_SLURM_GPU_GRES asks with
# --gres instead, EARLYPHASE_SLURM_GPU_MODEL names the model, EARLYPHASE_SLURM_GPU_PARTITION
# (else EARLYPHASE_SLURM_PARTITION) the partition -- site facts, read from the environment when
# planning, as profiles/slurm documents.
JOB_THREADS = int(os.environ.get("EARLYPHASE_SLURM_TRAIN_THREADS") or config["runtime"]["threads"])
_RT = config["runtime"]
_SITE = {
    "gres": os.environ.get("EARLYPHASE_SLURM_GPU_GRES"),
    "gpu_model": os.environ.get("EARLYPHASE_SLURM_GPU_MODEL"),
    "slurm_partition": os.environ.get("EARLYPHASE_SLURM_GPU_PARTITION")
    or os.environ.get("EARLYPHASE_SLURM_PARTITION"),
}
# stage -> (share of one 160-epoch run, extra minutes); pretrain's share is its epochs / 160.
STAGE_SHARE = {
    "train_dense": (1.2, 5),  # + the early-phase telemetry evaluations
    "train": (1.0, 5),  # IMP levels, perturbations, from-pretrained, sparse, stability copies
    "pretrain": (None, 20),
    "sparse_pretext": (0.25, 20),
    "interpolate": (0.05, 10),
    "hessian": (0.1, 10),
}


def _per_network(key, net):
    return _RT[key].get(net, _RT[key]["default"])


def job_minutes(stage, net, runs=1, epochs=None):
    share, extra = STAGE_SHARE[stage]
    if share is None:
        share = float(epochs) / 160
    speedup = min(float(_per_network("packing_speedup", net)), runs) if runs > 1 else 1.0
    return int(_per_network("minutes_per_run", net) * share * runs / speedup + extra)


def gpu_job_resources(stage, seeds=None, variants=None):
    """The resources of a GPU job of ``stage`` training the runs of a group (None: one run)."""
    runs = max(1, len(members(seeds, variants)))

    def runtime(wildcards, attempt):
        return job_minutes(stage, wildcards.net, runs, wildcards.get("epochs")) * attempt

    out = {
        "runtime": runtime,
        "mem_mb": int(_RT["mem_mb_per_thread"]) * JOB_THREADS,
        **({"gres": _SITE["gres"]} if _SITE["gres"] else {"gpu": 1}),
    }
    out.update({k: v for k, v in _SITE.items() if v and k != "gres"})
    return out
