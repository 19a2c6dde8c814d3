"""Perturbations of a rewound IMP sub-network (Section 5, Figures 4-8).

A perturbation replaces the *kept* prunable weights (conv and linear weights where the mask is True)
of an IMP sub-network rewound to iteration k. Pruned positions stay exactly zero; BatchNorm
parameters, biases and buffers are never touched - the caller passes only prunable weights in and
keeps the rest at their iteration-k values.

Kinds (one function and one ``REGISTRY`` entry each):

- ``sign_magnitude``: signs from one time point, magnitudes from another (Section 5.1, Figure 4).
- ``shuffle``: permute the iteration-k weights within a structural scope, optionally only among
  weights of the same sign (Section 5.2, Figures 5 and 6).
- ``shuffle_magnitudes_keep_signs``: iteration-k magnitudes permuted within a scope, signs from
  initialisation (Figure 6, brown line).
- ``noise``: iteration-k weights plus Gaussian noise of n sigma per layer (Section 5.3, Figure 7).

All randomness comes from the ``generator`` argument (house habit 8); the inputs are never modified.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sources:
    """Everything a perturbation may draw from, keyed by prunable parameter name."""

    weights_k: dict[str, Tensor]  # prunable weights at the rewind iteration k, already masked
    weights_0: dict[str, Tensor]  # the same tensors at iteration 0 (the dense run's initialisation)
    fresh: dict[str, Tensor] | None  # the same tensors from a separate random initialisation
    mask: dict[str, Tensor]  # bool, True = kept (prune.py's format)
    init_std: dict[str, float]  # per-tensor initialisation sigma = sqrt(2 / fan_in) (Figure 7)


SCOPES = ("network", "layer", "filter", "kernel", "incoming", "outgoing")
SIGN_SOURCES = ("k", "0")
MAGNITUDE_SOURCES = ("k", "0", "fresh")


def _check_choice(kind: str, param: str, value: object, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"perturbation {kind!r}: {param}={value!r} is not one of {list(options)}")
    return value  # type: ignore[return-value]


def _source(sources: Sources, which: str, kind: str, param: str) -> dict[str, Tensor]:
    if which == "k":
        return sources.weights_k
    if which == "0":
        return sources.weights_0
    if sources.fresh is None:
        raise ValueError(f"perturbation {kind!r}: {param}='fresh' needs Sources.fresh")
    return sources.fresh


def _sign(t: Tensor) -> Tensor:
    """+1 / -1; an exact zero counts as +1 so that a kept weight never loses its magnitude."""
    return torch.where(t < 0, -torch.ones_like(t), torch.ones_like(t))


def _kept_index(mask: Tensor) -> Tensor:
    """Flat indices of the kept positions, ascending."""
    return mask.flatten().nonzero().squeeze(1)


def _scope_groups(mask: dict[str, Tensor], scope: str) -> list[Tensor]:
    """Per tensor, a group id for each kept position (in ``_kept_index`` order); ids are unique
    across tensors except for ``network``, where every kept weight of every tensor is group 0.

    ``filter`` groups by output index ``o`` (tensor[o]: a conv filter's whole kernel, or a linear
    layer's row = one output neuron's incoming weights), so ``incoming`` is the same grouping.
    ``outgoing`` groups by input index ``i`` (tensor[:, i]: everything fed by one input channel).
    ``kernel`` groups by (output, input) pair (tensor[o, i]: one 3x3 kernel of a convolution; for
    a linear layer a single weight, so nothing moves there) -- the narrower reading of the paper's
    "filter" (the paper's filter/layer ratio of effective stds, 0.092 / 0.143 = 0.64, is far from
    the ~0.98 that shuffling within output channels gives).
    """
    groups, offset = [], 0
    for name, m in mask.items():
        flat = _kept_index(m)
        if scope == "network":
            groups.append(torch.zeros_like(flat))
            continue
        if scope == "layer":
            local, n_groups = torch.zeros_like(flat), 1
        else:
            if m.dim() < 2:
                raise ValueError(f"scope {scope!r} needs weights with >= 2 dims; {name!r} is 1-D")
            if scope in ("filter", "incoming"):
                local, n_groups = flat // (m.numel() // m.shape[0]), m.shape[0]
            elif scope == "kernel":
                local, n_groups = flat // math.prod(m.shape[2:]), m.shape[0] * m.shape[1]
            else:  # outgoing
                inner = math.prod(m.shape[2:])
                local, n_groups = (flat // inner) % m.shape[1], m.shape[1]
        groups.append(local + offset)
        offset += n_groups
    return groups


def _permute_within(values: Tensor, groups: Tensor, generator: torch.Generator) -> Tensor:
    """``values`` randomly permuted so that each element lands on a position of its own group.

    Batched (no per-group loop): visit the elements in a uniformly random order, stably sort that
    order by group id -> each group's members in random order; the positions, stably sorted by
    group id, list each group's slots in index order. Both lists have the same group blocks, so
    pairing them up is a uniform random permutation within every group.
    """
    n = values.numel()
    order = torch.randperm(n, generator=generator).to(values.device)
    src = order[torch.argsort(groups[order], stable=True)]
    dst = torch.argsort(groups, stable=True)
    out = torch.empty_like(values)
    out[dst] = values[src]
    return out


def _scatter_kept(
    values: Tensor, mask: dict[str, Tensor], like: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Inverse of concatenating the kept values of each tensor: new zero tensors with ``values``
    written into the kept positions, in ``mask`` order."""
    out, offset = {}, 0
    for name, m in mask.items():
        idx = _kept_index(m)
        flat = torch.zeros(m.numel(), dtype=like[name].dtype, device=like[name].device)
        flat[idx] = values[offset : offset + idx.numel()].to(flat.dtype)
        out[name] = flat.view(m.shape)
        offset += idx.numel()
    return out


def _gather_kept(weights: dict[str, Tensor], mask: dict[str, Tensor]) -> Tensor:
    return torch.cat([weights[n].detach().flatten()[_kept_index(m)] for n, m in mask.items()])


def sign_magnitude(
    sources: Sources, generator: torch.Generator, *, signs: str, magnitudes: str
) -> dict[str, Tensor]:
    """w = sign(signs source) * |magnitudes source| on kept positions (Section 5.1, Figure 4).

    ``signs`` in {"k", "0"}, ``magnitudes`` in {"k", "0", "fresh"}: the paper's (k, k), (0, 0),
    (signs k, magnitudes 0), (signs k, magnitudes of a separate initialisation) and (signs 0,
    magnitudes k). A sign-source weight that is exactly 0 at a kept position counts as +1.
    Deterministic: ``generator`` is unused.
    """
    kind = "sign_magnitude"
    _check_choice(kind, "signs", signs, SIGN_SOURCES)
    _check_choice(kind, "magnitudes", magnitudes, MAGNITUDE_SOURCES)
    sign_src = _source(sources, signs, kind, "signs")
    magnitude_src = _source(sources, magnitudes, kind, "magnitudes")
    return {
        n: (_sign(sign_src[n].detach()) * magnitude_src[n].detach().abs() * m).to(
            sources.weights_k[n].dtype
        )
        for n, m in sources.mask.items()
    }


def shuffle(
    sources: Sources, generator: torch.Generator, *, scope: str, same_sign: bool = False
) -> dict[str, Tensor]:
    """The kept iteration-k weights permuted among kept positions within ``scope`` (Section 5.2).

    ``scope``: "network" (all tensors pooled, so values move between layers), "layer", "filter"
    / "incoming" (per output channel or neuron), "outgoing" (per input channel or column); see
    ``_scope_groups``. ``same_sign=True`` (Figure 6): positives are permuted among positions whose
    iteration-k weight is positive (or zero), negatives among negative positions, so every
    nonzero position keeps its sign.
    """
    _check_choice("shuffle", "scope", scope, SCOPES)
    if not isinstance(same_sign, bool):
        raise ValueError(f"perturbation 'shuffle': same_sign must be a bool, got {same_sign!r}")
    values = _gather_kept(sources.weights_k, sources.mask)
    groups = torch.cat(_scope_groups(sources.mask, scope)).to(values.device)
    if same_sign:
        groups = 2 * groups + (values < 0).long()
    return _scatter_kept(
        _permute_within(values, groups, generator), sources.mask, sources.weights_k
    )


def shuffle_magnitudes_keep_signs(
    sources: Sources, generator: torch.Generator, *, scope: str = "layer", signs: str = "0"
) -> dict[str, Tensor]:
    """Kept iteration-k magnitudes permuted within ``scope``, signs from ``signs`` ("0" = the
    initialisation, "k" = the rewind point): Figure 6's "init signs, shuffled magnitudes within
    layers" is the default. Sign-source zeros count as +1, as in ``sign_magnitude``."""
    kind = "shuffle_magnitudes_keep_signs"
    _check_choice(kind, "scope", scope, SCOPES)
    sign_src = _source(sources, _check_choice(kind, "signs", signs, SIGN_SOURCES), kind, "signs")
    magnitudes = _gather_kept(sources.weights_k, sources.mask).abs()
    groups = torch.cat(_scope_groups(sources.mask, scope)).to(magnitudes.device)
    shuffled = _scatter_kept(
        _permute_within(magnitudes, groups, generator), sources.mask, sources.weights_k
    )
    return {n: _sign(sign_src[n].detach()).to(w.dtype) * w for n, w in shuffled.items()}


def noise(sources: Sources, generator: torch.Generator, *, scale: float) -> dict[str, Tensor]:
    """w_k + N(0, (scale * sigma_layer)^2) on kept positions, sigma_layer = ``init_std[name]``
    (Section 5.3, Figure 7). One full-shape draw per tensor, in ``mask`` order."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"perturbation 'noise': scale must be a finite number >= 0, got {scale!r}")
    out = {}
    for name, mask in sources.mask.items():
        w = sources.weights_k[name].detach()
        eps = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        sigma = scale * float(sources.init_std[name])
        out[name] = (w + sigma * eps.to(w.device)) * mask
    return out


REGISTRY: dict[str, Callable[..., dict[str, Tensor]]] = {
    "sign_magnitude": sign_magnitude,
    "shuffle": shuffle,
    "shuffle_magnitudes_keep_signs": shuffle_magnitudes_keep_signs,
    "noise": noise,
}

# Figure 8 colours points by family. ``shuffle`` with same_sign=True belongs to "same-sign shuffle"
# (Figure 6): use ``family(kind, **params)``, which resolves that case. The init-signs magnitude
# shuffle is plotted in Figure 6 alongside the same-sign shuffles, so it joins that family.
FAMILIES: dict[str, str] = {
    "sign_magnitude": "signs/magnitudes",
    "shuffle": "shuffle",
    "shuffle_magnitudes_keep_signs": "same-sign shuffle",
    "noise": "noise",
}


def _lookup(kind: str) -> Callable[..., dict[str, Tensor]]:
    if kind not in REGISTRY:
        raise ValueError(f"unknown perturbation {kind!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[kind]


def family(kind: str, **params: object) -> str:
    """The Figure 8 family of one configured perturbation."""
    _lookup(kind)
    if kind == "shuffle" and params.get("same_sign", False):
        return "same-sign shuffle"
    return FAMILIES[kind]


def _check_params(kind: str, fn: Callable, params: dict) -> None:
    accepted = {
        p.name: p
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"perturbation {kind!r}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}"
        )
    missing = sorted(
        n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params
    )
    if missing:
        raise ValueError(f"perturbation {kind!r}: missing parameter(s) {missing}")


def perturb(
    kind: str, sources: Sources, generator: torch.Generator, **params: object
) -> dict[str, Tensor]:
    """Apply perturbation ``kind``: new tensors for every name in ``sources.mask``, zero where
    pruned; the inputs are never modified."""
    fn = _lookup(kind)
    _check_params(kind, fn, params)
    needed = {"weights_k": sources.weights_k, "weights_0": sources.weights_0}
    for label, tensors in needed.items():
        missing = [n for n in sources.mask if n not in tensors]
        if missing:
            raise ValueError(f"Sources.{label} lacks masked tensors {missing[:5]}")
    with torch.no_grad():
        return fn(sources, generator, **params)


def effective_change(
    new: dict[str, Tensor], original: dict[str, Tensor], mask: dict[str, Tensor]
) -> tuple[float, float]:
    """Mean and population std (ddof=0) of ``new - original`` over the kept weights of all tensors
    pooled into one sample - the paper's "effective standard deviation" stddev(w_perturb - w_orig)
    with w_orig = weights_k (Section 5, Figure 8). Pooling means large layers weigh in proportion
    to their kept weights; pruned positions (zero in both) are left out. Computed in float64."""
    diff = torch.cat(
        [
            (new[n].detach().double() - original[n].detach().double()).flatten()[_kept_index(m)]
            for n, m in mask.items()
        ]
    )
    if diff.numel() == 0:
        raise ValueError("effective_change: the mask keeps no weights")
    mean = diff.mean()
    return float(mean), float(((diff - mean) ** 2).mean().sqrt())
