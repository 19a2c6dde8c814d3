"""Perturbations of rewound sub-networks (Section 5): masks, multisets, signs, noise scale, seeds."""

import math

import numpy as np
import pytest
import torch

from pipeline_scripts.earlyphase import perturb, rng

SHAPES = {"conv.weight": (6, 4, 3, 3), "fc.weight": (10, 12)}


def _sources(seed=0, shapes=SHAPES, keep=0.6, fresh=True):
    g = torch.Generator().manual_seed(seed)
    std = {n: math.sqrt(2.0 / math.prod(s[1:])) for n, s in shapes.items()}
    mask = {n: torch.rand(s, generator=g) < keep for n, s in shapes.items()}
    w0 = {n: torch.randn(s, generator=g) * std[n] for n, s in shapes.items()}
    wk = {
        n: (w0[n] + 0.5 * std[n] * torch.randn(s, generator=g)) * mask[n] for n, s in shapes.items()
    }
    new = {n: torch.randn(s, generator=g) * std[n] for n, s in shapes.items()} if fresh else None
    return perturb.Sources(weights_k=wk, weights_0=w0, fresh=new, mask=mask, init_std=std)


def _run(kind, sources, seed=1, **params):
    return perturb.perturb(kind, sources, rng.generator(seed, "test-perturb"), **params)


SCOPES = ["network", "layer", "filter", "kernel", "incoming", "outgoing"]
SIGN_MAGNITUDE = [("k", "k"), ("0", "0"), ("k", "0"), ("k", "fresh"), ("0", "k")]
CASES = (
    [("sign_magnitude", {"signs": s, "magnitudes": m}) for s, m in SIGN_MAGNITUDE]
    + [("shuffle", {"scope": s, "same_sign": b}) for s in SCOPES for b in (False, True)]
    + [("shuffle_magnitudes_keep_signs", {"scope": s}) for s in ("layer", "filter")]
    + [("shuffle_magnitudes_keep_signs", {"signs": "k"})]
    + [("noise", {"scale": 1.0})]
)


def _groups(sources, scope, tensors):
    """Reference grouping by explicit loops: a list of 1-D tensors of kept values, one per group."""
    if scope == "network":
        return [torch.cat([tensors[n][m] for n, m in sources.mask.items()])]
    out = []
    for n, m in sources.mask.items():
        t = tensors[n]
        if scope == "layer":
            out.append(t[m])
        elif scope in ("filter", "incoming"):
            out += [t[o][m[o]] for o in range(t.shape[0])]
        elif scope == "kernel":
            out += [t[o, i][m[o, i]] for o in range(t.shape[0]) for i in range(t.shape[1])]
        else:
            out += [t[:, i][m[:, i]] for i in range(t.shape[1])]
    return out


def _same_multisets(a, b):
    return all(
        torch.equal(torch.sort(x).values, torch.sort(y).values) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(("kind", "params"), CASES)
def test_mask_respected_inputs_untouched_shapes_kept(kind, params):
    src = _sources()
    before = {f: {n: t.clone() for n, t in getattr(src, f).items()} for f in ("weights_k", "fresh")}
    new = _run(kind, src, **params)
    assert list(new) == list(src.mask)
    for n, m in src.mask.items():
        assert new[n].shape == src.weights_k[n].shape and new[n].dtype == src.weights_k[n].dtype
        assert torch.all(new[n][~m] == 0)
        assert new[n].data_ptr() != src.weights_k[n].data_ptr()
    for f, saved in before.items():
        assert all(torch.equal(getattr(src, f)[n], t) for n, t in saved.items())


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("same_sign", [False, True])
def test_shuffle_preserves_scope_multisets_and_moves_values(scope, same_sign):
    src = _sources()
    new = _run("shuffle", src, scope=scope, same_sign=same_sign)
    assert _same_multisets(_groups(src, scope, new), _groups(src, scope, src.weights_k))
    assert any(not torch.equal(new[n], src.weights_k[n]) for n in src.mask)
    if same_sign:
        for n, m in src.mask.items():
            assert torch.equal(torch.sign(new[n][m]), torch.sign(src.weights_k[n][m]))


def test_network_shuffle_moves_values_between_layers():
    src = _sources()
    new = _run("shuffle", src, scope="network")
    assert not _same_multisets(_groups(src, "layer", new), _groups(src, "layer", src.weights_k))


def test_same_sign_shuffle_fixes_signs_even_at_network_scope():
    src = _sources(seed=3)
    new = _run("shuffle", src, scope="network", same_sign=True)
    for n, m in src.mask.items():
        assert torch.equal(new[n][m] > 0, src.weights_k[n][m] > 0)


def test_within_group_permutation_is_uniform():
    values, groups = torch.arange(3.0), torch.zeros(3, dtype=torch.long)
    seen = {
        tuple(perturb._permute_within(values, groups, rng.generator(s, "t")).tolist())
        for s in range(60)
    }
    assert len(seen) == 6


@pytest.mark.parametrize(("signs", "magnitudes"), SIGN_MAGNITUDE)
def test_sign_magnitude_mixing(signs, magnitudes):
    src = _sources()
    pick = {"k": src.weights_k, "0": src.weights_0, "fresh": src.fresh}
    new = _run("sign_magnitude", src, signs=signs, magnitudes=magnitudes)
    for n, m in src.mask.items():
        assert torch.equal(new[n][m].abs(), pick[magnitudes][n][m].abs())
        assert torch.equal(torch.sign(new[n][m]), torch.sign(pick[signs][n][m]))
    if (signs, magnitudes) == ("k", "k"):
        assert all(torch.equal(new[n], src.weights_k[n]) for n in src.mask)


def test_sign_magnitude_zero_sign_counts_as_plus():
    src = _sources()
    src.weights_k["fc.weight"][src.mask["fc.weight"]] = 0.0
    new = _run("sign_magnitude", src, signs="k", magnitudes="0")
    m = src.mask["fc.weight"]
    assert torch.equal(new["fc.weight"][m], src.weights_0["fc.weight"][m].abs())


@pytest.mark.parametrize("signs", ["0", "k"])
def test_shuffled_magnitudes_take_signs_from_source(signs):
    src = _sources()
    new = _run("shuffle_magnitudes_keep_signs", src, signs=signs)
    sign_src = src.weights_0 if signs == "0" else src.weights_k
    for n, m in src.mask.items():
        assert torch.equal(torch.sign(new[n][m]), torch.sign(sign_src[n][m]))
    assert _same_multisets(
        _groups(src, "layer", {n: t.abs() for n, t in new.items()}),
        _groups(src, "layer", {n: t.abs() for n, t in src.weights_k.items()}),
    )


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_noise_has_n_sigma_per_layer(scale):
    src = _sources(shapes={"conv.weight": (64, 32, 3, 3), "fc.weight": (200, 300)}, fresh=False)
    new = _run("noise", src, scale=scale)
    for n, m in src.mask.items():
        diff = (new[n] - src.weights_k[n])[m].double()
        target = scale * src.init_std[n]
        assert abs(diff.std().item() / target - 1) < 0.05
        assert abs(diff.mean().item()) < 0.05 * target


def test_noise_scale_zero_is_identity():
    src = _sources()
    new = _run("noise", src, scale=0.0)
    assert all(torch.equal(new[n], src.weights_k[n]) for n in src.mask)


@pytest.mark.parametrize(
    ("kind", "params"),
    [("shuffle", {"scope": s}) for s in SCOPES]
    + [("shuffle", {"scope": "filter", "same_sign": True})]
    + [("shuffle_magnitudes_keep_signs", {}), ("noise", {"scale": 1.0})],
)
def test_seed_determines_result(kind, params):
    src = _sources()
    a, b, c = (_run(kind, src, seed=s, **params) for s in (5, 5, 6))
    assert all(torch.equal(a[n], b[n]) for n in src.mask)
    assert any(not torch.equal(a[n], c[n]) for n in src.mask)


@pytest.mark.parametrize(
    ("kind", "params"),
    [("shuffle", {"scope": "layer"}), ("sign_magnitude", {"signs": "0", "magnitudes": "fresh"})],
)
def test_effective_change_matches_numpy(kind, params):
    src = _sources()
    new = _run(kind, src, **params)
    diff = np.concatenate(
        [
            (new[n].numpy().astype(np.float64) - src.weights_k[n].numpy().astype(np.float64))[
                m.numpy()
            ]
            for n, m in src.mask.items()
        ]
    )
    mean, std = perturb.effective_change(new, src.weights_k, src.mask)
    assert mean == pytest.approx(diff.mean(), rel=1e-9, abs=1e-15)
    assert std == pytest.approx(diff.std(ddof=0), rel=1e-9)


@pytest.mark.parametrize(
    ("kind", "params", "needle"),
    [
        ("reshuffle", {"scope": "layer"}, "reshuffle"),
        ("shuffle", {"scope": "layer", "colour": 1}, "colour"),
        ("shuffle", {}, "scope"),
        ("shuffle", {"scope": "block"}, "block"),
        ("sign_magnitude", {"signs": "fresh", "magnitudes": "k"}, "signs"),
        ("sign_magnitude", {"signs": "k"}, "magnitudes"),
        ("noise", {"scale": -1.0}, "scale"),
    ],
)
def test_bad_kind_or_params_raise(kind, params, needle):
    with pytest.raises(ValueError, match=needle) as err:
        _run(kind, _sources(), **params)
    assert kind in str(err.value)


def test_fresh_magnitudes_need_fresh_source():
    with pytest.raises(ValueError, match="fresh"):
        _run("sign_magnitude", _sources(fresh=False), signs="k", magnitudes="fresh")


def test_registry_and_families_cover_the_same_kinds():
    assert set(perturb.REGISTRY) == set(perturb.FAMILIES)
    assert set(perturb.FAMILIES.values()) == {
        "signs/magnitudes",
        "shuffle",
        "same-sign shuffle",
        "noise",
    }
    assert perturb.family("shuffle", scope="layer", same_sign=True) == "same-sign shuffle"
    assert perturb.family("shuffle", scope="layer") == "shuffle"
