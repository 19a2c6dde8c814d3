# ---- several seeds per training job (runtime.runs_per_job; issue 7) ----------------------------
# With runs_per_job R > 1 each training rule except train_dense is defined once per group of R
# seeds (named <name>_seeds<a>_<b>...); its outputs are the same per-seed files as before, so
# everything downstream is unchanged, and the runs train together (runs.run_group). With R = 1
# (the default) each rule is defined once, with a {seed} wildcard.
RUNS_PER_JOB = config["runtime"]["runs_per_job"]
SEED_GROUPS = (
    [None]
    if RUNS_PER_JOB == 1
    else [SEEDS[i : i + RUNS_PER_JOB] for i in range(0, len(SEEDS), RUNS_PER_JOB)]
)


def group_name(base, seeds):
    """The rule's name for a seed group; profiles' set-threads/set-resources of `base` apply."""
    if seeds is None:
        return base
    name = f"{base}_seeds" + "_".join(str(s) for s in seeds)
    rs = workflow.resource_settings
    for table in ("_parsed_overwrite_threads", "_parsed_overwrite_resources"):
        overrides = getattr(rs, table)
        if base in overrides:
            overrides[name] = overrides[base]
    return name


def per_seed(pattern, seeds):
    """An input/output pattern for a seed group: one file per seed (or the pattern itself)."""
    if seeds is None:
        return pattern
    return [pattern.replace("{seed}", str(s)) for s in seeds]


def per_group(pattern, seeds):
    """A log/benchmark pattern: one file per job (seed{seed} -> seeds1_2)."""
    if seeds is None:
        return pattern
    return pattern.replace("seed{seed}", "seeds" + "_".join(str(s) for s in seeds))


class _SeedWildcards:
    """A job's wildcards plus one seed of its group, for the per-seed input functions."""

    def __init__(self, wildcards, seed):
        self.__dict__.update(dict(wildcards.items()), seed=str(seed))


def per_seed_inputs(fn, seeds):
    """A named-input function for a seed group: each name maps to one file per seed."""
    if seeds is None:
        return fn

    def inputs(wildcards):
        out = {}
        for s in seeds:
            for name, path in fn(_SeedWildcards(wildcards, s)).items():
                out.setdefault(name, []).append(path)
        return out

    return inputs
