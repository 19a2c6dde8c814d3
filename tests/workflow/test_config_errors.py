"""Every config mistake that can be seen before a job runs stops planning, naming the key.

``MALFORMED`` holds the malformed configs: each is an overlay merged over ``config.yaml`` (mappings
merge, lists replace, as ``--configfile`` does) and/or ``--config`` arguments. All of them run
through the planning-time checks in-process (``plan_checks``: the same three calls as the top of
rules/common.smk, about 50 ms each instead of ~3.5 s of CPU for a Snakemake start that imports
torch); a representative subset, one per kind of check, runs through a real ``snakemake -n``.
The checked-in presets pass the same checks, so every failure below is the case's own.
"""

import shlex

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.utils import update_config, validate
from test_workflow import ROOT, smk

from pipeline_scripts.earlyphase import config_check

SMOKE = (ROOT / "config" / "smoke.yaml").read_text()

# (id, overlay YAML text or None, --config arguments, text the error must contain)
MALFORMED = [
    # schema: types, ranges, unknown keys, enums, duplicates in lists that are sets
    ("seeds_not_a_list", None, ["seeds=oops"], "seeds"),
    ("seed_not_integer", None, ["seeds=[0.5]"], "seeds"),
    ("seeds_duplicate", "seeds: [1, 1]", [], "seeds"),
    ("fraction_above_1", None, ["imp={'fraction': 1.5}"], "fraction"),
    ("runtime_typo", None, ["runtime={'devcie': 'cpu'}"], "devcie"),
    ("data_source_unknown", "data: {source: mnist}", [], "source"),
    ("batch_size_zero", "training: {defaults: {batch_size: 0}}", [], "batch_size"),
    ("per_network_hparam_typo", "training: {per_network: {vgg13: {batchsize: 64}}}", [],
     "batchsize"),
    ("network_name_pattern", "networks: [ResNet20]", [], "networks"),
    ("networks_duplicate", "networks: [resnet20, resnet20]", [], "networks"),
    ("milestones_duplicate", "training: {defaults: {milestones: [80, 80]}}", [], "milestones"),
    ("imp_exclude_duplicate", "imp: {exclude: [fc.weight, fc.weight]}", [], "exclude"),
    ("perturb_run_duplicate", "perturb: {run: [noise_1, noise_1]}", [], "run"),
    ("reference_rewinds_duplicate", "pretrain: {reference_rewinds: [0, 0]}", [],
     "reference_rewinds"),
    ("sparse_levels_duplicate", "pretrain: {sparse: {levels: [2, 2]}}", [], "levels"),
    ("task_unknown", "pretrain: {tasks: [rotatoin]}", [], "rotatoin"),
    ("variant_kind_unknown", "perturb: {variants: {x: {kind: warp}}}", [], "warp"),
    # registries: networks, per_network keys, perturbation parameters
    ("network_unknown", "networks: [resnet999]", [], "config key networks"),
    ("network_misspelt", None, ["networks=[resnt20]"], "config key networks"),
    ("per_network_key_misspelt", "training: {per_network: {vgg31: {batch_size: 64}}}", [],
     "config key training.per_network.vgg31"),
    ("perturb_scope_misspelt", "perturb: {variants: {x: {kind: shuffle, scope: netwrk}}}", [],
     "config key perturb.variants.x"),
    ("perturb_param_misspelt", "perturb: {variants: {x: {kind: noise, scal: 2.0}}}", [],
     "config key perturb.variants.x"),
    ("perturb_param_missing", "perturb: {variants: {x: {kind: sign_magnitude, signs: k}}}", [],
     "config key perturb.variants.x"),
    ("perturb_param_wrong_type",
     "perturb: {variants: {x: {kind: shuffle, scope: layer, same_sign: maybe}}}", [],
     "config key perturb.variants.x"),
    ("perturb_source_unknown",
     "perturb: {variants: {x: {kind: sign_magnitude, signs: k, magnitudes: '2'}}}", [],
     "config key perturb.variants.x"),
    # empty lists and levels that leave a figure empty
    ("perturb_levels_empty", "perturb: {levels: []}", [], "config key perturb.levels"),
    ("perturb_rewinds_empty", "perturb: {rewind_iterations: []}", [],
     "config key perturb.rewind_iterations"),
    ("figure8_level_not_run", "perturb: {figure8_level: 5}", [],
     "config key perturb.figure8_level"),
    ("perturb_level_above_imp", "perturb: {levels: [2, 16], figure8_level: 2}", [],
     "config key perturb.levels"),
    ("sparse_levels_empty", "pretrain: {sparse: {levels: []}}", [],
     "config key pretrain.sparse.levels"),
    ("sparse_level_above_imp", "pretrain: {sparse: {levels: [20]}}", [],
     "config key pretrain.sparse.levels"),
    ("pretrain_epochs_empty", "pretrain: {epochs: []}", [], "config key pretrain.epochs"),
    ("imp_rewinds_empty", "imp: {rewind_iterations: []}\nperturb: {run: []}\n"
     "pretrain: {tasks: [], sparse: {kinds: []}}", [], "config key imp.rewind_iterations"),
    # rewind points, checkpoints and the training length
    ("imp_rewind_not_kept", "imp: {rewind_iterations: [300]}", [],
     "config key imp.rewind_iterations"),
    ("perturb_rewind_not_imp", "perturb: {rewind_iterations: [300]}", [],
     "config key perturb.rewind_iterations"),
    ("reference_rewind_not_imp", "pretrain: {reference_rewinds: [300]}", [],
     "config key pretrain.reference_rewinds"),
    ("sparse_rewind_not_imp", "pretrain: {sparse: {rewind_iteration: 300}}", [],
     "config key pretrain.sparse.rewind_iteration"),
    ("no_iteration_0_for_perturbations",
     "dense: {checkpoint_iterations: [500, 2000]}\nimp: {rewind_iterations: [500, 2000]}\n"
     "pretrain: {reference_rewinds: [500]}", [], "config key dense.checkpoint_iterations"),
    ("checkpoint_beyond_training", "dense: {checkpoint_iterations: [0, 100, 250, 500, 1000, 2000, "
     "70000]}", [], "config key dense.checkpoint_iterations"),
    ("checkpoint_beyond_short_network",
     "training: {per_network: {vgg13: {batch_size: 64, epochs: 0.1}}}", [],
     "config key dense.checkpoint_iterations"),
    ("checkpoint_beyond_smoke_length", SMOKE + "\ndense: {checkpoint_iterations: [0, 4, 8, 17]}",
     [], "config key dense.checkpoint_iterations"),
    # path spellings
    ("epochs_collide", "pretrain: {epochs: [1, 1.0000001]}", [], "config key pretrain.epochs"),
    ("epochs_unspellable", "pretrain: {epochs: [0.00001]}", [], "config key pretrain.epochs"),
    # data
    ("imagefolder_without_path", "data: {source: imagefolder}", [], "config key data.path"),
    ("imagefolder_path_missing", "data: {source: imagefolder, path: /no/such/cifar10.tar.gz}", [],
     "config key data.path: /no/such/cifar10.tar.gz does not exist"),
    ("n_train_beyond_cifar10", "data: {n_train: 60000}", [],
     "config key data.n_train: 60,000 train images asked for, but the source (torchvision) holds "
     "50,000"),
    ("n_test_beyond_synthetic",
     "data: {source: synthetic, synthetic: {n_train: 512, n_test: 128}, n_test: 1000}", [],
     "config key data.n_test: 1,000 test images asked for, but the source (synthetic) holds 128"),
    # learning-rate drops the training never reaches
    ("milestone_at_training_end", "training: {defaults: {milestones: [80, 160]}}", [],
     "config key training.defaults.milestones: learning-rate drops at epochs [160]"),
    ("milestone_beyond_short_training", "training: {defaults: {epochs: 20, milestones: [10, 30]}}", [],
     "config key training.defaults.milestones: learning-rate drops at epochs [30]"),
    ("milestone_beyond_per_network",
     "training: {per_network: {vgg13: {batch_size: 64, milestones: [80, 200]}}}", [],
     "config key training.per_network.vgg13.milestones"),
    # beyond the paper: instability analysis and sharpness
    ("stability_rewind_not_kept", "stability: {rewind_iterations: [300]}", [],
     "config key stability.rewind_iterations"),
    ("stability_rewind_not_imp", "dense: {checkpoint_iterations: [0, 10, 30, 100, 250, 500, "
     "1000, 2000, 4000]}\nstability: {rewind_iterations: [30]}", [],
     "config key stability.rewind_iterations"),
    ("stability_sparse_level_above_imp", "stability: {sparse_level: 15}", [],
     "config key stability.sparse_level"),
    ("stability_batchnorm_unknown", "stability: {batchnorm: reset}", [], "batchnorm"),
    ("stability_one_point", "stability: {points: 1}", [], "points"),
    ("hessian_iteration_not_kept", "hessian: {iterations: [0, 42]}", [],
     "config key hessian.iterations"),
    ("hessian_steps_zero", "hessian: {steps: 0}", [], "steps"),
    ("precision_unknown", "runtime: {precision: fp16}", [], "precision"),
    ("runs_per_job_network_misspelt", "runtime: {runs_per_job: {resnet2O: 4}}", [],
     "config key runtime.runs_per_job.resnet2O"),
    ("runs_per_job_zero", "runtime: {runs_per_job: {resnet20: 0}}", [], "runs_per_job"),
    ("minutes_per_run_misspelt", "runtime: {minutes_per_run: {resnt20: 4, default: 9}}", [],
     "config key runtime.minutes_per_run.resnt20"),
]  # fmt: skip

# One case per kind of check, through a real `snakemake -n` (each a Snakemake start: seconds).
THROUGH_SNAKEMAKE = [
    "seed_not_integer",  # schema, a --config value
    "reference_rewinds_duplicate",  # schema, an overlay
    "network_unknown", "per_network_key_misspelt", "perturb_param_misspelt",  # registries
    "perturb_levels_empty", "figure8_level_not_run",  # empty figures
    "epochs_collide",  # path spellings
    "checkpoint_beyond_training", "stability_rewind_not_imp",  # kept states, training length
    "imagefolder_path_missing", "n_train_beyond_cifar10", "milestone_at_training_end",  # data, lr
]  # fmt: skip
CASES = {case[0]: case[1:] for case in MALFORMED}


def plan_checks(overlays=(), config_args=()):
    """The checks at the top of rules/common.smk on config.yaml + overlays + --config args,
    merged as Snakemake merges them (parse_config gives --config values as Snakemake does)."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for text in overlays:
        update_config(config, yaml.safe_load(text) or {})
    update_config(config, parse_config(list(config_args)))
    schema = ROOT / "config.schema.yaml"
    config_check.coerce(config, yaml.safe_load(schema.read_text()))
    validate(config, str(schema), set_default=True)
    config_check.check(config)
    return config


def test_case_ids_are_unique_and_the_snakemake_subset_exists():
    assert len(CASES) == len(MALFORMED)
    assert set(THROUGH_SNAKEMAKE) <= set(CASES)


@pytest.mark.parametrize("overlay", ["", "smoke", "laptop", "timeline"])
def test_the_presets_pass(overlay):
    plan_checks([(ROOT / "config" / f"{overlay}.yaml").read_text()] if overlay else [])


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_config_is_refused_naming_the_key(case):
    overlay, args, needle = CASES[case]
    with pytest.raises(Exception) as err:  # noqa: PT011 - ConfigError or Snakemake's WorkflowError
        plan_checks([overlay] if overlay else [], args)
    text = str(err.value) + "".join(str(a) for a in getattr(err.value, "args", ()))
    text += str(getattr(err.value, "__cause__", ""))
    assert needle in text, text


def test_registry_checks_in_a_child_process_and_their_cache(tmp_path):
    """rules/common.smk runs the registry checks in a child process (torch stays out of the
    planning process) and remembers a success, never a failure, in the run's .snakemake/."""
    config = plan_checks()
    config_check.check(config, cache_dir=tmp_path, isolate=True)
    assert len(list((tmp_path / "earlyphase-config-check").iterdir())) == 1
    bad = plan_checks()
    bad["networks"] = ["resnet999"]
    with pytest.raises(config_check.ConfigError, match="6n\\+2") as err:
        config_check.check(bad, cache_dir=tmp_path, isolate=True)
    assert err.value.key == "networks"
    assert len(list((tmp_path / "earlyphase-config-check").iterdir())) == 1  # not remembered


@pytest.mark.parametrize("case", THROUGH_SNAKEMAKE)
def test_malformed_config_fails_snakemake_dry_run(tmp_path, case):
    overlay, args, needle = CASES[case]
    cmd = ["-n", "--directory", str(tmp_path)]
    if overlay:
        (tmp_path / "overlay.yaml").write_text(overlay + "\n")
        cmd += ["--configfile", str(ROOT / "config.yaml"), str(tmp_path / "overlay.yaml")]
    if args:
        cmd += ["--config", *args]
    proc = smk(*cmd, check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr, proc.stderr[-3000:]


# ---- the command line as documented ------------------------------------------------------------
def test_numbers_on_the_command_line_are_numbers(tmp_path):
    """`snakemake --config seeds=[1] -n` used to fail with "'1' is not of type 'integer'"."""
    proc = smk(
        "-n",
        "--quiet",
        "rules",
        "--profile",
        "profiles/smoke",
        "--directory",
        str(tmp_path),
        "--config",
        "seeds=[1]",
        "imp={'fraction': 0.5}",
    )
    assert "train_dense                  1" in proc.stdout, proc.stdout
    config = plan_checks(config_args=["seeds=[1, 3]", "imp={'fraction': 0.5, 'levels': 14}"])
    assert config["seeds"] == [1, 3] and config["imp"]["fraction"] == 0.5
    assert config["imp"]["levels"] == 14 and isinstance(config["imp"]["levels"], int)
    # runs_per_job is a number or a per-network mapping (a oneOf in the schema): both coerced
    config = plan_checks(config_args=["runtime={'runs_per_job': {'resnet20': 4, 'default': 2}}"])
    assert config_check.runs_per_job(config) == {
        **{n: 2 for n in config["networks"]},
        "resnet20": 4,
    }
    config = plan_checks(config_args=["runtime={'runs_per_job': 3}"])
    assert set(config_check.runs_per_job(config).values()) == {3}


def test_the_readme_dag_command_runs_as_written():
    """The README's job-level DAG command, as written (without its `| dot` stage)."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("snakemake") and "--dag" in ln]
    cmd = shlex.split(line.split("|")[0])
    assert cmd[0] == "snakemake" and "seeds=[1]" in cmd
    proc = smk(*cmd[1:])
    assert proc.stdout.startswith("digraph"), proc.stdout[:500]


@pytest.mark.parametrize("profile", ["smoke", "laptop"])
def test_profiles_work_from_another_directory(tmp_path, profile):
    """`snakemake --profile <repo>/profiles/<p>` from elsewhere: the profile's paths resolve
    against its own directory; outputs go under the current directory."""
    proc = smk(
        "--profile", str(ROOT / "profiles" / profile), "-n", "--quiet", "rules", cwd=tmp_path
    )
    assert "train_dense" in proc.stdout and "prepare_data" in proc.stdout
    assert (tmp_path / "runs" / profile).is_dir()  # the profile's `directory:`, under the cwd
    assert not (tmp_path / "config.yaml").exists()


def test_profiles_name_no_file_relative_to_the_working_directory():
    """Snakemake resolves a profile's single paths against the profile directory only when they
    exist there, and never inside lists: so every path a profile names must exist beside it."""
    for path in sorted((ROOT / "profiles").glob("*/config.yaml")):
        text = path.read_text()
        config = yaml.safe_load(text)
        for key in ("snakefile", "configfile"):
            value = config.get(key)
            assert not isinstance(value, list), f"{path}: {key} must be one path, not a list"
            if value is not None:
                assert (path.parent / value).is_file(), f"{path}: {key} {value} not found"
        assert "snakefile" in config, f"{path}: name the Snakefile (../../Snakefile)"
