"""One row of the claims table and the run's scale: the ``Claim`` record, ``row`` (every row is
built by it: the row's facts in, the verdict decided in one place), ``Measured`` (what the run
measured for a row), the ``Scale`` read from the dense runs' metrics files, how a run differs from
the paper's protocol (the gaps that make a row "not comparable"), and the small statistics every
row uses. The rows themselves are built in ``claims_paper`` and ``claims_perturb`` (the paper's
claims) and ``claims_beyond``; ``claims`` assembles the table and ``claims_io`` writes it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np

from . import metrics, prune
from .paper import (
    MAIN_NETWORK,
    PAPER_PROTOCOL,
    PAPER_PROTOCOL_TEXT,
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


COLUMNS = [f.name for f in fields(Claim)]
_FLOAT_COLUMNS = ("accept_low", "accept_high", "paper_value", "measured_value", "measured_std")


@dataclass(frozen=True)
class Measured:
    """What the run measured for one row: the value judged, its std and count over seeds, and the
    text of the ``measured`` column."""

    value: float = _NAN
    text: str = "-"
    std: float = _NAN
    n: int = 0


NOT_MEASURED = Measured()


def row(
    *,
    id: str,
    paper_ref: str,
    description: str,
    paper: str,
    source: str,
    rule: str,
    accept_low: float = -math.inf,
    accept_high: float = math.inf,
    paper_value: float = _NAN,
    network: str = MAIN_NETWORK,
    scale: Scale | None = None,
    levels: int | None = None,
    measured: Measured = NOT_MEASURED,
    gaps: Iterable[str] = (),
    note: str = "",
    not_run: str | None = None,
) -> Claim:
    """One row of the claims table, declared by its facts: which claim (id, paper_ref,
    description), the paper's value as stated (paper, paper_value) and where (source), the
    interval [accept_low, accept_high] and its rule; and by this run's side: the ``scale`` it was
    measured at (its network and ``scale_label`` fill those columns; ``levels``: the IMP levels
    the label names), what it ``measured``, its ``gaps`` to the paper's protocol and a ``note``.

    The verdict: *not run* when ``not_run`` says why (the note); else *not comparable* when there
    are gaps or no finite value (the note names them, then ``note``); else *reproduced* iff the
    value lies in the interval, *not reproduced* if not."""
    c = Claim(
        id=id,
        paper_ref=paper_ref,
        network=scale.network if scale is not None else network,
        description=description,
        paper=paper,
        source=source,
        rule=rule,
        accept_low=accept_low,
        accept_high=accept_high,
        paper_value=paper_value,
        measured=measured.text,
        measured_std=measured.std,
        n=measured.n,
        scale=scale_label(scale, levels) if scale is not None else "",
    )
    if not_run is not None:
        c.verdict, c.note = NOT_RUN, not_run
        return c
    c.measured_value = float(measured.value)
    notes = list(gaps)
    if not math.isfinite(c.measured_value) and not notes:
        notes.append("no finite measurement")
    if notes:
        c.verdict, c.note = NOT_COMPARABLE, "; ".join([*notes, note] if note else notes)
    else:
        ok = accept_low <= c.measured_value <= accept_high
        c.verdict, c.note = (REPRODUCED if ok else NOT_REPRODUCED), note
    return c


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


def over_seeds(values, text=None, *, unit: str = "", digits: int = 1) -> Measured:
    """The mean +- std over seeds (``mean_std``) of one value per seed, shown as ``text(mean, std,
    n)``; by default "<mean><unit> ± <std><unit> (n = <n>)" to ``digits`` decimals."""
    m, sd, n = mean_std(values)
    return Measured(m, text(m, sd, n) if text else _fmt(m, sd, n, unit, digits), sd, n)


def _closest(wanted: int, available) -> int | None:
    available = sorted(available)
    return min(available, key=lambda k: (abs(k - wanted), k)) if available else None


def _row_at(series: dict, level: int) -> int | None:
    rows = np.flatnonzero(series["level"] == level)
    return int(rows[0]) if rows.size else None


def scale_label(scale: Scale, levels: int | None = None) -> str:
    """The short scale of one row: network, seeds, epochs, training images, IMP levels."""
    text = (
        f"{scale.network}, {len(scale.seeds)} seeds, {scale.epochs:g} epochs, "
        f"n_train {scale.n_train:,}"
    )
    return text + (f", {levels} IMP levels" if levels is not None else "")


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
