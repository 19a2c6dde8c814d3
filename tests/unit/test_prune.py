"""Global magnitude pruning: brute-force agreement, exact fractions, nesting, ties."""

import math

import torch

from pipeline_scripts.earlyphase import prune


def _brute_force(weights, mask, fraction):
    """Reference: list every kept weight as (|w|, tensor index, flat index), drop the smallest."""
    entries = []
    for t, (name, w) in enumerate(weights.items()):
        for i, (v, keep) in enumerate(
            zip(w.flatten().tolist(), mask[name].flatten().tolist(), strict=True)
        ):
            if keep:
                entries.append((abs(v), t, i, name))
    n_prune = math.ceil(fraction * len(entries))
    new = {k: m.clone().flatten() for k, m in mask.items()}
    for _, _, i, name in sorted(entries)[:n_prune]:
        new[name][i] = False
    return {k: v.view_as(mask[k]) for k, v in new.items()}


def _weights(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(4, 3, 3, 3, generator=g), "b": torch.randn(10, 7, generator=g)}
    if ties:  # few distinct magnitudes, mixed signs -> many exact ties
        w = {k: torch.randint(-3, 4, v.shape, generator=g).float() for k, v in w.items()}
    return w


def test_matches_brute_force_including_ties():
    for seed in range(4):
        for ties in (False, True):
            w = _weights(seed, ties)
            mask = prune.full_mask(w, list(w))
            for _ in range(3):
                ours = prune.global_magnitude(w, mask, 0.2)
                ref = _brute_force(w, mask, 0.2)
                assert all(torch.equal(ours[k], ref[k]) for k in w)
                mask = ours


def test_exact_fractions_and_nesting_over_levels():
    w = {"a": torch.randn(64, 32, 3, 3), "b": torch.randn(10, 64)}
    mask = prune.full_mask(w, list(w))
    total = sum(v.numel() for v in w.values())
    kept = total
    for level in range(1, 15):
        new = prune.global_magnitude(w, mask, 0.2)
        kept -= math.ceil(0.2 * kept)
        assert sum(int(m.sum()) for m in new.values()) == kept
        assert all(not (new[k] & ~mask[k]).any() for k in w)  # level L subset of level L-1
        assert abs(prune.remaining_fraction(new) - prune.expected_fraction(level, 0.2)) < 1e-3
        mask = new
    # The paper's x-axis: 4.4% of weights remain after 14 levels.
    assert round(100 * prune.remaining_fraction(mask), 1) == 4.4


def test_pruning_is_global_not_per_layer():
    w = {"small": torch.full((100,), 0.01), "large": torch.full((100,), 5.0)}
    new = prune.global_magnitude(w, prune.full_mask(w, list(w)), 0.4)
    assert int(new["small"].sum()) == 20 and int(new["large"].sum()) == 100


def test_mask_file_roundtrip(tmp_path):
    w = _weights(0)
    mask = prune.global_magnitude(w, prune.full_mask(w, list(w)), 0.5)
    prune.save(tmp_path / "m.pt", mask, level=1)
    back = prune.load(tmp_path / "m.pt")
    assert all(torch.equal(back[k], mask[k]) for k in mask)
