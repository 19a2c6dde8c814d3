"""The claims table: each quantitative claim of the paper beside the value this run measured.

Reads only what the pipeline already wrote - the dense runs' metrics files (Table A1 and the run's
scale) and the summaries of the paper's main network (``results/<net>/summary/{telemetry, imp,
perturb_rewind<k>, pretrain_<task>, sparse_pretrain}.h5``) - and writes one row per claim:

    id, paper_ref, network, description      which claim, where in the paper, on which network
    paper, source                            the paper's value as stated, and where it is stated
    measured, measured_value, measured_std, n   this run's value (mean +- std over seeds, n seeds)
    verdict, rule, accept_low, accept_high   the verdict and the interval behind it
    note, scale                              why a claim is not comparable; the run's scale

Verdicts (``VERDICT_RULES``): a claim is *reproduced* when the run is at the claim's scale and the
measured value lies in the row's interval [accept_low, accept_high]; *not reproduced* when it is at
that scale and outside it; *not comparable at this scale* when the run differs from the paper's
protocol in something the claim depends on (the note names every difference; the value is still
shown); *not run* when the experiment is disabled in the config or the network is not configured.

The paper states its Section 2-6 claims for ResNet-20 (Section 3: "we show ResNet-20"), so those
rows are measured on ResNet-20 when it is configured and otherwise on the run's first network,
marked not comparable. Figure 8's correlation reuses ``plots.effective_std_points`` and
``plots.pearson``: the table and the figure cannot disagree. ``docs/results-schema.md`` documents
the output files.
"""

from __future__ import annotations

import html
import inspect
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np

from . import aggregate, identity, metrics, plots, prune, telemetry
from .atomic import atomic_path
from .paper import (  # noqa: F401 - re-exported: claims.TABLE_A1 etc. are the paper's numbers
    EFFECTIVE_STD,
    EFFECTIVE_STD_K,
    FIGURE1_MIN_K,
    FIGURE1_REMAINING,
    FIGURE8,
    FIGURE8_REMAINING,
    MAIN_NETWORK,
    PAPER_PROTOCOL,
    PAPER_PROTOCOL_TEXT,
    PRETRAIN_EPOCHS,
    PRETRAIN_REWIND,
    TABLE_A1,
)

SCHEMA = "earlyphase-claims/1"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_COMPARABLE = "not comparable at this scale"
NOT_RUN = "not run"
VERDICT_RULES = {
    REPRODUCED: "the run is at the claim's scale and the measured value lies in the row's "
    "interval [accept_low, accept_high] (the row's rule)",
    NOT_REPRODUCED: "the run is at the claim's scale and the measured value lies outside that "
    "interval",
    NOT_COMPARABLE: "the run differs from the paper's protocol in something the claim depends "
    "on (the note names each difference); the measured value is shown for reference only",
    NOT_RUN: "the experiment is disabled in the config, or the network is not configured",
}

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

EFFECTIVE_STD_TOLERANCE = 0.2  # relative: reproduced within 20% of the paper's value
EFFECTIVE_MEAN_RATIO = 0.1  # "mean approximately 0": |mean| <= 0.1 effective std for every variant

# Judging Figure 8's Pearson r and p (paper.FIGURE8)
FIGURE8_MIN_POINTS = 10  # the paper correlates all of Section 5's perturbations
R_TOLERANCE = 0.2
P_THRESHOLD = 0.05

GAP_TOLERANCE = 1.0  # pp: "similar" / "not tangibly better" when within 1 pp
NO_GAIN_TOLERANCE = 0.5  # pp: "no improvement" when at most 0.5 pp above

_NAN = float("nan")


# ---- rows and the run's scale ------------------------------------------------------------------
@dataclass
class Claim:
    """One row of the claims table (see the module docstring for the columns)."""

    id: str
    paper_ref: str
    network: str
    description: str
    paper: str
    source: str
    rule: str
    accept_low: float = -math.inf
    accept_high: float = math.inf
    paper_value: float = _NAN
    measured: str = "-"
    measured_value: float = _NAN
    measured_std: float = _NAN
    n: int = 0
    verdict: str = NOT_RUN
    note: str = ""
    scale: str = ""

    def judge(self, value: float, gaps: list[str]) -> Claim:
        """Set measured_value and the verdict: not comparable when there are gaps (named in the
        note) or no finite value, else reproduced iff value is in [accept_low, accept_high]."""
        self.measured_value = float(value)
        notes = list(gaps)
        if not math.isfinite(self.measured_value) and not notes:
            notes.append("no finite measurement")
        if notes:
            self.verdict = NOT_COMPARABLE
            self.note = "; ".join([*notes, self.note] if self.note else notes)
        else:
            ok = self.accept_low <= self.measured_value <= self.accept_high
            self.verdict = REPRODUCED if ok else NOT_REPRODUCED
        return self

    def not_run(self, why: str) -> Claim:
        self.verdict, self.note = NOT_RUN, why
        return self


COLUMNS = [f.name for f in fields(Claim)]
_FLOAT_COLUMNS = ("accept_low", "accept_high", "paper_value", "measured_value", "measured_std")


@dataclass(frozen=True)
class Scale:
    """What one network's dense runs were: read from their metrics files' root attributes."""

    network: str
    seeds: tuple[int, ...]
    data_source: str
    n_train: int
    n_test: int
    epochs: float
    iterations: int
    iterations_per_epoch: int
    batch_size: int
    lr: float
    milestones: tuple[float, ...]
    dense_accuracy: tuple[float, ...] = field(default=())  # final test accuracy per seed (%)

    def text(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        drops = ", ".join(f"{m:g}" for m in self.milestones) or "none"
        return (
            f"{self.network}: {len(self.seeds)} seed(s) ({seeds}); {self.epochs:g} epochs = "
            f"{self.iterations:,} iterations at batch {self.batch_size}; {self.n_train:,} training "
            f"/ {self.n_test:,} test images ({self.data_source}); lr {self.lr:g}, drops at epochs "
            f"{drops}"
        )


def read_scale(network: str, metrics_paths: list[str], data_source: str) -> Scale:
    """The scale of one network's dense runs (one metrics file per seed)."""
    if not metrics_paths:
        raise ValueError(f"no dense metrics files for {network}")
    runs = [metrics.read_attrs(p) for p in metrics_paths]
    first = runs[0]
    hp = json.loads(first["hparams"])
    return Scale(
        network=network,
        seeds=tuple(sorted(int(r["seed"]) for r in runs)),
        data_source=data_source,
        n_train=int(first["n_train"]),
        n_test=int(first["n_test"]),
        epochs=float(hp["epochs"]),
        iterations=int(first["total_iterations"]),
        iterations_per_epoch=int(first["iterations_per_epoch"]),
        batch_size=int(hp["batch_size"]),
        lr=float(hp["lr"]),
        milestones=tuple(float(m) for m in hp["milestones"]),
        dense_accuracy=tuple(100.0 * float(r["final_test_accuracy"]) for r in runs),
    )


def protocol_gaps(scale: Scale) -> list[str]:
    """How one network's dense runs differ from Appendix A's protocol (empty = the paper's)."""
    gaps = []
    if scale.data_source == "synthetic":
        gaps.append("synthetic data, not CIFAR-10")
    p = PAPER_PROTOCOL
    if scale.n_train != p["n_train"]:
        gaps.append(f"{scale.n_train:,} training images (paper {p['n_train']:,})")
    if scale.n_test != p["n_test"]:
        gaps.append(f"{scale.n_test:,} test images (paper {p['n_test']:,})")
    if not math.isclose(scale.epochs, p["epochs"]):
        gaps.append(f"{scale.epochs:g} epochs (paper {p['epochs']})")
    batch = TABLE_A1.get(scale.network, (0, 0, 128))[2]
    if scale.batch_size != batch:
        gaps.append(f"batch {scale.batch_size} (paper {batch})")
    if not math.isclose(scale.lr, p["lr"]):
        gaps.append(f"lr {scale.lr:g} (paper {p['lr']})")
    if tuple(scale.milestones) != p["milestones"]:
        gaps.append(f"lr drops at epochs {list(scale.milestones)} (paper [80, 120])")
    if scale.network not in TABLE_A1:
        gaps.append(f"{scale.network} is not a Table A1 network")
    return gaps


def main_gaps(scale: Scale) -> list[str]:
    """Protocol gaps of a claim the paper states for ResNet-20."""
    gaps = protocol_gaps(scale)
    if scale.network != MAIN_NETWORK:
        gaps.insert(0, f"measured on {scale.network}; the paper states this for ResNet-20")
    return gaps


def early_phase_gaps(scale: Scale, window: int, needed: int) -> list[str]:
    """Gaps for a Section 4 timeline claim about the first ``needed`` iterations: only the early
    phase has to match (data, batch, lr, no lr drop yet), not the run's length."""
    gaps = []
    if scale.network != MAIN_NETWORK:
        gaps.append(f"measured on {scale.network}; the paper states this for ResNet-20")
    if scale.data_source == "synthetic":
        gaps.append("synthetic data, not CIFAR-10")
    if scale.n_train != PAPER_PROTOCOL["n_train"]:
        gaps.append(f"{scale.n_train:,} training images (paper 50,000)")
    if scale.batch_size != 128:
        gaps.append(f"batch {scale.batch_size} (paper 128)")
    if not math.isclose(scale.lr, PAPER_PROTOCOL["lr"]):
        gaps.append(f"lr {scale.lr:g} (paper 0.1)")
    first_drop = min(scale.milestones, default=math.inf) * scale.iterations_per_epoch
    if first_drop < needed:
        gaps.append(f"the learning rate drops at iteration {first_drop:.0f}, before {needed}")
    if window < needed:
        gaps.append(f"telemetry window ends at iteration {window}; the claim needs {needed}")
    return gaps


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0 for one value) and count of the finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return _NAN, _NAN, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _fmt(mean: float, std: float, n: int, unit: str = "", digits: int = 1) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}{unit} ± {std:.{digits}f}{unit} (n = {n})"


def _closest(wanted: int, available) -> int | None:
    available = sorted(available)
    return min(available, key=lambda k: (abs(k - wanted), k)) if available else None


def _row_at(series: dict, level: int) -> int | None:
    rows = np.flatnonzero(series["level"] == level)
    return int(rows[0]) if rows.size else None


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


def scale_label(scale: Scale, levels: int | None = None) -> str:
    """The short scale of one row: network, seeds, epochs, training images, IMP levels."""
    text = (
        f"{scale.network}, {len(scale.seeds)} seeds, {scale.epochs:g} epochs, "
        f"n_train {scale.n_train:,}"
    )
    return text + (f", {levels} IMP levels" if levels is not None else "")


# ---- Section 4: the Figure 2 timeline ----------------------------------------------------------
def read_telemetry(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("iteration", "grad_norm/seeds", "accuracy/seeds",
                                     "sign_changed/seeds")}  # fmt: skip
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
        c = Claim(id=cid, paper_ref="Figure 2 / Section 4", network=MAIN_NETWORK,
                  description=desc, paper=paper, source=source, rule=rule, paper_value=value,
                  accept_low=lo, accept_high=hi)  # fmt: skip
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
    base = dict(paper_ref="Figure 1 / Section 3", network=MAIN_NETWORK,
                source='Section 3: "For k >= 500, sub-networks can match the performance of the '
                       'original network with 16.8% of weights remaining"')  # fmt: skip
    summary = aggregate.read_summary(imp_path) if scale and imp_path else {}
    rewinds = [int(n.removeprefix("rewind")) for n in plots.rewind_series(summary)]
    if not rewinds:
        c = Claim(id="figure1_match_k500+", description="IMP rewound to k >= 500 matches the "
                  "dense network at 16.8% of weights remaining", paper="matches dense at 16.8%",
                  rule=f"IMP - dense >= -{MATCH_TOLERANCE:g} pp", **base)  # fmt: skip
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
        return i, [f"IMP stops at {rem[i]:.1f}% of weights remaining (level "
                   f"{int(series['level'][i])}); the claim is at 16.8% (level 8)"]  # fmt: skip

    late = [k for k in rewinds if k >= FIGURE1_MIN_K]
    chosen = [(k, []) for k in late]
    if not late and rewinds:
        chosen = [(max(rewinds), [f"no rewind point k >= 500 (imp.rewind_iterations {rewinds})"])]
    rows = []
    for k, k_gaps in chosen:
        s = summary[f"rewind{k}"]
        i, level_gaps = at_target(s)
        m, sd, n = _paired_gap(s["accuracy"][i], dense_acc)
        c = Claim(id=f"figure1_match_k{k}" if k >= FIGURE1_MIN_K else "figure1_match_k500+",
                  description=f"IMP rewound to k = {k} matches the dense network at 16.8% of "
                  "weights remaining (measured: IMP - dense, pp)",
                  paper=f"matches dense ({TABLE_A1[MAIN_NETWORK][0]}%) at 16.8%",
                  rule=f"IMP - dense >= -{MATCH_TOLERANCE:g} pp", paper_value=0.0,
                  accept_low=-MATCH_TOLERANCE, **base)  # fmt: skip
        c.measured = (f"{m:+.1f} ± {sd:.1f} pp (n = {n}): {s['mean'][i]:.1f}% at "
                      f"{s['remaining_percent'][i]:.1f}% vs dense {d_mean:.1f}%")  # fmt: skip
        c.measured_std, c.n, c.network = sd, n, scale.network
        c.scale = scale_label(scale, levels)
        rows.append(c.judge(m, [*main_gaps(scale), *k_gaps, *level_gaps]))
    if 0 in rewinds:
        s = summary["rewind0"]
        i, level_gaps = at_target(s)
        m, sd, n = _paired_gap(s["accuracy"][i], dense_acc)
        c = Claim(id="figure1_k0_below", paper_ref="Figure 1 / Section 2", network=scale.network,
                  description="IMP rewound to k = 0 falls below the dense network at 16.8% "
                  "(rewinding later is necessary; measured: IMP - dense, pp)",
                  paper="below dense at 16.8%",
                  source='Section 2: "it is necessary to rewind to a later point during training '
                  'for IMP to succeed"; Figure 1', rule=f"IMP - dense < -{MATCH_TOLERANCE:g} pp",
                  accept_high=-MATCH_TOLERANCE, scale=scale_label(scale, levels))  # fmt: skip
        c.measured = (f"{m:+.1f} ± {sd:.1f} pp (n = {n}): {s['mean'][i]:.1f}% at "
                      f"{s['remaining_percent'][i]:.1f}% vs dense {d_mean:.1f}%")  # fmt: skip
        c.measured_std, c.n = sd, n
        rows.append(c.judge(m, [*main_gaps(scale), *level_gaps]))
    return rows


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
    gaps = [] if k == wanted_k else [f"perturbations at k = {k} (the paper's k = {wanted_k} "
                                      f"was not run)"]  # fmt: skip
    return k, gaps


def _level_gap(summary: dict, level: int, wanted: float) -> tuple[float, list[str]]:
    s = summary.get("imp") or summary.get("dense")
    i = _row_at(s, level) if s is not None else None
    rem = float(s["remaining_percent"][i]) if i is not None else _NAN
    if math.isfinite(rem) and abs(rem - wanted) <= 0.5:
        return rem, []
    return rem, [f"compared at {rem:.1f}% of weights remaining (level {level}); the paper at "
                 f"{wanted}%"]  # fmt: skip


def effective_std_claims(
    scale: Scale | None, perturb: dict[int, str], variants: dict, level: int
) -> list[Claim]:
    rows = []
    summaries = {k: aggregate.read_summary(p) for k, p in perturb.items()}
    k, k_gaps = _perturb_choice(perturb, EFFECTIVE_STD_K) if perturb else (None, [])
    summary = summaries.get(k)
    rem, level_gaps = _level_gap(summary, level, FIGURE8_REMAINING) if summary else (_NAN, [])
    for suffix, spec, value, where, what in EFFECTIVE_STD:
        lo, hi = value * (1 - EFFECTIVE_STD_TOLERANCE), value * (1 + EFFECTIVE_STD_TOLERANCE)
        c = Claim(id=f"effective_std_{suffix}", paper_ref="Section 5 / Figure 8",
                  network=MAIN_NETWORK, description=f"effective std of the perturbation at "
                  f"k = 500: {what}", paper=f"0.0 ± {value:g} (mean ± std)",
                  source=f"{where} (k = 500; the paper does not state the sparsity: compared at "
                  "Figure 8's 26.2%)", rule=f"within {EFFECTIVE_STD_TOLERANCE:.0%} of {value:g}",
                  paper_value=value, accept_low=lo, accept_high=hi)  # fmt: skip
        if scale is None or summary is None:
            rows.append(c.not_run("perturbations are disabled (perturb.run is empty)"))
            continue
        name = find_variant(variants, spec)
        if name is None or name not in summary:
            rows.append(c.not_run(f"no configured variant is {spec}"))
            continue
        i = _row_at(summary[name], level)
        eff = summary[name]["effective_std"][i] if i is not None else []
        m, sd, n = mean_std(eff)
        c.network, c.scale = scale.network, scale_label(scale)
        c.measured = f"{m:.4f} ± {sd:.4f} (n = {n}; {name}, k = {k}, {rem:.1f}%)"
        c.measured_std, c.n = sd, n
        rows.append(c.judge(m, [*main_gaps(scale), *k_gaps, *level_gaps]))

    c = Claim(id="effective_mean_zero", paper_ref="Figure 8", network=MAIN_NETWORK,
              description="every perturbation's mean change is about 0 (measured: the largest "
              "|mean| / effective std over the variants)", paper="approximately 0",
              source='Figure 8 caption: "The mean of each perturbation was approximately 0"',
              rule=f"|mean| <= {EFFECTIVE_MEAN_RATIO:g} x effective std for every variant",
              paper_value=0.0, accept_low=0.0, accept_high=EFFECTIVE_MEAN_RATIO)  # fmt: skip
    if scale is None or summary is None:
        return [*rows, c.not_run("perturbations are disabled (perturb.run is empty)")]
    ratios = {}
    for name in variants:
        i = _row_at(summary[name], level) if name in summary else None
        if i is not None:
            mean = float(np.nanmean(summary[name]["effective_mean"][i]))
            std = float(np.nanmean(summary[name]["effective_std"][i]))
            ratios[name] = abs(mean) / std if std > 0 else _NAN
    worst = max(ratios, key=lambda n: np.nan_to_num(ratios[n], nan=math.inf)) if ratios else None
    c.network, c.scale, c.n = scale.network, scale_label(scale), len(ratios)
    c.measured = f"{ratios[worst]:.3f} ({worst}; {len(ratios)} variants)" if worst else "-"
    return [*rows, c.judge(ratios[worst] if worst else _NAN, [*main_gaps(scale), *k_gaps])]


def figure8_claims(
    scale: Scale | None, perturb: dict[int, str], variants: dict, level: int
) -> list[Claim]:
    """Figure 8's Pearson r and p per k, computed exactly as the figure does."""
    rows = []
    for k_paper, (r_paper, p_paper) in FIGURE8.items():
        where = (f"Section 5.3 and Figure 8 caption: k = {k_paper}, r = {r_paper}, "
                 f"p = {p_paper}")  # fmt: skip
        r_row = Claim(id=f"figure8_r_k{k_paper}", paper_ref="Figure 8 / Section 5.3",
                      network=MAIN_NETWORK, description=f"Pearson r of effective std vs mean "
                      f"accuracy across perturbations at 26.2% remaining, k = {k_paper}",
                      paper=f"r = {r_paper}", source=where,
                      rule=f"within {R_TOLERANCE:g} of {r_paper}", paper_value=r_paper,
                      accept_low=r_paper - R_TOLERANCE, accept_high=r_paper + R_TOLERANCE)  # fmt: skip
        p_row = Claim(id=f"figure8_p_k{k_paper}", paper_ref="Figure 8 / Section 5.3",
                      network=MAIN_NETWORK, description=f"two-sided p of that correlation, "
                      f"k = {k_paper}", paper=f"p = {p_paper}", source=where,
                      rule=f"p < {P_THRESHOLD:g} (significant, as the paper's)",
                      paper_value=p_paper, accept_low=0.0, accept_high=P_THRESHOLD)  # fmt: skip
        if scale is None or not perturb:
            why = "perturbations are disabled (perturb.run is empty)"
            rows += [r_row.not_run(why), p_row.not_run(why)]
            continue
        k, k_gaps = _perturb_choice(perturb, k_paper)
        summary = aggregate.read_summary(perturb[k])
        points = plots.effective_std_points(summary, variants, level)
        r, p = plots.pearson(points)
        rem, level_gaps = _level_gap(summary, level, FIGURE8_REMAINING)
        gaps = [*main_gaps(scale), *k_gaps, *level_gaps]
        if len(points) < FIGURE8_MIN_POINTS:
            gaps.append(f"only {len(points)} perturbation variants (the paper correlates all of "
                        f"Section 5's; at least {FIGURE8_MIN_POINTS} needed)")  # fmt: skip
        for row, value, text in ((r_row, r, f"r = {r:.3f}"), (p_row, p, f"p = {p:.3g}")):
            row.network, row.scale, row.n = scale.network, scale_label(scale), len(points)
            row.measured = f"{text} ({len(points)} variants, k = {k}, {rem:.1f}%)"
            rows.append(row.judge(value, gaps))
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
    diff = np.stack([sa["accuracy"][_row_at(sa, lv)] - sb["accuracy"][_row_at(sb, lv)]
                     for lv in common])  # fmt: skip
    with np.errstate(all="ignore"):
        per_seed = np.nanmean(diff, axis=0)
    return mean_std(per_seed)


def _durations(summary: dict) -> dict[float, str]:
    return {float(m[1]): n for n in aggregate.series_names(summary)
            if (m := _EPOCH_SERIES.fullmatch(n))}  # fmt: skip


def _reference(summary: dict, wanted: int) -> tuple[str | None, list[str]]:
    ks = [int(n.removeprefix("rewind")) for n in plots.rewind_series(summary)]
    k = _closest(wanted, ks)
    if k is None:
        return None, [f"no IMP reference rewound to {wanted}"]
    return f"rewind{k}", [] if k == wanted else [f"reference rewound to {k} (paper: {wanted})"]


def _gap_text(m: float, sd: float, n: int, a: str, b: str) -> str:
    return f"{m:+.1f} ± {sd:.1f} pp (n = {n}; {a} - {b}, mean over the pruned levels)"


def pretrain_claims(scale: Scale | None, pretrain: dict[str, str], sparse_path,
                    sparse: dict, levels: int) -> list[Claim]:  # fmt: skip
    rows = []
    specs = [  # (task, id, description, paper text, source, reference k, mode, rule, lo, hi)
        ("rotation", "pretrain_rotation_e40",
         "IMP from a state pre-trained 40 epochs on rotation prediction is similar to IMP "
         "rewound to iteration 500", "similar to rewinding to 500",
         "Section 6.2 and Figure 9 (upper right)", PRETRAIN_REWIND, "e40",
         f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp", -GAP_TOLERANCE, math.inf),
        ("blur", "pretrain_blur_e40",
         "IMP from a state pre-trained 40 epochs on 4x blurred images is similar to IMP "
         "rewound to iteration 500", "similar to rewinding to 500",
         "Section 6.3 and Figure 9 (bottom left)", PRETRAIN_REWIND, "e40",
         f"pre-trained - rewind500 >= -{GAP_TOLERANCE:g} pp", -GAP_TOLERANCE, math.inf),
        ("random_labels", "pretrain_random_labels",
         "pre-training on random labels for up to 10 epochs gives no improvement over "
         "rewinding to iteration 0 (largest gap over those durations)", "no improvement over k = 0",
         "Section 6.1 and Figure 9 (upper left)", 0, "max<=10",
         f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp", -math.inf, NO_GAIN_TOLERANCE),
        ("blur_rotation", "pretrain_blur_rotation",
         "no duration of blur + rotation pre-training makes IMP tangibly better than rewinding "
         "to iteration 0 (largest gap over the durations)", "not tangibly better than k = 0",
         "Section 6.3 and Figure 9 (bottom right)", 0, "max",
         f"pre-trained - rewind0 <= +{GAP_TOLERANCE:g} pp", -math.inf, GAP_TOLERANCE),
    ]  # fmt: skip
    for task, cid, desc, paper, where, ref_k, mode, rule, lo, hi in specs:
        c = Claim(id=cid, paper_ref="Figure 9 / Section 6", network=MAIN_NETWORK,
                  description=desc + " (measured: pre-trained - reference, pp)", paper=paper,
                  source=where, rule=rule, accept_low=lo, accept_high=hi)  # fmt: skip
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
        ("sparse_pretrain_imp_hurts", "pre-training the IMP sub-network rewound to 500 under "
         "its mask before training hurts its accuracy", "hurts", "imp_pretrained",
         "imp_scratch", "pre-trained - not pre-trained < 0 pp", -math.inf, 0.0),
        ("sparse_pretrain_no_benefit", "pre-training reinitialised or randomly pruned "
         "sub-networks gives no benefit beyond IMP rewound to 0 (largest gap)",
         "no benefit beyond k = 0", ("reinit_pretrained", "random_pretrained"), "rewind0",
         f"pre-trained - rewind0 <= +{NO_GAIN_TOLERANCE:g} pp", -math.inf, NO_GAIN_TOLERANCE),
    ]  # fmt: skip
    for cid, desc, paper, a, b, rule, lo, hi in sparse_specs:
        c = Claim(id=cid, paper_ref="Figure 10 / Section 6.4", network=MAIN_NETWORK,
                  description=desc + " (measured: pp, mean over the pruned levels)", paper=paper,
                  source='Section 6.4: "found no benefit beyond rewinding to iteration 0 ... '
                  'starting from a sub-network rewound to iteration 500 actually hurts"',
                  rule=rule, accept_low=lo, accept_high=hi)  # fmt: skip
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


# ---- the whole table ---------------------------------------------------------------------------
def main_network(networks: list[str]) -> str:
    """The network the Section 2-6 claims are measured on: ResNet-20 if configured."""
    return MAIN_NETWORK if MAIN_NETWORK in networks else networks[0]


def from_layout(layout, paths) -> dict:
    """``build_claims`` keyword arguments from the rule's (kind, key) list and its input files:
    dense (network/seed), telemetry / imp / sparse (network), perturb (k), pretrain (task)."""
    out = {"dense": {}, "telemetry": None, "imp": None, "perturb": {}, "pretrain": {},
           "sparse": None, "stability": None, "hessian": None}  # fmt: skip
    for (kind, key), path in zip(layout, paths, strict=True):
        if kind == "dense":
            out["dense"].setdefault(str(key).split("/")[0], []).append(str(path))
        elif kind == "perturb":
            out["perturb"][int(key)] = str(path)
        elif kind == "pretrain":
            out["pretrain"][str(key)] = str(path)
        elif kind in ("telemetry", "imp", "sparse", "stability", "hessian"):
            out[kind] = str(path)
        else:
            raise ValueError(f"unknown claims input kind {kind!r}")
    return out


def check_dense_runs(layout, paths) -> None:
    """Every dense metrics file of the rule's inputs records the network/seed it is read for."""
    for (kind, key), path in zip(layout, paths, strict=True):
        if kind == "dense":
            net, seed = str(key).split("/")
            run = {"network": net, "seed": int(seed), "experiment": "dense", "series": "dense"}
            identity.check(path, metrics.read_attrs(path), run, identity.describe(run))


def build_claims(
    *,
    networks: list[str],
    dense: dict[str, list[str]],
    settings: dict,
    main: str | None = None,
    telemetry: str | None = None,
    imp: str | None = None,
    perturb: dict[int, str] | None = None,
    pretrain: dict[str, str] | None = None,
    sparse: str | None = None,
    stability: str | None = None,
    hessian: str | None = None,
) -> tuple[list[Claim], dict[str, Scale]]:
    """Every claim row, and each network's scale. ``dense`` maps every configured network to its
    seeds' dense metrics files; the other files are the main network's summaries (None / empty
    when that experiment is disabled; ``stability``/``hessian``: the measurements beyond the paper,
    ``claims_beyond``; ``main`` names that network, by default
    ``main_network(networks)``). ``settings``: data_source, imp_levels, figure8_level, variants
    (the configured perturbations), sparse (pretrain.sparse); ``scale_text`` reads the rest."""
    scales = {net: read_scale(net, dense[net], settings["data_source"]) for net in networks}
    main = scales.get(main or main_network(networks))
    levels = int(settings.get("imp_levels", 0))
    perturb = perturb or {}
    variants, level = settings.get("variants") or {}, int(settings.get("figure8_level", 0))
    rows = [
        *table_a1(scales),
        *timeline_claims(main, telemetry),
        *figure1_claims(main, imp, levels),
        *effective_std_claims(main, perturb, variants, level),
        *figure8_claims(main, perturb, variants, level),
        *pretrain_claims(main, pretrain or {}, sparse, settings.get("sparse") or {}, levels),
    ]
    from . import claims_beyond  # it builds on this module's rows and rules

    rows += claims_beyond.stability_claims(main, stability, imp)
    rows += claims_beyond.hessian_claims(main, hessian)
    return rows, scales


def scale_text(scales: dict[str, Scale], settings: dict) -> list[str]:
    """The lines stating the run's scale, then the paper's, for the top of the table."""
    lines = [s.text() for s in scales.values()]
    imp_levels = int(settings.get("imp_levels", 0))
    sparsest = 100 * prune.expected_fraction(imp_levels, float(settings.get("imp_fraction", 0.2)))

    def join(key):
        return ", ".join(str(v) for v in settings.get(key) or []) or "none"

    lines.append(
        f"IMP: {imp_levels} levels (sparsest {sparsest:.1f}% of weights remaining), rewound to "
        f"k = {join('imp_rewinds')}; perturbations at k = {join('perturb_rewinds')} (Figure 8 at "
        f"level {settings.get('figure8_level')}); pre-training tasks: {join('pretrain_tasks')}, "
        f"for {join('pretrain_epochs')} epochs"
    )
    lines.append(PAPER_PROTOCOL_TEXT)
    return lines


def verdict_counts(rows: list[Claim]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICT_RULES}


# ---- writers and reader ------------------------------------------------------------------------
def _atomic(path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def write_h5(path, rows: list[Claim], scales: dict[str, Scale], lines: list[str]) -> None:
    """/claims/<column> (one dataset per column, one entry per row) and root attributes."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["scale_text"] = "\n".join(lines)
            f.attrs["scales"] = json.dumps({n: asdict(s) for n, s in scales.items()})
            f.attrs["verdict_rules"] = json.dumps(VERDICT_RULES)
            f.attrs["verdict_counts"] = json.dumps(verdict_counts(rows))
            g = f.create_group("claims")
            for col in COLUMNS:
                values = [getattr(r, col) for r in rows]
                if col in _FLOAT_COLUMNS:
                    g.create_dataset(col, data=np.asarray(values, dtype=np.float64))
                elif col == "n":
                    g.create_dataset(col, data=np.asarray(values, dtype=np.int64))
                else:
                    g.create_dataset(col, data=values, dtype=h5py.string_dtype())

    _atomic(path, write)


def read_h5(path) -> tuple[list[dict], dict]:
    """(rows as dicts of the columns, root attributes)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an {SCHEMA} file")
        g = f["claims"]
        cols = {c: (g[c].asstr()[()] if g[c].dtype.kind == "O" else g[c][()]) for c in g}
        n = len(cols["id"])
        rows = [{c: (v[i].item() if hasattr(v[i], "item") else v[i]) for c, v in cols.items()}
                for i in range(n)]  # fmt: skip
        return rows, dict(f.attrs)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value).replace("\t", " ").replace("\n", " ")


def write_tsv(path, rows: list[Claim]) -> None:
    """One header line and one line per claim, every column (machine-readable)."""

    def write(tmp):
        lines = ["\t".join(COLUMNS)]
        lines += ["\t".join(_cell(getattr(r, c)) for c in COLUMNS) for r in rows]
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")

    _atomic(path, write)


_VERDICT_COLOURS = {REPRODUCED: "#d8f0d8", NOT_REPRODUCED: "#f6d5d5",
                    NOT_COMPARABLE: "#f7ecd0", NOT_RUN: "#e6e6e6"}  # fmt: skip


def write_html(path, rows: list[Claim], lines: list[str]) -> None:
    """A self-contained HTML page: the run's scale, verdict counts and rules, then the table."""
    e = html.escape
    counts = verdict_counts(rows)
    head = ["Claim", "Paper", "Network", "What", "Paper value", "This run", "Verdict",
            "Rule", "Note", "Scale"]  # fmt: skip
    body = []
    for r in rows:
        cells = [r.id, r.paper_ref, r.network, r.description,
                 f"{e(r.paper)}<br><small>{e(r.source)}</small>", r.measured, r.verdict, r.rule,
                 r.note, r.scale]  # fmt: skip
        tds = "".join(
            f"<td>{c}</td>" if i == 4 else f"<td>{e(str(c))}</td>" for i, c in enumerate(cells)
        )
        body.append(f'<tr style="background:{_VERDICT_COLOURS[r.verdict]}">{tds}</tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Paper claims beside this run</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; vertical-align: top; text-align: left; }}
th {{ background: #333; color: #fff; position: sticky; top: 0; }}
small {{ color: #555; }}
</style></head><body>
<h2>The Early Phase of Neural Network Training: paper claims beside this run</h2>
<h3>Scale of this run</h3>
<ul>{"".join(f"<li>{e(line)}</li>" for line in lines)}</ul>
<p><b>{" · ".join(f"{n} {e(v)}" for v, n in counts.items())}</b></p>
<h3>Verdicts</h3>
<ul>{"".join(f"<li><b>{e(v)}</b>: {e(t)}</li>" for v, t in VERDICT_RULES.items())}</ul>
<table id="claims">
<thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""

    def write(tmp):
        Path(tmp).write_text(page, encoding="utf-8")

    _atomic(path, write)


def write_all(rows: list[Claim], scales: dict[str, Scale], settings: dict, *, h5, tsv, html_path):
    lines = scale_text(scales, settings)
    write_h5(h5, rows, scales, lines)
    write_tsv(tsv, rows)
    write_html(html_path, rows, lines)
