"""Every preset in config/ plans with the command its header documents (`#   snakemake ...`
lines, continued with a backslash), so no overlay can silently fall behind the workflow's checks."""

import shlex
from pathlib import Path

import pytest
from test_workflow import ROOT, job_counts, smk

PRESETS = sorted((ROOT / "config").glob("*.yaml"))


def documented_command(path: Path) -> list[str]:
    """The snakemake command in the overlay's header comment, as a list of arguments."""
    lines, command = path.read_text().splitlines(), None
    for line in lines:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if command is None and text.startswith("snakemake "):
            command = text
        elif command is not None and command.endswith("\\"):
            command = command[:-1] + " " + text
    assert command, f"{path} documents no `#   snakemake ...` command in its header"
    return shlex.split(command.split("(")[0])[1:]  # drop "snakemake" and a trailing remark


def test_every_preset_documents_a_command():
    assert {p.stem for p in PRESETS} >= {"laptop", "smoke", "timeline"}
    for path in PRESETS:
        documented_command(path)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_plans_with_its_documented_command(preset, tmp_path):
    args = documented_command(preset)
    if "--directory" in args:  # plan in a scratch directory, whatever the preset writes to
        i = args.index("--directory")
        del args[i : i + 2]
    proc = smk("-n", "--directory", str(tmp_path), *args)
    counts = job_counts(proc.stdout)
    assert counts.get("train_dense", 0) >= 1, proc.stdout
