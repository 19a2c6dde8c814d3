"""Explicit, purpose-keyed randomness (house habit 8).

Every random draw in the pipeline comes from a ``torch.Generator`` seeded from the replicate's seed
*and* a purpose string (plus optional extra keys such as the epoch). Two purposes never share a
stream, so adding a new random draw somewhere cannot silently shift another one, and a resumed job
can re-create any stream (e.g. the data order of epoch 17) without saving generator state.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, purpose: str, *keys: object) -> int:
    """A 63-bit integer seed that depends on (seed, purpose, *keys) and nothing else."""
    text = "/".join([str(int(seed)), purpose, *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, *keys: object) -> torch.Generator:
    """A fresh CPU generator for one purpose; same arguments -> same stream. Always on the CPU:
    a CUDA generator draws other numbers from the same seed, so draws are made here and moved
    to the data's device ("the same seed gives the same random draws on any device")."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, purpose, *keys))
    return g
