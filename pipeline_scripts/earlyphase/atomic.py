"""Write-then-rename for every output file: Snakemake and readers see a whole file or none."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``
    (atomic on one filesystem), when it fails it is deleted. The file gets the mode a plain
    ``open`` would give (0666 minus the umask), not mkstemp's 0600, so a group sharing a project
    directory can read the results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # A writer killed mid-write (SIGKILL, out of memory) cannot delete its temporary file; the job's
    # next successful write of the same output removes such leftovers (one writer per output).
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """``name`` as a glob pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
