# Config validation, the config's derived constants and the wildcard constraints. Defines no
# rules. Runs once per planning, so it stays cheap (the paper-scale DAG has ~18,000 jobs). The other
# functions-only files: params.smk (config -> each rule's params and inputs), seed_groups.smk
# (several seeds per job), training.smk (the one definition of the training rules), targets.smk
# (the runs of each summary, the targets) and common_beyond.smk (the stability and sharpness
# rules' functions).

import os
import re
import sys

import yaml
from snakemake.utils import validate

if workflow.basedir not in sys.path:  # the package, also when snakemake runs from elsewhere
    sys.path.insert(0, workflow.basedir)
from pipeline_scripts.earlyphase import config_check

# Planning-time checks: numbers typed on the command line become numbers, the schema
# checks types, ranges, unknown keys and duplicates, and config_check everything else that can be
# seen before a job runs (network, task and perturbation names and parameters against their
# registries, empty lists that would leave a figure empty, iterations beyond the training length,
# path-spelling collisions). Each error names the config key.
_SCHEMA = os.path.join(workflow.basedir, "config.schema.yaml")
with open(_SCHEMA) as _f:
    config_check.coerce(config, yaml.safe_load(_f))
validate(config, _SCHEMA, set_default=True)
DATA_FILE = config_check.DATA_FILE  # results/data/cifar10.h5
# The data belongs to the run directory: once prepared, later commands on it use it (a command
# naming other data on its --config is refused), so `-n`, `--report` and targets need no
# `--config data=...` again.
_data_note = config_check.data_of_the_run(
    config, DATA_FILE, (workflow.config_settings.config or {}).get("data")
)
if _data_note and workflow.is_main_process:
    print(_data_note, file=sys.stderr)
# (registry checks in a child process: torch stays out of the planning process; their success
# is remembered in the user's cache, config_check.cache_dir). A job's own Snakemake (on SLURM,
# two per job: the job's and its srun step's) re-parses the workflow; the planning already
# checked the config.
if workflow.is_main_process:
    config_check.check(config, cache_dir=config_check.cache_dir(), isolate=True)


def _sorted_keys(value):
    return {k: _sorted_keys(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


# Key order of these mappings carries no meaning, but it reaches params, and Snakemake re-runs a job
# whose params differ in key order: it depends on how config files were merged (the profile's
# overlay vs the same files given with --configfile). Sorted, the params are the same either way.
# (perturb.variants keeps its order, the figures' legend order; each variant's spec is sorted.)
for _key in ("data", "training", "telemetry", "rewinding", "evaluation"):
    config[_key] = _sorted_keys(config[_key])
config["perturb"]["variants"] = {
    name: _sorted_keys(spec) for name, spec in config["perturb"]["variants"].items()
}
config["pretrain"]["hparams"] = _sorted_keys(config["pretrain"]["hparams"])


# The compilers' caches (runtime.compile / cuda_graphs) in the run directory, where every job of
# the run finds them (jobs inherit the environment, on SLURM too): the first job of a network
# compiles cold, the others load the kernels (tools/gpu.py check measures both).
for _var, _sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
    os.environ.setdefault(_var, os.path.abspath(os.path.join(".cache", _sub)))

NETWORKS = config["networks"]
SEEDS = config["seeds"]
DENSE_CKPTS = sorted(config["dense"]["checkpoint_iterations"])
IMP = config["imp"]
IMP_REWINDS = sorted(IMP["rewind_iterations"])
IMP_LEVELS = list(range(1, IMP["levels"] + 1))
# Figures list their plotting code as an input: editing it redraws figures and nothing else.
PLOTS_CODE = os.path.join(workflow.basedir, "pipeline_scripts", "earlyphase", "plots.py")

# ---- perturbations (Section 5): a catalogue of variants and the list that runs ----------------
PERTURB = config["perturb"]
PERTURB_REWINDS = sorted(PERTURB["rewind_iterations"])
PERTURB_LEVELS = sorted(PERTURB["levels"])
VARIANTS = config_check.running_variants(config)  # `run` narrows the catalogue (lists replace)

# ---- pre-training (Section 6) -------------------------------------------------------------------
PRETRAIN = config["pretrain"]
PRE_TASKS = PRETRAIN["tasks"]
PRE_EPOCHS = [
    f"{e:g}" for e in PRETRAIN["epochs"]
]  # path spelling: 40 -> "40", 0.5 -> "0.5" (config_check refuses collisions)
SPARSE = PRETRAIN["sparse"]


wildcard_constraints:
    net="[a-z][a-z0-9_]*",
    seed=r"\d+",
    k=r"\d+",
    level=r"[1-9]\d*",
    variant="[a-z][a-z0-9_.]*",
    task="[a-z][a-z0-9_]*",
    epochs=r"\d+(\.\d+)?",
    source=r"rewind\d+|pretrain/[a-z][a-z0-9_]*/e\d+(\.\d+)?",
    kind="imp|reinit|random",
    start="scratch|pretrained",
