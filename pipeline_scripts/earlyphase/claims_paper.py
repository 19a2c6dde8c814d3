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
    Scale,
    _closest,
    _fmt,
    _row_at,
    early_phase_gaps,
    main_gaps,
    mean_std,
    protocol_gaps,
    scale_label,
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
        c = Claim(
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
        if net not in scales:
            rows.append(c.not_run(f"{net} is not in the config's networks"))
            continue
        s = scales[net]
        c.scale = scale_label(s)
        m, sd, n = mean_std(s.dense_accuracy)
        c.measured, c.measured_std, c.n = _fmt(m, sd, n, "%"), sd, n
        rows.append(c.judge(m, protocol_gaps(s)))
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
    rows = []
    tel = read_telemetry(telemetry_path) if telemetry_path else None
    seeds = per_seed_timelines(tel) if tel else []
    window = int(tel["iteration"][-1]) if tel else 0
    for cid, key, desc, paper, value, (lo, hi), rule, needed, unit, source in TIMELINE:
        c = Claim(
            id=cid,
            paper_ref="Figure 2 / Section 4",
            network=MAIN_NETWORK,
            description=desc,
            paper=paper,
            source=source,
            rule=rule,
            paper_value=value,
            accept_low=lo,
            accept_high=hi,
        )
        if scale is None or tel is None:
            rows.append(c.not_run("no telemetry summary for the main network"))
            continue
        c.network, c.scale = scale.network, scale_label(scale)
        m, sd, n = mean_std([unit * t[key] for t in seeds])
        digits = 0 if unit == 1.0 else 1
        c.measured = _fmt(m, sd, n, "" if unit == 1.0 else "%", digits)
        c.measured_std, c.n = sd, n
        on_mean = unit * float(tel["timeline"].get(key, _NAN))
        if math.isfinite(on_mean):
            c.note = f"on the across-seed mean curves: {on_mean:.{digits}f} (timeline.txt)"
        rows.append(c.judge(m, early_phase_gaps(scale, window, needed)))
    return rows


# ---- Section 3 / Figure 1: IMP rewound to k >= 500 matches the dense network at 16.8% ----------
def _paired_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Mean +- std over seeds of a - b (seeds where both exist)."""
    return mean_std(np.asarray(a, float) - np.asarray(b, float))


def figure1_claims(scale: Scale | None, imp_path, levels: int) -> list[Claim]:
    base = dict(
        paper_ref="Figure 1 / Section 3",
        network=MAIN_NETWORK,
        source='Section 3: "For k >= 500, sub-networks can match the performance of the '
        'original network with 16.8% of weights remaining"',
    )
    summary = aggregate.read_summary(imp_path) if scale and imp_path else {}
    rewinds = [int(n.removeprefix("rewind")) for n in plots.rewind_series(summary)]
    if not rewinds:
        c = Claim(
            id="figure1_match_k500+",
            description="IMP rewound to k >= 500 matches the "
            "dense network at 16.8% of weights remaining",
            paper="matches dense at 16.8%",
            rule=f"IMP - dense >= -{MATCH_TOLERANCE:g} pp",
            **base,
        )
        return [c.not_run("IMP is disabled (imp.levels 0 or no rewind points)")]
    dense = summary["dense"]
    dense_acc = dense["accuracy"][_row_at(dense, 0)]
    d_mean, d_std, _ = mean_std(dense_acc)

    def at_target(series):
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

    late = [k for k in rewinds if k >= FIGURE1_MIN_K]
    chosen = [(k, []) for k in late]
    if not late and rewinds:
        chosen = [(max(rewinds), [f"no rewind point k >= 500 (imp.rewind_iterations {rewinds})"])]
    rows = []
    for k, k_gaps in chosen:
        s = summary[f"rewind{k}"]
        i, level_gaps = at_target(s)
        m, sd, n = _paired_gap(s["accuracy"][i], dense_acc)
        c = Claim(
            id=f"figure1_match_k{k}" if k >= FIGURE1_MIN_K else "figure1_match_k500+",
            description=f"IMP rewound to k = {k} matches the dense network at 16.8% of "
            "weights remaining (measured: IMP - dense, pp)",
            paper=f"matches dense ({TABLE_A1[MAIN_NETWORK][0]}%) at 16.8%",
            rule=f"IMP - dense >= -{MATCH_TOLERANCE:g} pp",
            paper_value=0.0,
            accept_low=-MATCH_TOLERANCE,
            **base,
        )
        c.measured = (
            f"{m:+.1f} ± {sd:.1f} pp (n = {n}): {s['mean'][i]:.1f}% at "
            f"{s['remaining_percent'][i]:.1f}% vs dense {d_mean:.1f}%"
        )
        c.measured_std, c.n, c.network = sd, n, scale.network
        c.scale = scale_label(scale, levels)
        rows.append(c.judge(m, [*main_gaps(scale), *k_gaps, *level_gaps]))
    if 0 in rewinds:
        s = summary["rewind0"]
        i, level_gaps = at_target(s)
        m, sd, n = _paired_gap(s["accuracy"][i], dense_acc)
        c = Claim(
            id="figure1_k0_below",
            paper_ref="Figure 1 / Section 2",
            network=scale.network,
            description="IMP rewound to k = 0 falls below the dense network at 16.8% "
            "(rewinding later is necessary; measured: IMP - dense, pp)",
            paper="below dense at 16.8%",
            source='Section 2: "it is necessary to rewind to a later point during training '
            'for IMP to succeed"; Figure 1',
            rule=f"IMP - dense < -{MATCH_TOLERANCE:g} pp",
            accept_high=-MATCH_TOLERANCE,
            scale=scale_label(scale, levels),
        )
        c.measured = (
            f"{m:+.1f} ± {sd:.1f} pp (n = {n}): {s['mean'][i]:.1f}% at "
            f"{s['remaining_percent'][i]:.1f}% vs dense {d_mean:.1f}%"
        )
        c.measured_std, c.n = sd, n
        rows.append(c.judge(m, [*main_gaps(scale), *level_gaps]))
    return rows


# ---- Section 6: pre-training -------------------------------------------------------------------
_EPOCH_SERIES = re.compile(r"e(\d+(?:\.\d+)?)")


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


def _gap_text(m: float, sd: float, n: int, a: str, b: str) -> str:
    return f"{m:+.1f} ± {sd:.1f} pp (n = {n}; {a} - {b}, mean over the pruned levels)"


def pretrain_claims(
    scale: Scale | None, pretrain: dict[str, str], sparse_path, sparse: dict, levels: int
) -> list[Claim]:
    rows = []
    specs = [  # (task, id, description, paper text, source, reference k, mode, rule, lo, hi)
        (
            "rotation",
            "pretrain_rotation_e40",
            "IMP from a state pre-trained 40 epochs on rotation prediction is similar to IMP "
            "rewound to iteration 500",
            "similar to rewinding to 500",
            "Section 6.2 and Figure 9 (upper right)",
            PRETRAIN_REWIND,
            "e40",
            f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp",
            -GAP_TOLERANCE,
            math.inf,
        ),
        (
            "blur",
            "pretrain_blur_e40",
            "IMP from a state pre-trained 40 epochs on 4x blurred images is similar to IMP "
            "rewound to iteration 500",
            "similar to rewinding to 500",
            "Section 6.3 and Figure 9 (bottom left)",
            PRETRAIN_REWIND,
            "e40",
            f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp",
            -GAP_TOLERANCE,
            math.inf,
        ),
        (
            "random_labels",
            "pretrain_random_labels",
            "pre-training on random labels for up to 10 epochs gives no improvement over "
            "rewinding to iteration 0 (largest gap over those durations)",
            "no improvement over k = 0",
            "Section 6.1 and Figure 9 (upper left)",
            0,
            "max<=10",
            f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp",
            -math.inf,
            NO_GAIN_TOLERANCE,
        ),
        (
            "blur_rotation",
            "pretrain_blur_rotation",
            "no duration of blur + rotation pre-training makes IMP tangibly better than rewinding "
            "to iteration 0 (largest gap over the durations)",
            "not tangibly better than k = 0",
            "Section 6.3 and Figure 9 (bottom right)",
            0,
            "max",
            f"pre-trained - rewind0 <= +{GAP_TOLERANCE:g} pp",
            -math.inf,
            GAP_TOLERANCE,
        ),
    ]
    for task, cid, desc, paper, where, ref_k, mode, rule, lo, hi in specs:
        c = Claim(
            id=cid,
            paper_ref="Figure 9 / Section 6",
            network=MAIN_NETWORK,
            description=desc + " (measured: pre-trained - reference, pp)",
            paper=paper,
            source=where,
            rule=rule,
            accept_low=lo,
            accept_high=hi,
        )
        if scale is None or task not in pretrain:
            rows.append(c.not_run(f"pre-training task {task} is not in pretrain.tasks"))
            continue
        summary = aggregate.read_summary(pretrain[task])
        durations = _durations(summary)
        ref, gaps = _reference(summary, ref_k)
        gaps = [*main_gaps(scale), *gaps]
        c.network, c.scale = scale.network, scale_label(scale, levels)
        if not durations or ref is None:
            rows.append(c.judge(_NAN, [*gaps, "no pre-trained chains in the summary"]))
            continue
        if mode == "e40":
            e = _closest(PRETRAIN_EPOCHS, durations)
            if e != PRETRAIN_EPOCHS:
                gaps.append(f"pre-trained {plots.epochs_text(f'{e:g}')} (paper: 40 epochs)")
            candidates = [e]
        else:
            candidates = [e for e in durations if mode == "max" or e <= 10] or list(durations)
            if mode == "max<=10" and not any(e <= 10 for e in durations):
                gaps.append("no pre-training duration of at most 10 epochs")
        gaps_by_e = {e: level_gap(summary, durations[e], ref) for e in candidates}
        e = max(gaps_by_e, key=lambda d: np.nan_to_num(gaps_by_e[d][0], nan=-math.inf))
        m, sd, n = gaps_by_e[e]
        c.measured_std, c.n = sd, n
        c.measured = _gap_text(m, sd, n, durations[e], ref)
        rows.append(c.judge(m, gaps))

    sparse_specs = [  # Section 6.4 / Figure 10
        (
            "sparse_pretrain_imp_hurts",
            "pre-training the IMP sub-network rewound to 500 under "
            "its mask before training hurts its accuracy",
            "hurts",
            "imp_pretrained",
            "imp_scratch",
            "pre-trained - not pre-trained < 0 pp",
            -math.inf,
            0.0,
        ),
        (
            "sparse_pretrain_no_benefit",
            "pre-training reinitialised or randomly pruned "
            "sub-networks gives no benefit beyond IMP rewound to 0 (largest gap)",
            "no benefit beyond k = 0",
            ("reinit_pretrained", "random_pretrained"),
            "rewind0",
            f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp",
            -math.inf,
            NO_GAIN_TOLERANCE,
        ),
    ]
    for cid, desc, paper, a, b, rule, lo, hi in sparse_specs:
        c = Claim(
            id=cid,
            paper_ref="Figure 10 / Section 6.4",
            network=MAIN_NETWORK,
            description=desc + " (measured: pp, mean over the pruned levels)",
            paper=paper,
            source='Section 6.4: "found no benefit beyond rewinding to iteration 0 ... '
            'starting from a sub-network rewound to iteration 500 actually hurts"',
            rule=rule,
            accept_low=lo,
            accept_high=hi,
        )
        if scale is None or sparse_path is None:
            rows.append(c.not_run("sparse pre-training is disabled (pretrain.sparse.kinds)"))
            continue
        summary = aggregate.read_summary(sparse_path)
        names = [n for n in ((a,) if isinstance(a, str) else a) if n in summary]
        if not names or b not in summary:
            rows.append(c.not_run(f"the run has no {a} and {b} series"))
            continue
        gaps = [*main_gaps(scale)]
        if sparse.get("rewind_iteration") != PRETRAIN_REWIND:
            gaps.append(f"sub-networks rewound to {sparse.get('rewind_iteration')} (paper: 500)")
        if float(sparse.get("epochs", _NAN)) != PRETRAIN_EPOCHS or sparse.get("task") != "rotation":
            done = plots.epochs_text(sparse.get("epochs"))
            gaps.append(f"{done} of {sparse.get('task')} (paper: 40 epochs of rotation)")
        results = {n: level_gap(summary, n, b) for n in names}
        worst = max(results, key=lambda n: np.nan_to_num(results[n][0], nan=-math.inf))
        m, sd, n = results[worst]
        c.network, c.scale, c.measured_std, c.n = scale.network, scale_label(scale, levels), sd, n
        c.measured = _gap_text(m, sd, n, worst, b)
        rows.append(c.judge(m, gaps))
    return rows
