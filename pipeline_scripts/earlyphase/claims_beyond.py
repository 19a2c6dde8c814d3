"""Claims-table rows beyond the paper: what the works the paper cites found, measured here with
the same runs.

* Instability (Frankle, Dziugaite, Roy & Carbin, ICML 2020, "Linear Mode Connectivity and the
  Lottery Ticket Hypothesis"): two copies trained from iteration k on different SGD noise end in
  linearly connected minima (error barrier < 2 pp, their threshold) from early in training on -
  for CIFAR-10 ResNets within the first few thousand iterations - while IMP sub-networks at high
  sparsity are unstable at k = 0 and match the dense network's accuracy only from the k where they
  are stable (the same window as the paper's Figure 1).
* Sharpness (Gur-Ari, Roberts & Dyer, 2018, "Gradient Descent Happens in a Tiny Subspace"): the
  top Hessian eigenvalue grows quickly at the start of training, then settles.

These papers state qualitative results; the rules below are this pipeline's reading of them
(thresholds named in each row). Rows are "not comparable" below the paper's protocol, like the
paper's own claims (``claims.main_gaps``), and "not run" when the measurement is switched off.
"""

from __future__ import annotations

import numpy as np

from . import aggregate, hessian, stability
from .claim import (
    Claim,
    Measured,
    Scale,
    early_phase_gaps,
    main_gaps,
    over_seeds,
    row,
)
from .claims_paper import MATCH_TOLERANCE

LMC = "Frankle, Dziugaite, Roy & Carbin (ICML 2020), Section 3-5: stable at k early in training"
GUR_ARI = "Gur-Ari, Roberts & Dyer (2018), Section 2: top Hessian eigenvalues grow, then settle"
RESIDUAL_TOLERANCE = 0.1  # Ritz residual / value above which the top eigenvalue is not judged
SETTLE_TOLERANCE = 0.25  # relative change between the last two measured points: "settled"
_THR = stability.STABLE_BARRIER  # pp: "stable" below this error barrier


def _beyond(cid: str, desc: str, paper: str, rule: str, source: str, **kw) -> dict:
    """The facts of one row beyond the paper (``claim.row``'s arguments)."""
    return dict(
        id=cid,
        paper_ref="beyond the paper",
        description=desc,
        paper=paper,
        source=source,
        rule=rule,
        **kw,
    )


# The instability rows; the k and the IMP level measured end their descriptions.
_LMC = {
    "dense_stable": _beyond(
        "beyond_lmc_dense_stable",
        "Dense network: two copies trained from the latest rewind "
        "point end linearly connected (error barrier, pp)",
        "barrier ≈ 0 within the first few thousand iterations",
        f"barrier < {_THR:g} pp",
        LMC,
        accept_high=_THR,
        paper_value=0.0,
    ),
    "dense_falls": _beyond(
        "beyond_lmc_dense_falls",
        "Dense network: the barrier falls from k = 0 to the latest "
        "rewind point (barrier at 0 minus barrier at the latest k, pp)",
        "unstable at or near initialisation, stable early in training",
        f"fall >= {_THR:g} pp",
        LMC,
        accept_low=_THR,
    ),
    "sparse_unstable_k0": _beyond(
        "beyond_lmc_sparse_unstable_k0",
        "IMP sub-network: unstable when rewound to k = 0 (error barrier, pp)",
        "IMP sub-networks at high sparsity are unstable at k = 0",
        f"barrier >= {_THR:g} pp",
        LMC,
        accept_low=_THR,
    ),
    "sparse_stable": _beyond(
        "beyond_lmc_sparse_stable",
        "IMP sub-network: stable when rewound to the latest rewind point (error barrier, pp)",
        "stable from early in training",
        f"barrier < {_THR:g} pp",
        LMC,
        accept_high=_THR,
        paper_value=0.0,
    ),
    "stable_iff_matching": _beyond(
        "beyond_lmc_stable_iff_matching",
        "IMP sub-networks match the dense network exactly "
        "at the rewind points where they are stable (fraction of rewind points where "
        f"'barrier < {_THR:g} pp' and 'IMP - dense >= -{MATCH_TOLERANCE:g} pp' agree)",
        "matching iff stable",
        "all agree (1.0)",
        LMC,
        accept_low=1.0,
        paper_value=1.0,
    ),
}

_HESSIAN = {
    "grows": _beyond(
        "beyond_hessian_grows",
        "Top Hessian eigenvalue grows in the early phase (largest "
        "mean value over the measured iterations / value at iteration 0)",
        "grows fast at the start of training",
        "ratio > 1",
        GUR_ARI,
        accept_low=1.0 + 1e-9,
    ),
    "settles": _beyond(
        "beyond_hessian_settles",
        "... then settles (relative change of the mean top "
        "eigenvalue between the last two measured iterations)",
        "settles after the first phase",
        f"|change| <= {SETTLE_TOLERANCE:g}",
        GUR_ARI,
        accept_low=-SETTLE_TOLERANCE,
        accept_high=SETTLE_TOLERANCE,
        paper_value=0.0,
    ),
}


def _lmc(name: str, detail: str = "") -> dict:
    """The facts of the instability row ``name``; ``detail`` ends its description."""
    facts = dict(_LMC[name])
    facts["description"] += detail
    return facts


def _barrier(summary: dict, k: int) -> Measured:
    """Mean +- std over seeds of one sub-network's error barrier at rewind point ``k`` (pp)."""
    return _pp(summary["curves"][k]["barrier"])


def _pp(values) -> Measured:
    return over_seeds(values, unit=" pp", digits=2)


# ---- instability -------------------------------------------------------------------------------
def stability_claims(scale: Scale | None, path: str | None, imp_path: str | None) -> list[Claim]:
    """The instability rows (module docstring): the dense network's barrier at the latest rewind
    point and its fall from k = 0, the IMP sub-network's barrier at k = 0 and at the latest
    rewind point, and whether it matches the dense network exactly where it is stable."""
    if scale is None or not path:
        why = "stability.rewind_iterations is empty (no instability analysis)"
        return [row(**facts, not_run=why) for facts in _LMC.values()]
    summary = stability.read_summary(path)
    gaps = main_gaps(scale)
    dense = summary.get("dense")
    sparse = next((summary[s] for s in summary if s != "dense"), None)
    dense_ks = sorted(int(k) for k in dense["rewind"]) if dense else []
    return [
        *_dense_stability(scale, dense, dense_ks, gaps),
        *_sparse_stability(scale, sparse, 0 in dense_ks, imp_path, gaps),
    ]


def _dense_stability(scale: Scale, dense: dict | None, ks: list[int], gaps) -> list[Claim]:
    """The dense network's barrier at its latest rewind point, and its fall from k = 0."""
    if not ks:
        return [
            row(**_lmc("dense_stable"), scale=scale, not_run="no dense stability runs"),
            row(**_lmc("dense_falls"), scale=scale, not_run="no dense runs"),
        ]
    kmax = ks[-1]
    latest = dense["curves"][kmax]["barrier"]
    stable = row(
        **_lmc("dense_stable", f" (k = {kmax})"), scale=scale, measured=_pp(latest), gaps=gaps
    )
    if 0 not in ks or kmax == 0:
        why = "needs k = 0 and a later rewind point"
        return [stable, row(**_lmc("dense_falls"), scale=scale, not_run=why)]
    fall = _pp(np.asarray(dense["curves"][0]["barrier"]) - np.asarray(latest))
    return [stable, row(**_lmc("dense_falls"), scale=scale, measured=fall, gaps=gaps)]


def _sparse_stability(
    scale: Scale, sparse: dict | None, k0_configured: bool, imp_path: str | None, gaps
) -> list[Claim]:
    """The IMP sub-network's barrier at k = 0 and at its latest rewind point, and whether it is
    stable exactly where it matches (``_agreement``). ``k0_configured``: the dense network was
    measured at k = 0."""
    names = ("sparse_unstable_k0", "sparse_stable", "stable_iff_matching")
    if not sparse:
        why = "stability.sparse_level is null (dense network only)"
        return [row(**_lmc(n), scale=scale, not_run=why) for n in names]
    level = int(sparse["level"])
    at_level = f" at level {level} ({100 * sparse['remaining']:.1f}% remaining)"
    ks = sorted(int(k) for k in sparse["rewind"])
    k0 = _lmc("sparse_unstable_k0", at_level)
    if 0 in ks:
        k0_row = row(**k0, scale=scale, measured=_barrier(sparse, 0), gaps=gaps)
    else:
        why = "no k = 0" if k0_configured else "no k = 0 among stability.rewind_iterations"
        k0_row = row(**k0, scale=scale, not_run=why)
    latest = _lmc("sparse_stable", f"{at_level}, k = {ks[-1]}")
    return [
        k0_row,
        row(**latest, scale=scale, measured=_barrier(sparse, ks[-1]), gaps=gaps),
        _agreement(_lmc("stable_iff_matching", at_level), scale, sparse, level, imp_path, gaps),
    ]


def _agreement(facts: dict, scale: Scale, sparse: dict, level: int, imp_path, gaps) -> Claim:
    """Per rewind point: stable (mean barrier < 2 pp) vs matching (IMP - dense at the level)."""
    if not imp_path:
        why = "IMP is disabled (imp.levels 0 or no rewind points)"
        return row(**facts, scale=scale, not_run=why)
    summary = aggregate.read_summary(imp_path)
    dense = summary["dense"]
    d_mean = float(np.nanmean(dense["accuracy"][list(dense["level"]).index(0)]))
    agree, detail = [], []
    for i, k in enumerate(int(k) for k in sparse["rewind"]):
        s = summary.get(f"rewind{k}")
        if s is None or level not in list(s["level"]):
            continue
        j = list(s["level"]).index(level)
        gap = float(s["mean"][j]) - d_mean
        stable = float(sparse["barrier_mean"][i]) < stability.STABLE_BARRIER
        matching = gap >= -MATCH_TOLERANCE
        agree.append(stable == matching)
        detail.append(
            f"k={k}: barrier {sparse['barrier_mean'][i]:.1f} pp, IMP - dense {gap:+.1f}"
            f" pp{'' if stable == matching else ' (disagree)'}"
        )
    if not agree:
        why = f"no IMP chain reaches level {level} at the stability rewind points"
        return row(**facts, scale=scale, not_run=why)
    frac = float(np.mean(agree))
    text = f"{frac:.2f} ({sum(agree)} of {len(agree)}): " + "; ".join(detail)
    return row(**facts, scale=scale, measured=Measured(frac, text, n=len(agree)), gaps=gaps)


# ---- sharpness ---------------------------------------------------------------------------------
def hessian_claims(scale: Scale | None, path: str | None) -> list[Claim]:
    """The top Hessian eigenvalue grows from iteration 0, then settles (``_HESSIAN``)."""
    if scale is None or not path:
        why = "hessian.iterations is empty (no Hessian measurement)"
        return [row(**facts, not_run=why) for facts in _HESSIAN.values()]
    s = hessian.read_summary(path)
    its, per_seed = np.asarray(s["iteration"]), np.asarray(s["per_seed"])
    gaps = [*early_phase_gaps(scale, int(its[-1]), 2000), *_lanczos_gaps(s, its)]
    return [
        _hessian_grows(scale, its, per_seed, gaps),
        _hessian_settles(scale, its, per_seed, gaps),
    ]


def _lanczos_gaps(summary: dict, its: np.ndarray) -> list[str]:
    """An unconverged Lanczos estimate is a lower bound, not the value: say so instead of judging
    it."""
    top = np.abs(np.asarray(summary["mean"]))
    rel = np.asarray(summary["residual_max"]) / np.maximum(top, 1e-12)
    if not (rel > RESIDUAL_TOLERANCE).any():
        return []
    worst = int(np.argmax(rel))
    return [
        f"Lanczos not converged: residual {rel[worst]:.0%} of the value at iteration "
        f"{int(its[worst])} (raise hessian.steps)"
    ]


def _hessian_grows(scale: Scale, its: np.ndarray, per_seed: np.ndarray, gaps) -> Claim:
    """Per seed, the top eigenvalue at the mean curve's peak over its value at iteration 0."""
    if not (len(its) and its[0] == 0):
        why = "iteration 0 is not among the measured iterations"
        return row(**_HESSIAN["grows"], scale=scale, not_run=why)
    mean = per_seed.mean(0)
    peak = int(np.argmax(mean))

    def text(m, sd, n):
        return (
            f"{m:.2f} ± {sd:.2f} (n = {n}): {mean[0]:.3g} at 0 -> peak "
            f"{mean[peak]:.3g} at iteration {int(its[peak])}"
        )

    measured = over_seeds(per_seed[:, peak] / per_seed[:, 0], text)
    return row(**_HESSIAN["grows"], scale=scale, measured=measured, gaps=gaps)


def _hessian_settles(scale: Scale, its: np.ndarray, per_seed: np.ndarray, gaps) -> Claim:
    """Per seed, the relative change of the top eigenvalue between the last two iterations."""
    if len(its) < 2:
        why = "fewer than two measured iterations"
        return row(**_HESSIAN["settles"], scale=scale, not_run=why)

    def text(m, sd, n):
        return f"{m:+.2f} ± {sd:.2f} (n = {n}) between iterations {int(its[-2])} and {int(its[-1])}"

    measured = over_seeds(per_seed[:, -1] / per_seed[:, -2] - 1.0, text)
    return row(**_HESSIAN["settles"], scale=scale, measured=measured, gaps=gaps)
