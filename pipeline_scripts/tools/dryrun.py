"""Snakemake's own plan of a configuration, read without running anything: the config files
merged and checked as the workflow does (``load_config``), and every job of the DAG from a dry run
(``dag``; ``parse_dry_run`` and ``parse_dry_run_files`` read its listing). ``tools.cost``,
``tools.plan`` and the GPU tools build on it; ``load_config`` needs PyYAML and jsonschema, not
Snakemake (the GPU tools run where it is missing)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config.schema.yaml"


def load_config(paths: list[str | Path], schema: str | Path = SCHEMA) -> dict:
    """Merge config files as ``snakemake --configfile a b`` does -- over the Snakefile's own
    config.yaml, mappings merged key by key, everything else replaced -- and check them against
    the schema, filling its defaults, as the workflow's ``validate(config, ..., set_default=True)``
    does. Needs PyYAML and jsonschema, not Snakemake (the GPU tools run where it is missing)."""
    config: dict = {}
    for p in [ROOT / "config.yaml", *paths]:
        with open(p) as f:
            merge(config, yaml.safe_load(f) or {})
    validate(config, schema)
    return config


def merge(config: dict, overlay: dict) -> None:
    """``overlay`` into ``config`` in place (``snakemake.utils.update_config``'s rule)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def validate(config: dict, schema: str | Path = SCHEMA) -> None:
    """Check ``config`` against the JSON schema and fill the defaults of missing keys (the
    jsonschema FAQ's default-setting validator, as ``snakemake.utils.validate`` uses it)."""
    import jsonschema

    with open(schema) as f:
        spec = yaml.safe_load(f)
    base = jsonschema.validators.validator_for(spec)
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    filling = jsonschema.validators.extend(base, {"properties": set_defaults})
    error = jsonschema.exceptions.best_match(filling(spec).iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"config key {where}: {error.message} (schema: {schema})")


def dag(
    configfiles: list[str | Path], targets: tuple[str, ...] = (), config: tuple[str, ...] = ()
) -> list[tuple[str, dict]]:
    """Every job of the DAG Snakemake builds for ``configfiles`` (merged in order over the
    Snakefile's config.yaml), ``--config`` entries ``config`` and ``targets`` (default: the default
    target), as (rule, wildcards), read from a dry run in a scratch directory. The paper's DAG takes
    about a minute to plan."""
    return parse_dry_run(dry_run(configfiles, targets, config))


def dry_run(
    configfiles: list[str | Path], targets: tuple[str, ...] = (), config: tuple[str, ...] = ()
) -> str:
    """The listing of ``dag``'s dry run (``parse_dry_run`` and ``parse_dry_run_files`` read it)."""
    with tempfile.TemporaryDirectory(prefix="cost-dag-") as scratch:
        cmd = dag_command(configfiles, scratch, targets, config)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"snakemake -n failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def dag_command(
    configfiles: list[str | Path],
    directory: str | Path,
    targets: tuple[str, ...] = (),
    config: tuple[str, ...] = (),
) -> list[str]:
    """The dry run ``dag`` reads (run it from the repository root; ``parse_dry_run`` reads its
    standard output)."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "-n", "--cores", "1"]
    cmd += ["--directory", str(directory), "--snakefile", str(ROOT / "Snakefile")]
    if configfiles:
        cmd += ["--configfile", *(str(Path(c).resolve()) for c in configfiles)]
    return cmd + (["--config", *config] if config else [])


def _job_blocks(text: str):
    """(rule, the block's text) of every job a ``snakemake -n`` listing names (with a profile
    that groups jobs, a group's members are listed indented under it)."""
    for block in re.split(r"\n(?= *(?:local)?rule \w+:)", text):  # (a group's jobs indented)
        m = re.match(r" *(?:local)?rule (\w+):", block)
        if m:
            yield m[1], block


def parse_dry_run(text: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a ``snakemake -n`` listing names; checked against the
    listing's own "Job stats" total, so a listing this parser misreads is an error, not a cost."""
    out = []
    for rule, block in _job_blocks(text):
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        out.append((rule, dict(kv.split("=", 1) for kv in wc[1].split(", ")) if wc else {}))
    totals = {int(t) for t in re.findall(r"^total\s+(\d+)$", text, re.M)}
    if totals and totals != {len(out)}:
        raise ValueError(
            f"read {len(out)} jobs from the dry run but its Job stats say {sorted(totals)}: "
            "the snakemake -n listing changed format; fix dryrun.parse_dry_run"
        )
    return out


def parse_dry_run_files(text: str) -> list[dict[str, list[str]]]:
    """{"output": [...], "log": [...]} of every job of a ``snakemake -n`` listing, in the order
    of ``parse_dry_run`` (a dry run with ``--quiet`` lists no files)."""
    out = []
    for _, block in _job_blocks(text):
        files = {}
        for key in ("output", "log"):
            m = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            files[key] = m[1].split(", ") if m else []
        out.append(files)
    return out


def _base_rule(rule: str) -> tuple[str, int]:
    """A group rule (``train_imp_level_seeds1_2``, ``train_perturbed_seeds1_2_v4g0``; rules/
    seed_groups.smk) -> (its base rule, runs per job)."""
    m = re.fullmatch(r"(\w+?)(?:_seeds(\d+(?:_\d+)*))?(?:_v(\d+)g\d+)?", rule)
    seeds = len(m[2].split("_")) if m[2] else 1
    return m[1], seeds * (int(m[3]) if m[3] else 1)
