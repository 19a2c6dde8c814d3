"""Global magnitude pruning and the mask file format (Section 3, "Iterative magnitude pruning").

A mask is ``{parameter name: bool tensor}`` over the prunable weights (conv and linear weights, see
``models.prunable``); True = kept. Level L's mask removes ``fraction`` of the weights still kept at
level L-1, those with the smallest magnitudes across the whole network (global, not per layer).

Exactness: the number removed is ``ceil(fraction * remaining)``, as in the paper's framework; ties in
magnitude are broken by position (earlier tensor in parameter order, then lower flat index, goes
first), so the kept fraction is exact and the result never depends on sort instability.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import checkpoint

FORMAT = "earlyphase-mask/1"


def full_mask(state_dict: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """The level-0 mask: every prunable weight kept."""
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise ValueError(f"prunable names not in the weights: {missing[:5]}")
    return {n: torch.ones_like(state_dict[n], dtype=torch.bool) for n in names}


def global_magnitude(weights: dict, mask: dict, fraction: float) -> dict[str, torch.Tensor]:
    """Prune ``ceil(fraction * kept)`` of the kept weights with the lowest |w|, globally."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    names = list(mask)
    kept_vals = torch.cat(
        [weights[n].detach().abs().float().flatten()[mask[n].flatten()] for n in names]
    )
    n_prune = math.ceil(fraction * kept_vals.numel())
    new = {n: mask[n].clone() for n in names}
    if n_prune == 0:
        return new
    # Stable sort -> ties resolved by position in the concatenation (parameter order, flat index).
    order = torch.sort(kept_vals, stable=True).indices[:n_prune]
    drop = torch.zeros(kept_vals.numel(), dtype=torch.bool)
    drop[order] = True
    offset = 0
    for n in names:
        flat = new[n].flatten()
        kept_idx = flat.nonzero().squeeze(1)
        k = kept_idx.numel()
        flat[kept_idx[drop[offset : offset + k]]] = False
        new[n] = flat.view_as(mask[n])
        offset += k
    return new


def random_like(mask: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random mask keeping, in every tensor, as many weights as ``mask`` does (Section 6.4's
    randomly pruned sub-networks: same per-layer sparsity, random positions)."""
    out = {}
    for name, m in mask.items():
        keep = torch.randperm(m.numel(), generator=generator)[: int(m.sum())]
        new = torch.zeros(m.numel(), dtype=torch.bool)
        new[keep] = True
        out[name] = new.view_as(m)
    return out


def counts(mask: dict) -> dict[str, tuple[int, int]]:
    """{name: (total, kept)} per tensor."""
    return {n: (m.numel(), int(m.sum())) for n, m in mask.items()}


def remaining_fraction(mask: dict) -> float:
    c = counts(mask).values()
    return sum(k for _, k in c) / sum(t for t, _ in c)


def expected_fraction(level: int, fraction: float) -> float:
    """Nominal kept fraction after ``level`` levels, (1 - fraction)^level (x-axis of Figure 1)."""
    return (1.0 - fraction) ** level


def save(path: str | Path, mask: dict, *, level: int, meta: dict | None = None) -> None:
    checkpoint.atomic_save(
        {
            "format": FORMAT,
            "level": int(level),
            "mask": {k: v.cpu() for k, v in mask.items()},
            "meta": dict(meta or {}),
        },
        path,
    )


def load(
    path: str | Path, *, level: int | None = None, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """The mask saved at ``path``; with ``level`` / ``seed``, refuse a file that records another
    level or seed (a mask copied from another run), naming both."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise checkpoint.CheckpointError(f"mask {path} does not exist") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise checkpoint.CheckpointError(f"{path} is not an {FORMAT} file; delete it and re-run")
    recorded_seed = obj.get("meta", {}).get("seed")
    for key, want, got in (("level", level, obj.get("level")), ("seed", seed, recorded_seed)):
        if want is not None and got is not None and int(got) != int(want):
            raise checkpoint.CheckpointError(
                f"mask {path} records {key} {got} but is read as {key} {want}: it belongs to "
                "another run. Delete it and re-run the job that makes it."
            )
    return obj["mask"]
