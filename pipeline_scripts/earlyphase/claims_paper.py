"""The paper's claims as rows of the claims table: Table A1, the Figure 2 timeline (Section 4),
Figure 1's match from k >= 500, Section 5's effective standard deviations and Figure 8's r and p,
and Section 6's pre-training claims. Each function returns its rows, judged against the run's
scale (``claim``); the paper's numbers come from ``paper``."""

from __future__ import annotations

import math
import re

import h5py
import numpy as np

from . import aggregate, plots, telemetry
from .claim import (
    _NAN,
    Claim,
    Measured,
    Scale,
    _closest,
    _row_at,
    early_phase_gaps,
    main_gaps,
    mean_std,
    over_seeds,
    protocol_gaps,
    row,
)
from .paper import (
    FIGURE1_MIN_K,
    FIGURE1_REMAINING,
    MAIN_NETWORK,
    PRETRAIN_EPOCHS,
    PRETRAIN_REWIND,
    TABLE_A1,
)

ACCURACY_TOLERANCE = 1.0  # pp: Table A1 reproduced within 1 percentage point of the paper's mean

# Section 4 (Figure 2's timeline, ResNet-20): (id, timeline key, description, paper text, paper
# value, accepted interval, rule, last iteration the claim needs, scale to the table's unit)
TIMELINE = [
    ("timeline_grad_min", "grad_min_iteration", "iteration where the gradient norm is smallest",
     "about iteration 200", 200.0, (100.0, 400.0), "within a factor of 2 of 200", 400, 1.0,
     'Section 4: "gradient magnitudes reach a minimum after the first 200 iterations"'),
    ("timeline_grad_settle", "grad_settle_iteration",
     "iteration where the gradient norm settles at its plateau (has recovered 90% of its dip)",
     "by about iteration 500", 500.0, (250.0, 1000.0), "within a factor of 2 of 500", 1000, 1.0,
     'Section 4: "subsequently increase to a stable level by iteration 500"'),
    ("timeline_accuracy_400", "accuracy_at_400", "test accuracy (%) at iteration 400",
     "55%", 55.0, (50.0, 60.0), "within 5 pp of 55%", 400, 100.0,
     'Section 4: "reaching 55% by the end of the first epoch (400 iterations)"'),
    ("timeline_accuracy_2000", "accuracy_at_2000", "test accuracy (%) at iteration 2000",
     "approaching 80%", 80.0, (75.0, 85.0), "within 5 pp of 80%", 2000, 100.0,
     'Section 4: "By 2000 iterations, accuracy approaches 80%"'),
    ("timeline_signs_500_2000", "signs_changed_500_to_2000",
     "weights whose sign differs from initialisation: increase from iteration 500 to 2000 (pp)",
     "9%", 9.0, (6.0, 12.0), "within 3 pp of 9%", 2000, 100.0,
     'Section 5.1: "only 9% of signs change during this period" (500 to 2000)'),
]  # fmt: skip

MATCH_TOLERANCE = 0.5  # pp: a sub-network "matches" when within 0.5 pp of the dense mean or above


GAP_TOLERANCE = 1.0  # pp: "similar" / "not tangibly better" when within 1 pp
NO_GAIN_TOLERANCE = 0.5  # pp: "no improvement" when at most 0.5 pp above


# ---- Table A1 ----------------------------------------------------------------------------------
def table_a1(scales: dict[str, Scale]) -> list[Claim]:
    """Dense test accuracy per network, Table A1's networks first, then the run's others."""
    rows = []
    for net in [*TABLE_A1, *(n for n in scales if n not in TABLE_A1)]:
        acc, std, _ = TABLE_A1.get(net, (_NAN, _NAN, 0))
        facts = dict(
            id=f"tableA1_{net}",
            paper_ref="Table A1",
            network=net,
            description="dense test accuracy after the full training run",
            paper=f"{acc:.1f} ± {std:.1f}%" if net in TABLE_A1 else "- (not in Table A1)",
            source="Appendix A, Table A1",
            rule=f"within {ACCURACY_TOLERANCE:g} pp of the paper's mean",
            paper_value=acc,
            accept_low=acc - ACCURACY_TOLERANCE,
            accept_high=acc + ACCURACY_TOLERANCE,
        )
        s = scales.get(net)
        if s is None:
            rows.append(row(**facts, not_run=f"{net} is not in the config's networks"))
            continue
        measured = over_seeds(s.dense_accuracy, unit="%")
        rows.append(row(**facts, scale=s, measured=measured, gaps=protocol_gaps(s)))
    return rows


# ---- Section 4: the Figure 2 timeline ----------------------------------------------------------
def read_telemetry(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {
            k: f[k][()]
            for k in ("iteration", "grad_norm/seeds", "accuracy/seeds", "sign_changed/seeds")
        }
        out["final_accuracy_mean"] = float(f.attrs["final_accuracy_mean"])
        out["timeline"] = dict(f["timeline"].attrs) if "timeline" in f else {}
    return out


def per_seed_timelines(tel: dict) -> list[dict]:
    """``telemetry.timeline`` of each seed's own curves (the summary's is of the mean curves)."""
    out = []
    for i in range(tel["grad_norm/seeds"].shape[0]):
        one = {"iteration": tel["iteration"]}
        for key in ("grad_norm", "accuracy", "sign_changed"):
            one[f"{key}/mean"] = tel[f"{key}/seeds"][i]
        try:
            out.append(telemetry.timeline(one, tel["final_accuracy_mean"]))
        except ValueError:  # no finite gradient norm after iteration 0: too short a window
            continue
    return out


def timeline_claims(scale: Scale | None, telemetry_path) -> list[Claim]:
    """Section 4's timeline (``TIMELINE``): each landmark's mean +- std over the seeds' own
    curves; the note gives it on the across-seed mean curves."""
    rows = []
    tel = read_telemetry(telemetry_path) if telemetry_path else None
    seeds = per_seed_timelines(tel) if tel else []
    window = int(tel["iteration"][-1]) if tel else 0
    for cid, key, desc, paper, value, (lo, hi), rule, needed, unit, source in TIMELINE:
        facts = dict(
            id=cid,
            paper_ref="Figure 2 / Section 4",
            description=desc,
            paper=paper,
            source=source,
            rule=rule,
            paper_value=value,
            accept_low=lo,
            accept_high=hi,
        )
        if scale is None or tel is None:
            rows.append(row(**facts, not_run="no telemetry summary for the main network"))
            continue
        digits = 0 if unit == 1.0 else 1
        measured = over_seeds(
            [unit * t[key] for t in seeds], unit="" if unit == 1.0 else "%", digits=digits
        )
        on_mean = unit * float(tel["timeline"].get(key, _NAN))
        note = (
            f"on the across-seed mean curves: {on_mean:.{digits}f} (timeline.txt)"
            if math.isfinite(on_mean)
            else ""
        )
        gaps = early_phase_gaps(scale, window, needed)
        rows.append(row(**facts, scale=scale, measured=measured, gaps=gaps, note=note))
    return rows


# ---- Section 3 / Figure 1: IMP rewound to k >= 500 matches the dense network at 16.8% ----------
_FIGURE1_SOURCE = (
    'Section 3: "For k >= 500, sub-networks can match the performance of the original network '
    'with 16.8% of weights remaining"'
)
_MATCH_RULE = f"IMP - dense >= -{MATCH_TOLERANCE:g} pp"


def figure1_claims(scale: Scale | None, imp_path, levels: int) -> list[Claim]:
    """Figure 1: IMP rewound to each k >= 500 (or, when none was run, the largest k, not
    comparable) against the dense network at 16.8% remaining, and the contrast at k = 0."""
    summary = aggregate.read_summary(imp_path) if scale and imp_path else {}
    rewinds = [int(n.removeprefix("rewind")) for n in plots.rewind_series(summary)]
    if not rewinds:
        return [
            row(
                id="figure1_match_k500+",
                paper_ref="Figure 1 / Section 3",
                description="IMP rewound to k >= 500 matches the "
                "dense network at 16.8% of weights remaining",
                paper="matches dense at 16.8%",
                source=_FIGURE1_SOURCE,
                rule=_MATCH_RULE,
                not_run="IMP is disabled (imp.levels 0 or no rewind points)",
            )
        ]
    dense = summary["dense"]
    dense_acc = dense["accuracy"][_row_at(dense, 0)]
    rows = [
        _figure1_match(scale, levels, k, k_gaps, summary[f"rewind{k}"], dense_acc)
        for k, k_gaps in _figure1_rewinds(rewinds)
    ]
    if 0 in rewinds:
        rows.append(_figure1_k0(scale, levels, summary["rewind0"], dense_acc))
    return rows


def _figure1_rewinds(rewinds: list[int]) -> list[tuple[int, list[str]]]:
    """The rewind points the match is claimed for (k >= 500), or the largest k and why it is
    not comparable."""
    late = [k for k in rewinds if k >= FIGURE1_MIN_K]
    if late:
        return [(k, []) for k in late]
    return [(max(rewinds), [f"no rewind point k >= 500 (imp.rewind_iterations {rewinds})"])]


def _at_target(series: dict) -> tuple[int, list[str]]:
    """Row of the level closest to 16.8% remaining, and the gap if it is not that level."""
    rem = series["remaining_percent"]
    i = int(np.argmin(np.abs(rem - FIGURE1_REMAINING)))
    if abs(rem[i] - FIGURE1_REMAINING) <= 0.5:
        return i, []
    i = int(np.argmin(rem))
    return i, [
        f"IMP stops at {rem[i]:.1f}% of weights remaining (level "
        f"{int(series['level'][i])}); the claim is at 16.8% (level 8)"
    ]


def _imp_minus_dense(series: dict, dense_acc: np.ndarray) -> tuple[Measured, list[str]]:
    """Per seed, IMP's accuracy at 16.8% (``_at_target``) minus the dense network's (pp)."""
    i, level_gaps = _at_target(series)
    d_mean = mean_std(dense_acc)[0]

    def text(m, sd, n):
        return (
            f"{m:+.1f} ± {sd:.1f} pp (n = {n}): {series['mean'][i]:.1f}% at "
            f"{series['remaining_percent'][i]:.1f}% vs dense {d_mean:.1f}%"
        )

    gap = np.asarray(series["accuracy"][i], float) - np.asarray(dense_acc, float)
    return over_seeds(gap, text), level_gaps


def _figure1_match(scale: Scale, levels: int, k: int, k_gaps, series, dense_acc) -> Claim:
    measured, level_gaps = _imp_minus_dense(series, dense_acc)
    return row(
        id=f"figure1_match_k{k}" if k >= FIGURE1_MIN_K else "figure1_match_k500+",
        paper_ref="Figure 1 / Section 3",
        description=f"IMP rewound to k = {k} matches the dense network at 16.8% of "
        "weights remaining (measured: IMP - dense, pp)",
        paper=f"matches dense ({TABLE_A1[MAIN_NETWORK][0]}%) at 16.8%",
        source=_FIGURE1_SOURCE,
        rule=_MATCH_RULE,
        paper_value=0.0,
        accept_low=-MATCH_TOLERANCE,
        scale=scale,
        levels=levels,
        measured=measured,
        gaps=[*main_gaps(scale), *k_gaps, *level_gaps],
    )


def _figure1_k0(scale: Scale, levels: int, series, dense_acc) -> Claim:
    measured, level_gaps = _imp_minus_dense(series, dense_acc)
    return row(
        id="figure1_k0_below",
        paper_ref="Figure 1 / Section 2",
        description="IMP rewound to k = 0 falls below the dense network at 16.8% "
        "(rewinding later is necessary; measured: IMP - dense, pp)",
        paper="below dense at 16.8%",
        source='Section 2: "it is necessary to rewind to a later point during training '
        'for IMP to succeed"; Figure 1',
        rule=f"IMP - dense < -{MATCH_TOLERANCE:g} pp",
        accept_high=-MATCH_TOLERANCE,
        scale=scale,
        levels=levels,
        measured=measured,
        gaps=[*main_gaps(scale), *level_gaps],
    )


# ---- Section 6: pre-training -------------------------------------------------------------------
_EPOCH_SERIES = re.compile(r"e(\d+(?:\.\d+)?)")

# Section 6.1-6.3 / Figure 9: per pre-training task, the IMP reference it is compared with
# (rewind<reference>), which durations count (mode "e40": the paper's 40 epochs; "max<=10": the
# largest gap over the durations up to 10 epochs; "max": over all of them), and the row's facts.
_PRETRAIN = [
    dict(
        task="rotation",
        reference=PRETRAIN_REWIND,
        mode="e40",
        id="pretrain_rotation_e40",
        description="IMP from a state pre-trained 40 epochs on rotation prediction is similar "
        "to IMP rewound to iteration 500",
        paper="similar to rewinding to 500",
        source="Section 6.2 and Figure 9 (upper right)",
        rule=f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp",
        accept_low=-GAP_TOLERANCE,
    ),
    dict(
        task="blur",
        reference=PRETRAIN_REWIND,
        mode="e40",
        id="pretrain_blur_e40",
        description="IMP from a state pre-trained 40 epochs on 4x blurred images is similar to "
        "IMP rewound to iteration 500",
        paper="similar to rewinding to 500",
        source="Section 6.3 and Figure 9 (bottom left)",
        rule=f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp",
        accept_low=-GAP_TOLERANCE,
    ),
    dict(
        task="random_labels",
        reference=0,
        mode="max<=10",
        id="pretrain_random_labels",
        description="pre-training on random labels for up to 10 epochs gives no improvement "
        "over rewinding to iteration 0 (largest gap over those durations)",
        paper="no improvement over k = 0",
        source="Section 6.1 and Figure 9 (upper left)",
        rule=f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp",
        accept_high=NO_GAIN_TOLERANCE,
    ),
    dict(
        task="blur_rotation",
        reference=0,
        mode="max",
        id="pretrain_blur_rotation",
        description="no duration of blur + rotation pre-training makes IMP tangibly better "
        "than rewinding to iteration 0 (largest gap over the durations)",
        paper="not tangibly better than k = 0",
        source="Section 6.3 and Figure 9 (bottom right)",
        rule=f"pre-trained - rewind0 <= +{GAP_TOLERANCE:g} pp",
        accept_high=GAP_TOLERANCE,
    ),
]

# Section 6.4 / Figure 10: the pre-trained series (the largest gap, if several), the series it is
# compared with, and the row's facts.
_SPARSE_PRETRAIN = [
    dict(
        pretrained="imp_pretrained",
        compared="imp_scratch",
        id="sparse_pretrain_imp_hurts",
        description="pre-training the IMP sub-network rewound to 500 under its mask before "
        "training hurts its accuracy",
        paper="hurts",
        rule="pre-trained - not pre-trained < 0 pp",
        accept_high=0.0,
    ),
    dict(
        pretrained=("reinit_pretrained", "random_pretrained"),
        compared="rewind0",
        id="sparse_pretrain_no_benefit",
        description="pre-training reinitialised or randomly pruned sub-networks gives no "
        "benefit beyond IMP rewound to 0 (largest gap)",
        paper="no benefit beyond k = 0",
        rule=f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp",
        accept_high=NO_GAIN_TOLERANCE,
    ),
]
_SPARSE_SOURCE = (
    'Section 6.4: "found no benefit beyond rewinding to iteration 0 ... starting from a '
    'sub-network rewound to iteration 500 actually hurts"'
)


def level_gap(summary: dict, a: str, b: str) -> tuple[float, float, int]:
    """Per seed, the mean over the pruned levels (>= 1) both series have of accuracy a - b (pp);
    returns mean, std and count over seeds."""
    sa, sb = summary[a], summary[b]
    common = sorted(set(sa["level"].tolist()) & set(sb["level"].tolist()) - {0})
    if not common:
        return _NAN, _NAN, 0
    diff = np.stack(
        [sa["accuracy"][_row_at(sa, lv)] - sb["accuracy"][_row_at(sb, lv)] for lv in common]
    )
    with np.errstate(all="ignore"):
        per_seed = np.nanmean(diff, axis=0)
    return mean_std(per_seed)


def _durations(summary: dict) -> dict[float, str]:
    return {
        float(m[1]): n for n in aggregate.series_names(summary) if (m := _EPOCH_SERIES.fullmatch(n))
    }


def _reference(summary: dict, wanted: int) -> tuple[str | None, list[str]]:
    ks = [int(n.removeprefix("rewind")) for n in plots.rewind_series(summary)]
    k = _closest(wanted, ks)
    if k is None:
        return None, [f"no IMP reference rewound to {wanted}"]
    return f"rewind{k}", [] if k == wanted else [f"reference rewound to {k} (paper: {wanted})"]


def _compared_durations(durations: dict[float, str], mode: str) -> tuple[list[float], list[str]]:
    """The pre-training durations a row compares (``_PRETRAIN``'s ``mode``), and the gaps."""
    if mode == "e40":
        e = _closest(PRETRAIN_EPOCHS, durations)
        if e != PRETRAIN_EPOCHS:
            return [e], [f"pre-trained {plots.epochs_text(f'{e:g}')} (paper: 40 epochs)"]
        return [e], []
    candidates = [e for e in durations if mode == "max" or e <= 10] or list(durations)
    if mode == "max<=10" and not any(e <= 10 for e in durations):
        return candidates, ["no pre-training duration of at most 10 epochs"]
    return candidates, []


def _largest_gap(summary: dict, names, reference: str) -> Measured:
    """The gap (``level_gap``) of the series of ``names`` furthest above ``reference``."""
    gaps = {n: level_gap(summary, n, reference) for n in names}
    worst = max(gaps, key=lambda n: np.nan_to_num(gaps[n][0], nan=-math.inf))
    m, sd, n = gaps[worst]
    text = f"{m:+.1f} ± {sd:.1f} pp (n = {n}; {worst} - {reference}, mean over the pruned levels)"
    return Measured(m, text, sd, n)


def _pretrain_claim(
    scale, pretrain: dict, levels: int, *, task, reference, mode, description, **facts
) -> Claim:
    """One Figure 9 row (``_PRETRAIN``): the pre-trained chains of ``task`` against IMP rewound
    to ``reference``."""
    facts = dict(
        paper_ref="Figure 9 / Section 6",
        description=description + " (measured: pre-trained - reference, pp)",
        **facts,
    )
    if scale is None or task not in pretrain:
        return row(**facts, not_run=f"pre-training task {task} is not in pretrain.tasks")
    summary = aggregate.read_summary(pretrain[task])
    durations = _durations(summary)
    ref, ref_gaps = _reference(summary, reference)
    gaps = [*main_gaps(scale), *ref_gaps]
    if not durations or ref is None:
        gaps.append("no pre-trained chains in the summary")
        return row(**facts, scale=scale, levels=levels, gaps=gaps)
    candidates, duration_gaps = _compared_durations(durations, mode)
    measured = _largest_gap(summary, [durations[e] for e in candidates], ref)
    return row(**facts, scale=scale, levels=levels, measured=measured, gaps=gaps + duration_gaps)


def _sparse_gaps(sparse: dict) -> list[str]:
    """How the config's sparse pre-training (pretrain.sparse) differs from Section 6.4's."""
    gaps = []
    if sparse.get("rewind_iteration") != PRETRAIN_REWIND:
        gaps.append(f"sub-networks rewound to {sparse.get('rewind_iteration')} (paper: 500)")
    if float(sparse.get("epochs", _NAN)) != PRETRAIN_EPOCHS or sparse.get("task") != "rotation":
        done = plots.epochs_text(sparse.get("epochs"))
        gaps.append(f"{done} of {sparse.get('task')} (paper: 40 epochs of rotation)")
    return gaps


def _sparse_pretrain_claim(
    scale, sparse_path, sparse: dict, levels: int, *, pretrained, compared, description, **facts
) -> Claim:
    """One Figure 10 row (``_SPARSE_PRETRAIN``): the ``pretrained`` series (the largest gap, if
    several) against the ``compared`` one."""
    facts = dict(
        paper_ref="Figure 10 / Section 6.4",
        description=description + " (measured: pp, mean over the pruned levels)",
        source=_SPARSE_SOURCE,
        **facts,
    )
    if scale is None or sparse_path is None:
        return row(**facts, not_run="sparse pre-training is disabled (pretrain.sparse.kinds)")
    summary = aggregate.read_summary(sparse_path)
    wanted = (pretrained,) if isinstance(pretrained, str) else pretrained
    names = [n for n in wanted if n in summary]
    if not names or compared not in summary:
        return row(**facts, not_run=f"the run has no {pretrained} and {compared} series")
    measured = _largest_gap(summary, names, compared)
    gaps = [*main_gaps(scale), *_sparse_gaps(sparse)]
    return row(**facts, scale=scale, levels=levels, measured=measured, gaps=gaps)


def pretrain_claims(
    scale: Scale | None, pretrain: dict[str, str], sparse_path, sparse: dict, levels: int
) -> list[Claim]:
    """Section 6's rows: Figure 9's pre-training tasks (``_PRETRAIN``), then Figure 10's sparse
    pre-training (``_SPARSE_PRETRAIN``; ``sparse``: the config's pretrain.sparse)."""
    rows = [_pretrain_claim(scale, pretrain, levels, **spec) for spec in _PRETRAIN]
    rows += [
        _sparse_pretrain_claim(scale, sparse_path, sparse, levels, **spec)
        for spec in _SPARSE_PRETRAIN
    ]
    return rows
