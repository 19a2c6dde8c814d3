"""The README's "Extending it" recipes, followed to the letter on a copy of the repository: a new
network, a new perturbation kind, a new pre-training task and a new experiment family (a toy one:
dense runs at a fraction of the learning rate) are added exactly as documented, the schema/registry
test still passes, and the DAG plans and runs them on generated data. If a recipe
stops working (a registry moves, a step is missing from the README), this test fails."""

import json
import re
import subprocess
import sys

import h5py
import pytest
from test_workflow import ROOT, SNAKEMAKE

# The README's steps, as edits: (file, anchor text, text inserted before the anchor)
NETWORK = (
    "pipeline_scripts/earlyphase/models.py",
    "_NUM = r",
    '''def _mlp(m, num_classes):
    """A one-hidden-layer perceptron of width W (the recipe's toy network)."""
    width = int(m[1])
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


''',
)
NETWORK_ENTRY = (
    "pipeline_scripts/earlyphase/models.py",
    "}\nKNOWN: dict",
    """    "mlp{W}": _Family(rf"mlp{_NUM}", _mlp, "toy perceptron of width W", prune_output=True),
""",
)
PERTURBATION = (
    "pipeline_scripts/earlyphase/perturb.py",
    "REGISTRY: dict[str, Callable",
    '''def sign_flip(sources: Sources, generator: torch.Generator, *, fraction: float) -> dict:
    """w_k with the signs of a random ``fraction`` of the kept weights flipped."""
    out = {}
    for name, mask in sources.mask.items():
        w = sources.weights_k[name].detach()
        flip = torch.rand(w.shape, generator=generator, device=generator.device) < fraction
        out[name] = torch.where(flip.to(w.device), -w, w) * mask
    return out


''',
)
TASK = (
    "pipeline_scripts/earlyphase/tasks.py",
    "REGISTRY: dict[str, Task]",
    '''def invert(x, y, generator):
    """Photographic negatives, true labels."""
    return 255 - x, y


''',
)
# A new experiment family, step by step (README "A new experiment family"): config key + schema,
# functions-only rules/common_<family>.smk, rules-only rules/<family>.smk, both included, targets
# in all_targets(), training through train_job.py with a params.job dict, GPU resources, costed.
FAMILY_CONFIG = """
halflr:                 # the recipe's toy family: dense runs at a fraction of the learning rate
  factor: 0.5
"""
FAMILY_SCHEMA = """  halflr:
    type: object
    additionalProperties: false
    default: {}
    description: "toy family: dense runs at a fraction of the learning rate"
    properties:
      factor: {type: number, exclusiveMinimum: 0, default: 0.5, description: "lr factor"}
"""
FAMILY_COMMON = """# The toy family's params and targets (functions only).
HALFLR = config["halflr"]


def halflr_job(wildcards):
    job = _job(wildcards, attrs={"experiment": "halflr"})
    job["hparams"] = {**job["hparams"], "lr": job["hparams"]["lr"] * HALFLR["factor"]}
    return job


def halflr_targets():
    return expand("results/{net}/seed{seed}/halflr/metrics.h5", net=NETWORKS, seed=SEEDS)
"""
FAMILY_RULES = """# The toy family's rules.


rule train_halflr:
    input:
        data=DATA_FILE,
    output:
        final="results/{net}/seed{seed}/halflr/final.pt",
        metrics="results/{net}/seed{seed}/halflr/metrics.h5",
    log:
        "logs/{net}/seed{seed}/halflr/train.log",
    threads: JOB_THREADS
    resources:
        **gpu_job_resources("train"),
    params:
        job=halflr_job,
    script:
        "../pipeline_scripts/train_job.py"
"""
CONFIG = """
networks: [mlp32]
seeds: [1]
data: {source: synthetic, synthetic: {n_train: 256, n_test: 64}}
training: {defaults: {batch_size: 64, epochs: 2, milestones: [1]}, per_network: {}}
evaluation: {every_epochs: 1}
dense: {checkpoint_iterations: [0, 4]}
telemetry: {iterations: 8, points: 5}
imp: {rewind_iterations: [4], levels: 1}
perturb:
  rewind_iterations: [4]
  levels: [1]
  figure8_level: 1
  run: [flip_half]
  variants: {flip_half: {kind: sign_flip, fraction: 0.5}}
pretrain: {tasks: [invert], epochs: [1], reference_rewinds: [4], sparse: {kinds: []}}
stability: {rewind_iterations: []}
hessian: {iterations: []}
runtime: {log_every: 4}
"""


def insert(root, spec):
    path, anchor, text = spec
    p = root / path
    source = p.read_text()
    assert anchor in source, f"the recipe's anchor {anchor!r} is gone from {path}"
    p.write_text(source.replace(anchor, text + anchor, 1))


def replace(root, path, old, new):
    p = root / path
    source = p.read_text()
    assert old in source, f"{old!r} is gone from {path}"
    p.write_text(source.replace(old, new, 1))


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A copy of the tracked files with the three recipes applied."""
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes((ROOT / name).read_bytes())
    # a network: a builder and one registry entry
    insert(root, NETWORK)
    insert(root, NETWORK_ENTRY)
    # a perturbation: a function, its REGISTRY and FAMILIES entries, the schema's enum
    insert(root, PERTURBATION)
    replace(
        root,
        "pipeline_scripts/earlyphase/perturb.py",
        '    "noise": noise,\n}',
        '    "noise": noise,\n    "sign_flip": sign_flip,\n}',
    )
    replace(
        root,
        "pipeline_scripts/earlyphase/perturb.py",
        '    "noise": "noise",\n}',
        '    "noise": "noise",\n    "sign_flip": "signs/magnitudes",\n}',
    )
    replace(
        root,
        "config.schema.yaml",
        "shuffle_magnitudes_keep_signs, noise]",
        "shuffle_magnitudes_keep_signs, noise, sign_flip]",
    )
    # a pre-training task: a batch function, one REGISTRY entry, the schema's enum
    insert(root, TASK)
    replace(
        root,
        "pipeline_scripts/earlyphase/tasks.py",
        "REGISTRY: dict[str, Task] = {\n",
        'REGISTRY: dict[str, Task] = {\n    "invert": Task("invert", None, None, invert, '
        '"negatives"),\n',
    )
    replace(
        root,
        "config.schema.yaml",
        "items: {enum: [supervised, random_labels,",
        "items: {enum: [invert, supervised, random_labels,",
    )
    replace(
        root,
        "config.schema.yaml",
        "task: {enum: [random_labels,",
        "task: {enum: [invert, random_labels,",
    )
    # a new experiment family
    (root / "config.yaml").write_text((root / "config.yaml").read_text() + FAMILY_CONFIG)
    replace(root, "config.schema.yaml", "  runtime:\n", FAMILY_SCHEMA + "  runtime:\n")
    (root / "rules/common_halflr.smk").write_text(FAMILY_COMMON)
    (root / "rules/halflr.smk").write_text(FAMILY_RULES)
    replace(
        root,
        "Snakefile",
        'include: "rules/targets.smk"\n',
        'include: "rules/common_halflr.smk"\ninclude: "rules/targets.smk"\n',
    )
    replace(
        root,
        "Snakefile",
        'include: "rules/summaries.smk"\n',
        'include: "rules/halflr.smk"\ninclude: "rules/summaries.smk"\n',
    )
    replace(
        root,
        "rules/targets.smk",
        "    targets += stability_targets() + sharpness_targets()",
        "    targets += halflr_targets()\n    targets += stability_targets() + sharpness_targets()",
    )
    replace(
        root,
        "pipeline_scripts/tools/cost.py",
        '    "dense": "train_dense",\n',
        '    "dense": "train_dense",\n    "halflr": "train_halflr",\n',
    )
    (root / "recipe.yaml").write_text(CONFIG)
    return root


def test_the_registries_and_the_schema_still_agree(extended):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_schema.py",
        ],
        cwd=extended,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_recipes_plan_and_run(extended):
    out = extended / "run"
    targets = [
        "results/mlp32/seed1/imp/rewind4/level1/metrics.h5",
        "results/mlp32/seed1/perturb/rewind4/level1/flip_half/metrics.h5",
        "results/mlp32/seed1/pretrain/invert/e1/state.pt",
        "results/mlp32/seed1/halflr/metrics.h5",
    ]
    cmd = [
        *SNAKEMAKE,
        *targets,
        "--snakefile",
        str(extended / "Snakefile"),
        "--configfile",
        str(extended / "config.yaml"),
        str(extended / "recipe.yaml"),
        "--directory",
        str(out),
        "--cores",
        "2",
    ]
    proc = subprocess.run(cmd, cwd=extended, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with h5py.File(out / targets[1]) as f:
        assert f.attrs["network"] == "mlp32"
        assert f.attrs["perturbation_family"] == "signs/magnitudes"
        assert '"sign_flip"' in f.attrs["perturbation"] and f.attrs["effective_std"] > 0
    with h5py.File(out / targets[0]) as f:
        assert f.attrs["weights_remaining_fraction"] == pytest.approx(0.8, abs=1e-2)
    assert (out / targets[2]).is_file()
    log = (out / "logs/mlp32/seed1/pretrain/invert/e1/train.log").read_text()
    assert re.search(r"done: mlp32 seed 1", log)
    # the new family: trained at half the learning rate, and costed from the planned DAG
    dense = out / "results/mlp32/seed1/dense/metrics.h5"
    with h5py.File(out / targets[3]) as f, h5py.File(dense) as d:
        assert f.attrs["experiment"] == "halflr"
        assert json.loads(f.attrs["hparams"])["lr"] == json.loads(d.attrs["hparams"])["lr"] / 2
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_scripts.tools.cost", "--config", "recipe.yaml"],
        cwd=extended,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^halflr\s+train_halflr\s+1\s", proc.stdout, re.M), proc.stdout
