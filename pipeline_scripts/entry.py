"""Shared first act of every rule's entry point: send output to the rule's log file.

Entry points import it as ``from entry import open_log`` (their own directory is on sys.path).
It does not import snakemake: the job object is passed in.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Snakemake puts this directory on sys.path for `script:` rules; the package root above it makes
# `pipeline_scripts.earlyphase` importable even where the project is not pip-installed (conda envs).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def open_log(smk):
    """Redirect stdout and stderr to ``smk.log[0]`` (line-buffered); return a ``log`` function."""
    if smk.log:
        stream = open(smk.log[0], "w", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stdout = sys.stderr = stream

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    return log
