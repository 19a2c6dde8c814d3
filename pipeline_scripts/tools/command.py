"""The part of a snakemake command line that decides what it runs -- its targets, ``--profile``,
``--configfile``, ``--config`` and ``--directory`` -- read as Snakemake reads them, so that a tool
given the same arguments previews (``tools.cost``) or watches (``tools.status``) that command:

    snakemake                    --profile profiles/slurm figure1 --config networks=[resnet20]
    python -m pipeline_scripts.tools.cost --profile profiles/slurm figure1 --config networks=[resnet20]

A profile (a directory with ``config.yaml``, rendered with YTE when it asks to be, as Snakemake
does) contributes its ``configfile`` and ``directory``; a path in it is relative to the profile's
directory when it exists there. Command-line ``--configfile`` replaces the profile's, as in
Snakemake, and ``--config`` entries are parsed by Snakemake's own parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_scripts.tools import cost


@dataclass
class Command:
    targets: list[str] = field(default_factory=list)
    profile: Path | None = None
    configfiles: list[Path] = field(default_factory=list)  # over the Snakefile's config.yaml
    config: list[str] = field(default_factory=list)  # --config key=value entries, as typed
    directory: Path | None = None  # the run directory (None: the current one)
    typed: list[str] = field(default_factory=list)  # the snakemake arguments as typed


def _typed(args: argparse.Namespace) -> list[str]:
    out = list(getattr(args, "targets", []) or [])
    for option in ("profile", "directory"):
        if getattr(args, option):
            out += [f"--{option}", getattr(args, option)]
    for option in ("configfile", "config"):
        if getattr(args, option):
            out += [f"--{option}", *getattr(args, option)]
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The snakemake options this module reads, with Snakemake's names and meanings."""
    p.add_argument(
        "targets", nargs="*", help="snakemake targets: an experiment (figure1, ...) or files"
    )
    p.add_argument("--profile", help="a profile directory, e.g. profiles/slurm (as snakemake)")
    p.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="config overlays merged over config.yaml (as snakemake; replaces the profile's)",
    )
    p.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, as snakemake --config (e.g. networks=[resnet20] seeds=[1,2])",
    )
    p.add_argument(
        "--directory", "-d", help="the run directory (default: the profile's, else the current)"
    )


def profile_settings(profile: str | Path) -> dict:
    """A profile's settings (its config.yaml, YTE-rendered when it has ``__use_yte__``)."""
    import yte

    path = Path(profile) / "config.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in (cost.ROOT / "profiles").glob("*/config.yaml"))
        raise SystemExit(
            f"--profile {profile}: no {path} (this repository's profiles: "
            + ", ".join(f"profiles/{k}" for k in known)
            + ")"
        )
    with open(path) as f:
        return yte.process_yaml(f, require_use_yte=True) or {}


def _in_profile(profile: Path, value: str) -> Path:
    """A path of a profile: relative to the profile's directory when it exists there."""
    there = profile / value
    return there.resolve() if there.exists() else Path(value)


def from_args(args: argparse.Namespace) -> Command:
    """The command an argparse result (``add_arguments``) describes, with its profile applied."""
    cmd = Command(
        targets=list(getattr(args, "targets", []) or []),
        config=list(args.config),
        typed=_typed(args),
    )
    for entry in cmd.config:
        if "=" not in entry:
            raise SystemExit(
                f"--config {entry}: --config takes KEY=VALUE overrides, as snakemake does "
                "(e.g. networks=[resnet20]); a config file is --configfile FILE"
            )
    settings = {}
    if args.profile:
        cmd.profile = Path(args.profile)
        settings = profile_settings(cmd.profile)
    files = args.configfile or settings.get("configfile") or []
    files = [files] if isinstance(files, str) else files
    if args.configfile:
        cmd.configfiles = [Path(f) for f in files]
    else:
        cmd.configfiles = [_in_profile(cmd.profile, f) for f in files]
    for f in cmd.configfiles:
        if not f.is_file():
            raise SystemExit(f"config file {f} does not exist")
    directory = args.directory or settings.get("directory")
    cmd.directory = Path(directory) if directory else None
    return cmd


def load_config(cmd: Command) -> dict:
    """The config the command's workflow sees: config.yaml, its --configfile overlays and its
    --config overrides, numbers typed as text read as numbers, checked against the schema."""
    import yaml
    from snakemake.cli import parse_config

    from pipeline_scripts.earlyphase import config_check

    config: dict = {}
    for p in [cost.ROOT / "config.yaml", *cmd.configfiles]:
        with open(p) as f:
            cost.merge(config, yaml.safe_load(f) or {})
    try:
        overrides = parse_config(cmd.config)
    except ValueError as e:
        raise SystemExit(f"--config {' '.join(cmd.config)}: {e}") from e
    cost.merge(config, overrides)
    with open(cost.SCHEMA) as f:
        config_check.coerce(config, yaml.safe_load(f))
    cost.validate(config)
    return config
