"""The one checkpoint format (house habit 7): weights + iteration + hyperparameters + provenance.

Files are written atomically (temp file + ``os.replace``) so a crash never leaves a partial file at a
path Snakemake could mistake for a result, and always read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_path

FORMAT = "earlyphase-checkpoint/1"


class CheckpointError(RuntimeError):
    pass


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file beside ``path``, then rename: readers see all or nothing."""
    with atomic_path(path) as tmp:
        # Through a file object: given a path, torch.save names the archive inside the file after
        # it (here the random temp name), so equal contents would give different bytes and defeat
        # Snakemake's input checksums (a re-made, unchanged file would re-run all its readers).
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def save(path, state_dict: dict, *, iteration: int, network: str, meta: dict | None = None) -> None:
    """Save a weight state. ``meta`` holds hyperparameters and provenance (plain types only)."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    atomic_save(
        {
            "format": FORMAT,
            "network": network,
            "iteration": int(iteration),
            "state_dict": state,
            "meta": dict(meta or {}),
        },
        path,
    )


def load(path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``save``; a foreign or damaged file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; re-run the rule that makes it")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path} ({e}); delete it and re-run") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an {FORMAT} file; delete it and re-run")
    return obj
