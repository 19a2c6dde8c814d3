"""One source for each name: the config schema's enums equal the registries the code dispatches on,
so a kind, task, source or mode added on one side only fails here instead of at a job."""

from pathlib import Path

import pytest
import yaml

from pipeline_scripts.earlyphase import data, device, multirun, perturb, stability, tasks

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.schema.yaml").read_text())


def prop(*keys):
    node = SCHEMA
    for k in keys:
        node = node["properties"][k] if "properties" in node else node[k]
    return node


@pytest.mark.parametrize(
    ("enum", "registry"),
    [
        (prop("data", "source")["enum"], data.SOURCES),
        (prop("perturb", "variants")["additionalProperties"]["properties"]["kind"]["enum"],
         perturb.REGISTRY),
        (prop("pretrain", "tasks")["items"]["enum"], tasks.REGISTRY),
        (prop("pretrain", "sparse", "task")["enum"],
         [n for n, t in tasks.REGISTRY.items() if t.name != "supervised"]),
        (prop("runtime", "multirun_method")["enum"], multirun.METHODS),
        (prop("stability", "batchnorm")["enum"], stability.BATCHNORM_MODES),
        (prop("runtime", "precision")["enum"], device.PRECISIONS),
    ],
    ids=["data.source", "perturb kind", "pretrain.tasks", "sparse.task", "multirun_method",
         "stability.batchnorm", "runtime.precision"],
)  # fmt: skip
def test_schema_enum_equals_registry(enum, registry):
    assert sorted(enum) == sorted(registry)


def test_every_perturbation_kind_has_a_figure_family():
    assert set(perturb.FAMILIES) == set(perturb.REGISTRY)


def test_the_package_never_imports_snakemake_or_the_tools():
    """pipeline_scripts/earlyphase is what rules and tools import; it imports neither."""
    import re

    package = Path(__file__).resolve().parents[2] / "pipeline_scripts" / "earlyphase"
    pattern = re.compile(r"^\s*(from|import)\s+(snakemake|pipeline_scripts\.tools)\b", re.M)
    offenders = [p.name for p in package.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_the_paper_config_trains_the_paper_networks_of_the_model_registry():
    """One list of the paper's networks (models.PAPER_NETWORKS): config.yaml trains exactly it,
    each name resolves in the registry, and the benchmarks time it by default."""
    from pipeline_scripts.earlyphase import models
    from pipeline_scripts.tools import bench

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    assert tuple(config["networks"]) == models.PAPER_NETWORKS == bench.NETWORKS
    for name in models.PAPER_NETWORKS:
        models.check_name(name)
    assert set(config["runtime"]["minutes_per_run"]) == {*models.PAPER_NETWORKS, "default"}


def test_runtime_defaults_are_written_once():
    """The schema's runtime defaults equal the defaults of the functions they feed (a key the config
    leaves out takes the function's default), and config.yaml states the same values."""
    import dataclasses
    import inspect

    from pipeline_scripts.earlyphase import train

    schema = prop("runtime")["properties"]
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    opts = {f.name: f.default for f in dataclasses.fields(train.RunOptions)}
    fed = {k: opts[k] for k in schema if k in opts}
    fed["device"] = inspect.signature(device.select).parameters["name"].default
    fed["deterministic"] = inspect.signature(device.configure).parameters["deterministic"].default
    assert set(fed) == {"precision", "log_every", "eval_batch_size", "checkpoint_seconds",
                        "compile", "cuda_graphs", "device", "deterministic"}  # fmt: skip
    for key, default in fed.items():
        assert schema[key]["default"] == default, key
        assert config["runtime"][key] == default, key
    # and options_from_runtime really falls back to them
    assert train.options_from_runtime({}, seed=1) == train.RunOptions(seed=1)
    assert train.options_from_runtime({"log_every": 7, "threads": 3}, seed=1).log_every == 7
