"""Figures drawn from summary files (``aggregate.summarise``); never from raw metrics files.

Layers, so later figures reuse the same pieces:
  * ``draw_accuracy_vs_sparsity(ax, summary, ...)`` draws one panel onto a given Axes: the shape of
    Figures 1, 4-10 and A2: test accuracy against % of weights remaining, one line per series.
  * ``new_figure`` / ``save`` make a figure without pyplot's global state and write PDF/PNG files.
  * ``figure_accuracy_vs_sparsity`` = one panel in one figure; ``figure1`` names Figure 1's series.
Multi-panel figures (one panel per rewind iteration k) call ``new_figure(ncols=...)``, compute
``series_colors`` once over every series they show so a variant has the same colour in each panel,
and call the panel function per Axes.

Matplotlib's ``Figure`` is used directly with the Agg canvas (no ``pyplot``), so importing this
module never changes the process's backend and figures are not kept alive by a global registry.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from . import aggregate
from .atomic import atomic_path

PANEL_SIZE = (5.0, 3.5)  # inches, one paper panel (Figure 1)
PNG_DPI = 150
REFERENCE_COLOR = "0.25"  # the dense network's line: dark grey, never one of the series colours
BAND_ALPHA = 0.2  # opacity of the +-1 std bands
MAX_XTICKS = 9  # Figure 1 labels 8 levels (every other one); thin the ticks beyond this

# Paper spelling of the network names of Table A1; other names are shown as they are.
_DISPLAY_NAMES = [
    (r"resnet(\d+)", "ResNet-{0}"),
    (r"resnet(\d+)_w(\d+)", "ResNet-{0} (width {1})"),
    (r"wrn(\d+)_(\d+)", "WRN-{0}-{1}"),
    (r"vgg(\d+)", "VGG-{0}"),
    (r"vgg(\d+)_w(\d+)", "VGG-{0} (width {1})"),
]


def network_display_name(network: str) -> str:
    """``resnet20`` -> ``ResNet-20``, ``wrn16_8`` -> ``WRN-16-8``, ``vgg13`` -> ``VGG-13``."""
    for pattern, template in _DISPLAY_NAMES:
        m = re.fullmatch(pattern, network)
        if m:
            return template.format(*m.groups())
    return network


def series_colors(names: list[str]) -> dict[str, str]:
    """One distinct colour per series, by position: tab10 for up to 10 series, tab20 beyond."""
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    if len(names) > len(palette):
        raise ValueError(f"{len(names)} series is more than one panel can tell apart")
    return {name: to_hex(palette[i]) for i, name in enumerate(names)}


def percent_label(percent: float) -> str:
    """Tick label as in the paper's figures: 100.0, 64.0, 41.0, 26.2, ..., 4.4."""
    return f"{percent:.1f}"


def _xticks(percents) -> list[float]:
    """Distinct measured percents, largest first, thinned evenly to at most MAX_XTICKS."""
    unique = sorted({round(float(p), 1) for p in percents}, reverse=True)
    step = math.ceil(len(unique) / MAX_XTICKS)
    return unique[::step]


def draw_accuracy_vs_sparsity(
    ax: Axes,
    summary: dict,
    *,
    series: list[str] | None = None,
    labels: dict | None = None,
    reference: str | None = "dense",
    colors: dict | None = None,
    title: str = "",
    legend: bool = True,
) -> None:
    """Draw one accuracy-vs-sparsity panel from a ``aggregate.read_summary`` result onto ``ax``.

    Each series is its mean (line + marker) with a shaded +-1 std band across seeds. ``reference``
    (level 0 of that series, normally the dense network) is a horizontal line with its own band.
    The x axis is log-scaled and runs from 100 % on the left to the sparsest level on the right,
    ticked at the measured percents, as in the paper. ``series`` defaults to every series but the
    reference, in file order; ``colors`` defaults to ``series_colors(series)``.
    """
    known = aggregate.series_names(summary)
    if series is None:
        series = [name for name in known if name != reference]
    missing = [name for name in series + ([reference] if reference else []) if name not in known]
    if missing:
        raise ValueError(f"series {missing} not in the summary; it has {known}")
    labels = labels or {}
    colors = colors or series_colors(series)

    percents = []
    for name in series:
        s = summary[name]
        x, mean, std = s["remaining_percent"], s["mean"], s["std"]
        color = colors[name]
        ax.plot(
            x,
            mean,
            marker="o",
            markersize=3.5,
            linewidth=1.4,
            color=color,
            label=labels.get(name, name),
        )
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=BAND_ALPHA, linewidth=0)
        percents.extend(x)

    if reference is not None:
        ref = summary[reference]
        i = int(np.argmin(ref["level"]))
        mean, std = float(ref["mean"][i]), float(ref["std"][i])
        ax.axhline(
            mean,
            color=REFERENCE_COLOR,
            linestyle="--",
            linewidth=1.2,
            label=labels.get(reference, reference),
        )
        if std > 0:
            ax.axhspan(
                mean - std, mean + std, color=REFERENCE_COLOR, alpha=BAND_ALPHA / 2, linewidth=0
            )
        percents.append(float(ref["remaining_percent"][i]))

    ax.set_xscale("log")
    ticks = _xticks(percents)
    if ticks:
        # Left limit > right limit inverts the axis: 100 % on the left, like the paper.
        ax.set_xlim(max(ticks) * 1.08, min(ticks) / 1.08)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [percent_label(t) for t in ticks])
    ax.set_xlabel("Percent of weights remaining")
    ax.set_ylabel("Test accuracy (%)")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(loc="lower left", fontsize="small", frameon=True)


def new_figure(nrows: int = 1, ncols: int = 1, panel_size=PANEL_SIZE) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` paper-sized panels on the Agg canvas; returns (fig, axes)."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig: Figure, out_paths: list[str]) -> None:
    """Write ``fig`` to every path; the format follows the suffix (.pdf, .png at PNG_DPI dpi).

    Each file is written to a temp file and renamed, so a crash never leaves a partial figure that
    Snakemake could take for a result. PDFs carry no creation date, so re-drawing is byte-stable.
    """
    for path in map(Path, out_paths):
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in ("pdf", "png"):
            raise ValueError(f"cannot tell the figure format of {path}: use .pdf or .png")
        options = {"dpi": PNG_DPI} if fmt == "png" else {"metadata": {"CreationDate": None}}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, **options)


def figure_accuracy_vs_sparsity(
    summary_path,
    out_paths: list[str],
    *,
    series: list[str] | None = None,
    labels: dict | None = None,
    reference: str | None = "dense",
    title: str = "",
    ax: Axes | None = None,
) -> None:
    """Accuracy vs % weights remaining from one summary file, written to every ``out_paths``.

    With ``ax`` the panel is drawn onto that Axes and its whole figure is saved (``out_paths`` may
    then be empty, leaving the saving to the caller).
    """
    summary = aggregate.read_summary(summary_path)
    fig = ax.figure if ax is not None else None
    if ax is None:
        fig, axes = new_figure()
        ax = axes[0, 0]
    draw_accuracy_vs_sparsity(
        ax, summary, series=series, labels=labels, reference=reference, title=title
    )
    save(fig, out_paths)


_REWIND = re.compile(r"rewind(\d+)")


def rewind_series(summary: dict) -> list[str]:
    """The ``rewind<k>`` series of a summary, sorted by k."""
    names = [n for n in aggregate.series_names(summary) if _REWIND.fullmatch(n)]
    return sorted(names, key=lambda n: int(_REWIND.fullmatch(n)[1]))


def figure1(summary_path, out_paths: list[str], network: str) -> None:
    """Figure 1 (ResNet-20) / A2 (other networks): IMP with rewinding to several iterations k."""
    summary = aggregate.read_summary(summary_path)
    series = rewind_series(summary)
    if not series:
        raise ValueError(f"{summary_path} has no rewind<k> series")
    labels = {n: f"Rewind to {_REWIND.fullmatch(n)[1]}" for n in series}
    labels["dense"] = "Dense network"
    figure_accuracy_vs_sparsity(
        summary_path,
        out_paths,
        series=series,
        labels=labels,
        reference="dense",
        title=f"{network_display_name(network)} (CIFAR-10)",
    )


# ---- Figure 3 / A3: early-phase telemetry -------------------------------------------------------
# (panel title, [(summary key, legend label, scale)], y label); scale turns fractions into percent.
TELEMETRY_PANELS = [
    ("Eval accuracy", [("accuracy", None, 100.0)], "Test accuracy (%)"),
    ("Eval loss", [("loss", None, 1.0)], "Test loss"),
    ("Average weight magnitude", [("mean_abs", None, 1.0)], "mean |w|"),
    ("Sign changes from init", [("sign_changed", None, 100.0)], "% of weights"),
    ("Ten random weights", [], "weight value"),
    ("Gradient magnitude", [("grad_norm", "batch mean", 1.0), ("grad_norm_full", "full sample", 1.0),
                            ("grad_norm_step", "step's batch", 1.0)], "||g||"),
    ("L2 distance", [("dist_init", "from init", 1.0), ("dist_final", "from final", 1.0)], "L2 distance"),
    ("Cosine similarity", [("cos_init", "to init", 1.0), ("cos_final", "to final", 1.0)], "cosine"),
]  # fmt: skip


def read_telemetry_summary(path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda k, v: out.__setitem__(k, v[()]) if hasattr(v, "shape") else None)
        out["_attrs"] = dict(f.attrs)
    return out


def _draw_telemetry(axes, tel: dict, color: str, label: str | None, ten: bool) -> None:
    its = np.asarray(tel["iteration"])
    for ax, (title, lines, ylabel) in zip(axes, TELEMETRY_PANELS, strict=True):
        for j, (key, sub, scale) in enumerate(lines):
            mean, std = tel[f"{key}/mean"] * scale, tel[f"{key}/std"] * scale
            name = " ".join(x for x in (label, sub) if x) or None
            ax.plot(its, mean, color=color, linestyle=("-", "--", ":")[j], lw=1.2, label=name)
            ax.fill_between(its, mean - std, mean + std, color=color, alpha=BAND_ALPHA, lw=0)
        if not lines and ten:
            ax.plot(its, tel["ten_weights"], lw=0.9)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(ylabel)
        ax.set_xscale("symlog", linthresh=10)  # iterations 0-10 resolved, then logarithmic
        ax.set_xlim(0, its[-1])
        ax.set_xlabel("Training iterations")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        if len(lines) > 1 or (label and lines):
            ax.legend(fontsize="x-small")


def figure3(summary_path, out_paths: list[str], network: str) -> None:
    """Figure 3 (ResNet-20) / per-network telemetry over the first T iterations, mean +- std."""
    tel = read_telemetry_summary(summary_path)
    fig, axes = new_figure(2, 4, panel_size=(3.4, 2.7))
    _draw_telemetry(axes.flat, tel, "tab:blue", None, ten=True)
    fig.suptitle(
        f"{network_display_name(network)}: the first {int(tel['iteration'][-1])} iterations"
    )
    save(fig, out_paths)


def figure_a3(summary_paths: list[str], networks: list[str], out_paths: list[str]) -> None:
    """Figure A3: the telemetry of every network, one colour per network (ten weights omitted)."""
    colors = series_colors(networks)
    fig, axes = new_figure(2, 4, panel_size=(3.4, 2.7))
    for path, net in zip(summary_paths, networks, strict=True):
        _draw_telemetry(
            axes.flat,
            read_telemetry_summary(path),
            colors[net],
            network_display_name(net),
            ten=False,
        )
    axes.flat[4].set_visible(False)
    fig.suptitle("Early-phase telemetry of every network")
    save(fig, out_paths)


# ---- Figures 4-8 / A4-A8: perturbations of rewound sub-networks --------------------------------
PERTURB_FIGURES = {  # figure number -> the perturbation family it shows (perturb.family)
    4: "signs/magnitudes",
    5: "shuffle",
    6: "same-sign shuffle",
    7: "noise",
}
FAMILY_COLORS = {
    "signs/magnitudes": "tab:red",
    "shuffle": "tab:blue",
    "same-sign shuffle": "tab:green",
    "noise": "tab:purple",
}


def variant_families(variants: dict) -> dict[str, str]:
    """variant name -> family, from its config entry {kind, **params}."""
    from . import perturb

    out = {}
    for name, spec in variants.items():
        spec = dict(spec)
        out[name] = perturb.family(spec.pop("kind"), **spec)
    return out


def variant_label(name: str) -> str:
    return name.replace("_", " ")


def figure_perturbations(
    summary_paths, rewinds, variants: dict, figure: int, out_paths, network: str
) -> None:
    """Figures 4-7 / A4-A7: one panel per k (paper: left k=500, right k=2000); one line per
    variant of the figure's family, with IMP rewound to k and to 0 as references."""
    fam = variant_families(variants)
    shown = [v for v in variants if fam[v] == PERTURB_FIGURES[figure]]
    colors = series_colors([*shown, "imp", "rewind0"])
    fig, axes = new_figure(1, len(rewinds))
    for ax, path, k in zip(axes[0], summary_paths, rewinds, strict=True):
        summary = aggregate.read_summary(path)
        names = [n for n in ("imp", "rewind0", *shown) if n in summary]
        labels = {
            "imp": f"IMP, rewind to {k}",
            "rewind0": "IMP, rewind to 0",
            "dense": "Dense network",
            **{v: variant_label(v) for v in shown},
        }
        draw_accuracy_vs_sparsity(
            ax,
            summary,
            series=names,
            labels=labels,
            reference="dense",
            colors=colors,
            title=f"{network_display_name(network)}, k = {k}",
        )
    fig.suptitle(f"Figure {figure}: {PERTURB_FIGURES[figure]} perturbations")
    save(fig, out_paths)


def effective_std_points(summary: dict, variants: dict, level: int) -> list[dict]:
    """Figure 8's points: per variant, mean effective std and mean accuracy at ``level``."""
    fam = variant_families(variants)
    points = []
    for v in variants:
        if v not in summary:
            continue
        d = summary[v]
        rows = np.flatnonzero(d["level"] == level)
        if rows.size == 0 or "effective_std" not in d:
            continue
        i = rows[0]
        points.append(
            {
                "variant": v,
                "family": fam[v],
                "effective_std": float(np.nanmean(d["effective_std"][i])),
                "accuracy": float(d["mean"][i]),
            }
        )
    return points


def pearson(points: list[dict]) -> tuple[float, float]:
    """Pearson r and two-sided p of effective std vs accuracy (NaN with fewer than 3 points)."""
    from scipy import stats

    if len(points) < 3:
        return float("nan"), float("nan")
    x = [p["effective_std"] for p in points]
    y = [p["accuracy"] for p in points]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    r, p = stats.pearsonr(x, y)
    return float(r), float(p)


def figure8(summary_paths, rewinds, variants: dict, level: int, out_paths, network: str) -> list:
    """Figure 8 / A8: effective std of each perturbation vs mean accuracy at ``level``, coloured
    by family, with Pearson r and p per panel. Returns [(k, r, p, points)] for the log."""
    fig, axes = new_figure(1, len(rewinds))
    results = []
    for ax, path, k in zip(axes[0], summary_paths, rewinds, strict=True):
        summary = aggregate.read_summary(path)
        points = effective_std_points(summary, variants, level)
        for family, color in FAMILY_COLORS.items():
            pts = [p for p in points if p["family"] == family]
            ax.scatter(
                [p["effective_std"] for p in pts],
                [p["accuracy"] for p in pts],
                color=color,
                label=family,
                s=25,
            )
        r, p = pearson(points)
        results.append((k, r, p, points))
        remaining = summary["imp"]["remaining_percent"] if "imp" in summary else []
        idx = np.flatnonzero(summary["imp"]["level"] == level) if "imp" in summary else []
        pct = f"{remaining[idx[0]]:.1f}% remaining" if len(idx) else f"level {level}"
        ax.set_title(f"{network_display_name(network)}, k = {k} ({pct})")
        ax.text(
            0.97,
            0.97,
            f"r = {r:.3f}, p = {p:.3g}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize="small",
        )
        ax.set_xlabel("Effective standard deviation of the perturbation")
        ax.set_ylabel("Mean test accuracy (%)")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(fontsize="x-small", loc="lower left")
    save(fig, out_paths)
    return results


# ---- Figures 9 / A9-A12 and 10: pre-training -----------------------------------------------------
def epochs_text(e) -> str:
    """``1`` -> "1 epoch", ``40`` -> "40 epochs", ``0.5`` -> "0.5 epochs" (legend text)."""
    return f"{e} epoch" if float(e) == 1 else f"{e} epochs"


def figure9(summary_paths, tasks: list[str], epochs: list[str], references, out_paths, network):
    """Figure 9 / A9-A12: a panel per pre-training task; one line per duration, with IMP rewound
    to 0 and to 500 (``references``) as reference lines, mean +- std across seeds."""
    from . import tasks as task_registry

    series = [f"e{e}" for e in epochs]
    refs = [f"rewind{k}" for k in references]
    colors = series_colors([*refs, *series])
    fig, axes = new_figure(1, len(tasks))
    for ax, path, task in zip(axes[0], summary_paths, tasks, strict=True):
        summary = aggregate.read_summary(path)
        labels = {
            **{f"e{e}": f"pre-trained {epochs_text(e)}" for e in epochs},
            **{f"rewind{k}": f"IMP, rewind to {k}" for k in references},
            "dense": "Dense network",
        }
        names = [n for n in (*refs, *series) if n in summary]
        draw_accuracy_vs_sparsity(
            ax,
            summary,
            series=names,
            labels=labels,
            colors=colors,
            title=task_registry.get(task).description,
        )
    fig.suptitle(f"{network_display_name(network)}: pre-training, then IMP from that state")
    save(fig, out_paths)


def figure10(summary_path, out_paths, network, *, rewind: int, task: str, epochs) -> None:
    """Figure 10: sparse sub-networks (IMP at k, reinitialised, randomly pruned) trained with and
    without pre-training under their masks, against IMP rewound to 0."""
    summary = aggregate.read_summary(summary_path)
    order = [
        "rewind0",
        "imp_scratch",
        "imp_pretrained",
        "reinit_scratch",
        "reinit_pretrained",
        "random_scratch",
        "random_pretrained",
    ]
    names = [n for n in order if n in summary]
    what = {
        "imp": f"IMP, rewind to {rewind}",
        "reinit": "IMP mask, reinitialised",
        "random": "random mask",
    }
    labels = {"rewind0": "IMP, rewind to 0", "dense": "Dense network"}
    for n in names:
        kind, _, start = n.partition("_")
        if kind in what:
            labels[n] = what[kind] + (f" + {epochs:g} ep. {task}" if start == "pretrained" else "")
    fig, axes = new_figure(1, 1, panel_size=(6.0, 4.0))
    draw_accuracy_vs_sparsity(
        axes[0, 0],
        summary,
        series=names,
        labels=labels,
        title=f"{network_display_name(network)}: sparse pre-training",
    )
    save(fig, out_paths)
