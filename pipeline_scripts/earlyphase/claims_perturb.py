"""Section 5's claims as rows of the claims table: the effective standard deviation of each
perturbation at k = 500 (``paper.EFFECTIVE_STD``) and Figure 8's Pearson r and p, judged against the
run's scale (``claim``). Figure 8's correlation reuses ``plots.effective_std_points`` and
``plots.pearson``, so the table and the figure cannot disagree."""

from __future__ import annotations

import inspect
import math

import numpy as np

from . import aggregate, plots
from .claim import (
    _NAN,
    NOT_MEASURED,
    Claim,
    Measured,
    Scale,
    _closest,
    _row_at,
    main_gaps,
    over_seeds,
    row,
)
from .paper import (
    EFFECTIVE_STD,
    EFFECTIVE_STD_K,
    FIGURE8,
    FIGURE8_REMAINING,
)

EFFECTIVE_STD_TOLERANCE = 0.2  # relative: reproduced within 20% of the paper's value
EFFECTIVE_MEAN_RATIO = 0.1  # "mean approximately 0": |mean| <= 0.1 effective std for every variant

# Judging Figure 8's Pearson r and p (paper.FIGURE8)
FIGURE8_MIN_POINTS = 10  # the paper correlates all of Section 5's perturbations
R_TOLERANCE = 0.2
P_THRESHOLD = 0.05


# ---- Section 5: effective standard deviations, Figure 8's r and p ------------------------------
def _full_spec(spec: dict) -> dict:
    """A perturbation's config entry with its function's defaults filled in (for matching)."""
    from . import perturb

    spec = dict(spec)
    fn = perturb.REGISTRY.get(spec["kind"])
    if fn is not None:
        for name, p in inspect.signature(fn).parameters.items():
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
                spec.setdefault(name, p.default)
    return spec


def find_variant(variants: dict, spec: dict) -> str | None:
    """Name of the configured variant that is the paper's perturbation ``spec``, if any."""
    want = _full_spec(spec)
    for name, have in variants.items():
        if _full_spec(have) == want:
            return name
    return None


def _perturb_choice(perturb: dict, wanted_k: int) -> tuple[int, list[str]]:
    k = _closest(wanted_k, perturb)
    gaps = (
        []
        if k == wanted_k
        else [f"perturbations at k = {k} (the paper's k = {wanted_k} was not run)"]
    )
    return k, gaps


def _level_gap(summary: dict, level: int, wanted: float) -> tuple[float, list[str]]:
    s = summary.get("imp") or summary.get("dense")
    i = _row_at(s, level) if s is not None else None
    rem = float(s["remaining_percent"][i]) if i is not None else _NAN
    if math.isfinite(rem) and abs(rem - wanted) <= 0.5:
        return rem, []
    return rem, [
        f"compared at {rem:.1f}% of weights remaining (level {level}); the paper at {wanted}%"
    ]


_DISABLED = "perturbations are disabled (perturb.run is empty)"


def effective_std_claims(
    scale: Scale | None, perturb: dict[int, str], variants: dict, level: int
) -> list[Claim]:
    """Section 5's effective standard deviations at k = 500 (``paper.EFFECTIVE_STD``), one row
    per perturbation, then Figure 8's "every mean is about 0"."""
    summaries = {k: aggregate.read_summary(p) for k, p in perturb.items()}
    k, k_gaps = _perturb_choice(perturb, EFFECTIVE_STD_K) if perturb else (None, [])
    summary = summaries.get(k)
    rem, level_gaps = _level_gap(summary, level, FIGURE8_REMAINING) if summary else (_NAN, [])
    rows = []
    for suffix, spec, value, where, what in EFFECTIVE_STD:
        facts = dict(
            id=f"effective_std_{suffix}",
            paper_ref="Section 5 / Figure 8",
            description=f"effective std of the perturbation at k = 500: {what}",
            paper=f"0.0 ± {value:g} (mean ± std)",
            source=f"{where} (k = 500; the paper does not state the sparsity: compared at "
            "Figure 8's 26.2%)",
            rule=f"within {EFFECTIVE_STD_TOLERANCE:.0%} of {value:g}",
            paper_value=value,
            accept_low=value * (1 - EFFECTIVE_STD_TOLERANCE),
            accept_high=value * (1 + EFFECTIVE_STD_TOLERANCE),
        )
        if scale is None or summary is None:
            rows.append(row(**facts, not_run=_DISABLED))
            continue
        name = find_variant(variants, spec)
        if name is None or name not in summary:
            rows.append(row(**facts, not_run=f"no configured variant is {spec}"))
            continue
        measured = _effective_std(summary[name], level, f"{name}, k = {k}, {rem:.1f}%")
        gaps = [*main_gaps(scale), *k_gaps, *level_gaps]
        rows.append(row(**facts, scale=scale, measured=measured, gaps=gaps))
    return [*rows, _effective_mean_claim(scale, summary, variants, level, k_gaps)]


def _effective_std(series: dict, level: int, where: str) -> Measured:
    """Mean +- std over seeds of one variant's effective std at ``level``."""
    i = _row_at(series, level)
    eff = series["effective_std"][i] if i is not None else []
    return over_seeds(eff, lambda m, sd, n: f"{m:.4f} ± {sd:.4f} (n = {n}; {where})")


def _effective_mean_claim(
    scale: Scale | None, summary: dict | None, variants: dict, level: int, k_gaps: list[str]
) -> Claim:
    """Figure 8's caption: each perturbation's mean is about 0 (the largest |mean| / std)."""
    facts = dict(
        id="effective_mean_zero",
        paper_ref="Figure 8",
        description="every perturbation's mean change is about 0 (measured: the largest "
        "|mean| / effective std over the variants)",
        paper="approximately 0",
        source='Figure 8 caption: "The mean of each perturbation was approximately 0"',
        rule=f"|mean| <= {EFFECTIVE_MEAN_RATIO:g} x effective std for every variant",
        paper_value=0.0,
        accept_low=0.0,
        accept_high=EFFECTIVE_MEAN_RATIO,
    )
    if scale is None or summary is None:
        return row(**facts, not_run=_DISABLED)
    ratios = {}
    for name in variants:
        i = _row_at(summary[name], level) if name in summary else None
        if i is not None:
            mean = float(np.nanmean(summary[name]["effective_mean"][i]))
            std = float(np.nanmean(summary[name]["effective_std"][i]))
            ratios[name] = abs(mean) / std if std > 0 else _NAN
    worst = max(ratios, key=lambda n: np.nan_to_num(ratios[n], nan=math.inf)) if ratios else None
    measured = NOT_MEASURED
    if worst:
        text = f"{ratios[worst]:.3f} ({worst}; {len(ratios)} variants)"
        measured = Measured(ratios[worst], text, n=len(ratios))
    return row(**facts, scale=scale, measured=measured, gaps=[*main_gaps(scale), *k_gaps])


def figure8_claims(
    scale: Scale | None, perturb: dict[int, str], variants: dict, level: int
) -> list[Claim]:
    """Figure 8's Pearson r and p per k, computed exactly as the figure does."""
    rows = []
    for k_paper, (r_paper, p_paper) in FIGURE8.items():
        where = f"Section 5.3 and Figure 8 caption: k = {k_paper}, r = {r_paper}, p = {p_paper}"
        r_facts = dict(
            id=f"figure8_r_k{k_paper}",
            paper_ref="Figure 8 / Section 5.3",
            description=f"Pearson r of effective std vs mean "
            f"accuracy across perturbations at 26.2% remaining, k = {k_paper}",
            paper=f"r = {r_paper}",
            source=where,
            rule=f"within {R_TOLERANCE:g} of {r_paper}",
            paper_value=r_paper,
            accept_low=r_paper - R_TOLERANCE,
            accept_high=r_paper + R_TOLERANCE,
        )
        p_facts = dict(
            id=f"figure8_p_k{k_paper}",
            paper_ref="Figure 8 / Section 5.3",
            description=f"two-sided p of that correlation, k = {k_paper}",
            paper=f"p = {p_paper}",
            source=where,
            rule=f"p < {P_THRESHOLD:g} (significant, as the paper's)",
            paper_value=p_paper,
            accept_low=0.0,
            accept_high=P_THRESHOLD,
        )
        if scale is None or not perturb:
            rows += [row(**r_facts, not_run=_DISABLED), row(**p_facts, not_run=_DISABLED)]
            continue
        k, k_gaps = _perturb_choice(perturb, k_paper)
        summary = aggregate.read_summary(perturb[k])
        points = plots.effective_std_points(summary, variants, level)
        r, p = plots.pearson(points)
        rem, level_gaps = _level_gap(summary, level, FIGURE8_REMAINING)
        gaps = [*main_gaps(scale), *k_gaps, *level_gaps]
        if len(points) < FIGURE8_MIN_POINTS:
            gaps.append(
                f"only {len(points)} perturbation variants (the paper correlates all of "
                f"Section 5's; at least {FIGURE8_MIN_POINTS} needed)"
            )
        tail = f"({len(points)} variants, k = {k}, {rem:.1f}%)"
        r_measured = Measured(r, f"r = {r:.3f} {tail}", n=len(points))
        p_measured = Measured(p, f"p = {p:.3g} {tail}", n=len(points))
        rows.append(row(**r_facts, scale=scale, measured=r_measured, gaps=gaps))
        rows.append(row(**p_facts, scale=scale, measured=p_measured, gaps=gaps))
    return rows
