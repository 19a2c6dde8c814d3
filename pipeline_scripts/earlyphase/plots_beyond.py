"""Figures of the measurements beyond the paper: instability and sharpness.

* ``figure_instability``: (a) the error barrier against the rewind point k, mean +- std over seeds,
  for the dense network and the IMP sub-network (the x axis of Figure 1's k), with the follow-up
  paper's 2-point "stable" threshold; (b, c) the test error along the path between the two copies
  for every k (mean over seeds), dense and sparse.
* ``figure_sharpness``: the top Hessian eigenvalue (a) against the training iteration, on Figure 3's
  axis (symlog: 0-10 resolved, then logarithmic), and (b) at the rewind points k, with the
  heavy-ball stability bound 2 (1 + mu) / lr for reference.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.ticker import NullLocator

from . import hessian, stability
from .plots import BAND_ALPHA, REFERENCE_COLOR, network_display_name, new_figure, save

SUB_COLORS = {"dense": REFERENCE_COLOR}


def _sub_label(sub: str, s: dict) -> str:
    if sub == "dense":
        return "Dense network"
    return f"IMP sub-network, level {s['level']} ({100 * s['remaining']:.1f}% remaining)"


def _k_colors(ks) -> dict[int, str]:
    cmap = colormaps["viridis"]
    n = max(1, len(ks) - 1)
    return {int(k): to_hex(cmap(0.9 * i / n)) for i, k in enumerate(ks)}


def _k_axis(ax, ks) -> None:
    ax.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k > 0], default=1)))
    ax.set_xticks(list(ks), [str(int(k)) for k in ks], rotation=45 if len(ks) > 5 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("Rewind iteration k")
    ax.grid(True, linewidth=0.4, alpha=0.5)


def figure_instability(summary_path, out_paths: list[str], network: str) -> None:
    summary = stability.read_summary(summary_path)
    subs = list(summary)
    fig, axes = new_figure(1, 1 + len(subs), panel_size=(4.2, 3.3))
    ax = axes[0, 0]
    ks_all: set[int] = set()
    for i, sub in enumerate(subs):
        s = summary[sub]
        ks = np.asarray(s["rewind"])
        ks_all |= {int(k) for k in ks}
        color = SUB_COLORS.get(sub, to_hex(colormaps["tab10"].colors[i]))
        m, sd = np.asarray(s["barrier_mean"]), np.asarray(s["barrier_std"])
        ax.errorbar(
            ks,
            m,
            yerr=sd,
            color=color,
            marker="o",
            ms=4,
            capsize=3,
            lw=1.2,
            label=_sub_label(sub, s),
        )
    ax.axhline(stability.STABLE_BARRIER, color="0.5", ls=":", lw=1, label="stable (< 2 pp)")
    ax.axhline(0, color="0.8", lw=0.8)
    _k_axis(ax, sorted(ks_all))
    ax.set_ylabel("Error barrier (pp)")
    ax.set_title("Instability: barrier vs rewind point", fontsize="medium")
    ax.legend(fontsize="x-small")
    for j, sub in enumerate(subs, start=1):
        s, pax = summary[sub], axes[0, j]
        colors = _k_colors(s["rewind"])
        for k in s["rewind"]:
            c = s["curves"][int(k)]
            pax.plot(c["alpha"], c["mean"], color=colors[int(k)], lw=1.2, label=f"k = {int(k)}")
            pax.fill_between(
                c["alpha"],
                c["mean"] - c["std"],
                c["mean"] + c["std"],
                color=colors[int(k)],
                alpha=BAND_ALPHA,
                lw=0,
            )
        pax.set_xlabel("Interpolation α (copy 1 → copy 2)")
        pax.set_ylabel("Test error (%)")
        pax.set_title(_sub_label(sub, s), fontsize="small")
        pax.grid(True, linewidth=0.4, alpha=0.5)
        pax.legend(fontsize="x-small", ncol=2)
    bn = summary[subs[0]]["batchnorm"] if subs else ""
    fig.suptitle(
        f"{network_display_name(network)}: linear mode connectivity of two copies "
        f"trained from iteration k (BatchNorm: {bn})"
    )
    save(fig, out_paths)


def figure_sharpness(summary_path, out_paths: list[str], network: str) -> None:
    s = hessian.read_summary(summary_path)
    its, m, sd = np.asarray(s["iteration"]), np.asarray(s["mean"]), np.asarray(s["std"])
    threshold = float(s["attrs"].get("threshold", np.nan))
    fig, axes = new_figure(1, 2, panel_size=(4.2, 3.3))
    ax = axes[0, 0]
    ax.plot(its, m, color="tab:red", marker="o", ms=3, lw=1.2, label="top eigenvalue")
    ax.fill_between(its, m - sd, m + sd, color="tab:red", alpha=BAND_ALPHA, lw=0)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, max(1, int(its[-1])))
    if len(its) <= 12:  # label the measured iterations themselves
        ax.set_xticks(its, [str(int(i)) for i in its])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("Training iterations")
    ax.set_title("Sharpness over the early phase", fontsize="medium")
    rewind = np.asarray(s["is_rewind"], dtype=bool)
    bx = axes[0, 1]
    if rewind.any():
        bx.errorbar(
            its[rewind],
            m[rewind],
            yerr=sd[rewind],
            color="tab:red",
            marker="o",
            ms=4,
            capsize=3,
            lw=1.2,
            label="top eigenvalue",
        )
        _k_axis(bx, [int(k) for k in its[rewind]])
    else:
        bx.text(0.5, 0.5, "no rewind point measured", ha="center", transform=bx.transAxes)
    bx.set_title("At the rewind points k (Figure 1's x axis)", fontsize="medium")
    for a in (ax, bx):
        a.set_ylabel("λ_max of the training-loss Hessian")
        a.grid(True, linewidth=0.4, alpha=0.5)
        if np.isfinite(threshold) and threshold <= 4 * max(1e-9, float(np.nanmax(m + sd))):
            a.axhline(threshold, color="0.4", ls="--", lw=1, label=f"2(1+μ)/η = {threshold:.0f}")
        a.legend(fontsize="x-small")
    fig.suptitle(
        f"{network_display_name(network)}: top Hessian eigenvalue "
        f"({int(s['attrs'].get('samples', 0))} training images, "
        f"{int(s['attrs'].get('steps', 0))} Lanczos steps)"
    )
    save(fig, out_paths)
