"""Claims-table rows beyond the paper (issue 14): what the works the paper cites found, measured
here with the same runs.

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

import math

import numpy as np

from . import aggregate, hessian, stability
from .claim import (
    Claim,
    Scale,
    _fmt,
    early_phase_gaps,
    main_gaps,
    mean_std,
    scale_label,
)
from .claims_paper import MATCH_TOLERANCE
from .paper import MAIN_NETWORK

LMC = "Frankle, Dziugaite, Roy & Carbin (ICML 2020), Section 3-5: stable at k early in training"
GUR_ARI = "Gur-Ari, Roberts & Dyer (2018), Section 2: top Hessian eigenvalues grow, then settle"
RESIDUAL_TOLERANCE = 0.1  # Ritz residual / value above which the top eigenvalue is not judged
SETTLE_TOLERANCE = 0.25  # relative change between the last two measured points: "settled"


def _row(cid: str, desc: str, paper: str, rule: str, source: str, **kw) -> Claim:
    return Claim(
        id=cid,
        paper_ref="beyond the paper",
        network=MAIN_NETWORK,
        description=desc,
        paper=paper,
        source=source,
        rule=rule,
        **kw,
    )


def stability_claims(scale: Scale | None, path: str | None, imp_path: str | None) -> list[Claim]:
    thr = stability.STABLE_BARRIER
    rows = [
        _row(
            "beyond_lmc_dense_stable",
            "Dense network: two copies trained from the latest rewind "
            "point end linearly connected (error barrier, pp)",
            "barrier ≈ 0 within the first few thousand iterations",
            f"barrier < {thr:g} pp",
            LMC,
            accept_high=thr,
            paper_value=0.0,
        ),
        _row(
            "beyond_lmc_dense_falls",
            "Dense network: the barrier falls from k = 0 to the latest "
            "rewind point (barrier at 0 minus barrier at the latest k, pp)",
            "unstable at or near initialisation, stable early in training",
            f"fall >= {thr:g} pp",
            LMC,
            accept_low=thr,
        ),
        _row(
            "beyond_lmc_sparse_unstable_k0",
            "IMP sub-network: unstable when rewound to k = 0 (error barrier, pp)",
            "IMP sub-networks at high sparsity are unstable at k = 0",
            f"barrier >= {thr:g} pp",
            LMC,
            accept_low=thr,
        ),
        _row(
            "beyond_lmc_sparse_stable",
            "IMP sub-network: stable when rewound to the latest rewind point (error barrier, pp)",
            "stable from early in training",
            f"barrier < {thr:g} pp",
            LMC,
            accept_high=thr,
            paper_value=0.0,
        ),
        _row(
            "beyond_lmc_stable_iff_matching",
            "IMP sub-networks match the dense network exactly "
            "at the rewind points where they are stable (fraction of rewind points where "
            f"'barrier < {thr:g} pp' and 'IMP - dense >= -{MATCH_TOLERANCE:g} pp' agree)",
            "matching iff stable",
            "all agree (1.0)",
            LMC,
            accept_low=1.0,
            paper_value=1.0,
        ),
    ]
    if scale is None or not path:
        return [
            r.not_run("stability.rewind_iterations is empty (no instability analysis)")
            for r in rows
        ]
    summary = stability.read_summary(path)
    gaps = main_gaps(scale)
    label = scale_label(scale)
    for r in rows:
        r.network, r.scale = scale.network, label
    dense = summary.get("dense")
    sparse_key = next((s for s in summary if s != "dense"), None)
    sparse = summary.get(sparse_key) if sparse_key else None

    def at(s, k):
        i = list(s["rewind"]).index(k)
        return s["curves"][k]["barrier"], i

    def put(row, values, extra_gaps=()):
        m, sd, n = mean_std(values)
        row.measured, row.measured_std, row.n = _fmt(m, sd, n, " pp", 2), sd, n
        return row.judge(m, [*gaps, *extra_gaps])

    out = []
    ks = sorted(int(k) for k in dense["rewind"]) if dense else []
    kmax = ks[-1] if ks else None
    k0_gap = [] if 0 in ks else ["no k = 0 among stability.rewind_iterations"]
    if dense and kmax is not None:
        b, _ = at(dense, kmax)
        out.append(put(rows[0], b))
        rows[0].description += f" (k = {kmax})"
        if 0 in ks and kmax > 0:
            b0, _ = at(dense, 0)
            out.append(put(rows[1], np.asarray(b0) - np.asarray(b)))
        else:
            out.append(rows[1].not_run("needs k = 0 and a later rewind point"))
    else:
        out += [rows[0].not_run("no dense stability runs"), rows[1].not_run("no dense runs")]
    if not sparse:
        why = "stability.sparse_level is null (dense network only)"
        return out + [r.not_run(why) for r in rows[2:]]
    level = int(sparse["level"])
    for r in rows[2:]:
        r.description += f" at level {level} ({100 * sparse['remaining']:.1f}% remaining)"
    sks = sorted(int(k) for k in sparse["rewind"])
    if 0 in sks:
        out.append(put(rows[2], at(sparse, 0)[0]))
    else:
        out.append(rows[2].not_run(k0_gap[0] if k0_gap else "no k = 0"))
    out.append(put(rows[3], at(sparse, sks[-1])[0]))
    rows[3].description += f", k = {sks[-1]}"
    out.append(_agreement(rows[4], sparse, level, imp_path, gaps))
    return out


def _agreement(row: Claim, sparse: dict, level: int, imp_path: str | None, gaps) -> Claim:
    """Per rewind point: stable (mean barrier < 2 pp) vs matching (IMP - dense at the level)."""
    if not imp_path:
        return row.not_run("IMP is disabled (imp.levels 0 or no rewind points)")
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
        return row.not_run(f"no IMP chain reaches level {level} at the stability rewind points")
    frac = float(np.mean(agree))
    row.measured = f"{frac:.2f} ({sum(agree)} of {len(agree)}): " + "; ".join(detail)
    row.n = len(agree)
    return row.judge(frac, list(gaps))


def hessian_claims(scale: Scale | None, path: str | None) -> list[Claim]:
    rows = [
        _row(
            "beyond_hessian_grows",
            "Top Hessian eigenvalue grows in the early phase (largest "
            "mean value over the measured iterations / value at iteration 0)",
            "grows fast at the start of training",
            "ratio > 1",
            GUR_ARI,
            accept_low=1.0 + 1e-9,
        ),
        _row(
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
    ]
    if scale is None or not path:
        return [r.not_run("hessian.iterations is empty (no Hessian measurement)") for r in rows]
    s = hessian.read_summary(path)
    its, per_seed = np.asarray(s["iteration"]), np.asarray(s["per_seed"])
    gaps = early_phase_gaps(scale, int(its[-1]), 2000)
    # An unconverged Lanczos estimate is a lower bound, not the value: say so instead of judging it.
    rel = np.asarray(s["residual_max"]) / np.maximum(np.abs(np.asarray(s["mean"])), 1e-12)
    if (rel > RESIDUAL_TOLERANCE).any():
        worst = int(np.argmax(rel))
        gaps.append(
            f"Lanczos not converged: residual {rel[worst]:.0%} of the value at iteration "
            f"{int(its[worst])} (raise hessian.steps)"
        )
    label = scale_label(scale)
    for r in rows:
        r.network, r.scale = scale.network, label
    out = []
    if len(its) and its[0] == 0:
        mean = per_seed.mean(0)
        peak = int(np.argmax(mean))
        ratios = per_seed[:, peak] / per_seed[:, 0]
        m, sd, n = mean_std(ratios)
        rows[0].measured = (
            f"{m:.2f} ± {sd:.2f} (n = {n}): {mean[0]:.3g} at 0 -> peak "
            f"{mean[peak]:.3g} at iteration {int(its[peak])}"
        )
        rows[0].measured_std, rows[0].n = sd, n
        out.append(rows[0].judge(m, gaps))
    else:
        out.append(rows[0].not_run("iteration 0 is not among the measured iterations"))
    if len(its) >= 2:
        change = per_seed[:, -1] / per_seed[:, -2] - 1.0
        m, sd, n = mean_std(change)
        rows[
            1
        ].measured = (
            f"{m:+.2f} ± {sd:.2f} (n = {n}) between iterations {int(its[-2])} and {int(its[-1])}"
        )
        rows[1].measured_std, rows[1].n = sd, n
        out.append(rows[1].judge(m if math.isfinite(m) else float("nan"), gaps))
    else:
        out.append(rows[1].not_run("fewer than two measured iterations"))
    return out
