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
