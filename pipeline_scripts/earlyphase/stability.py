"""Instability analysis (beyond the paper; Frankle, Dziugaite, Roy & Carbin, ICML 2020, "Linear
Mode Connectivity and the Lottery Ticket Hypothesis").

Two copies of a network are trained from the same iteration-k state to the end of the schedule
(steps k..T, as every rewound run here) with independent samples of SGD noise: their own data
order and augmentation (``train.RunOptions.data_stream`` "copy1" / "copy2", neither the dense run's
own). The test error is then evaluated along the straight line between the two final networks,
at ``points`` evenly spaced alphas, endpoints included. The **error barrier** is the maximum error
on the path minus the mean of the two endpoints' errors; the follow-up paper calls a network
*stable* at k when it is below 2 percentage points (``STABLE_BARRIER``).

BatchNorm (``batchnorm``):
  * ``interpolate`` (default): every tensor of the two state dicts is interpolated, the running
    mean and variance included, and the network is evaluated with them. This is what interpolating
    two saved networks does, the reading we take of the follow-up paper (it describes no
    re-estimation), and it leaves the endpoints exactly the two trained networks: alpha = 0 and 1
    reproduce the runs' own final test accuracies bit for bit (checked and recorded).
  * ``recompute``: at every alpha the running statistics are re-estimated on a fixed, un-augmented
    training sample (``bn_samples`` images, batches of the training batch size, cumulative average)
    before evaluation, the endpoints included. Interpolated running statistics are not the
    statistics of the interpolated network, so this isolates the barrier of the weights themselves.

Files: one ``interpolation.h5`` per (network, seed, sub-network, k), summarised across seeds by
``summarise`` into ``summary/stability.h5`` (``FORMAT`` / ``SUMMARY_FORMAT``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import h5py
import numpy as np
import torch
from torch import nn

from . import augment, checkpoint, data, device, identity, layout, metrics, models, rng, train
from .atomic import atomic_path

FORMAT = "earlyphase-stability/1"
SUMMARY_FORMAT = "earlyphase-stability-summary/1"
BATCHNORM_MODES = ("interpolate", "recompute")
COPIES = ("copy1", "copy2")  # data streams of the two copies (never "", the dense run's own)
STABLE_BARRIER = 2.0  # percentage points: the follow-up paper's threshold for "stable"


def alphas(points: int) -> np.ndarray:
    """``points`` evenly spaced interpolation weights in [0, 1], both endpoints included."""
    if int(points) < 2:
        raise ValueError(f"an interpolation needs at least 2 points, not {points}")
    return np.linspace(0.0, 1.0, int(points))


def interpolate_state(a: dict, b: dict, alpha: float) -> dict:
    """(1 - alpha) a + alpha b for every floating-point tensor; exact at alpha 0 and 1 (0 * x is 0,
    x + 0 is x). Integer buffers (BatchNorm's step counters) are taken from ``a``."""
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise ValueError(f"the two networks differ in their tensors: {missing[:5]}")
    out = {}
    for name, va in a.items():
        vb = b[name]
        if va.shape != vb.shape:
            raise ValueError(f"tensor {name}: shapes {tuple(va.shape)} and {tuple(vb.shape)}")
        if va.is_floating_point():
            out[name] = (1.0 - alpha) * va + alpha * vb
        else:
            out[name] = va.clone()
    return out


def bn_sample(train_x: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The fixed, un-augmented training images BatchNorm statistics are re-estimated on."""
    n = train_x.shape[0]
    pick = torch.randperm(n, generator=rng.generator(seed, "stability_bn_sample"))[: min(size, n)]
    return train_x[pick.to(train_x.device)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, normalise, batch_size: int) -> None:
    """Replace every BatchNorm layer's running statistics by their cumulative average over ``x``."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    for i in range(0, x.shape[0], batch_size):
        model(normalise(x[i : i + batch_size]))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


def curve(
    model: nn.Module,
    state_a: dict,
    state_b: dict,
    evaluate,
    points: int,
    batchnorm: str = "interpolate",
    recompute=None,
) -> dict:
    """Test error and loss along the line from ``state_a`` to ``state_b``.

    ``evaluate(model) -> (loss, accuracy)`` on the test set; ``recompute(model)`` re-estimates
    BatchNorm statistics (needed for ``batchnorm="recompute"``). Returns numpy arrays ``alpha``,
    ``accuracy``, ``error`` (1 - accuracy) and ``loss`` and the scalars ``barrier`` / ``loss_barrier`` (max on the path minus
    the mean of the endpoints; errors as fractions)."""
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, not {batchnorm!r}")
    if batchnorm == "recompute" and recompute is None:
        raise ValueError("batchnorm 'recompute' needs the recompute function")
    al = alphas(points)
    accuracies, losses = [], []
    for alpha in al:
        model.load_state_dict(interpolate_state(state_a, state_b, float(alpha)))
        if batchnorm == "recompute":
            recompute(model)
        loss, acc = evaluate(model)
        accuracies.append(acc)
        losses.append(loss)
    accuracy, los = np.asarray(accuracies), np.asarray(losses)
    err = 1.0 - accuracy
    return {
        "alpha": al,
        "accuracy": accuracy,  # as evaluated: exact at the endpoints (1 - error rounds)
        "error": err,
        "loss": los,
        "barrier": float(err.max() - 0.5 * (err[0] + err[-1])),
        "loss_barrier": float(los.max() - 0.5 * (los[0] + los[-1])),
    }


# ---- the interpolate job -------------------------------------------------------------------------
class _Copy(NamedTuple):
    """One of the two copies, as its files record it."""

    state: dict  # final weights
    accuracy: float  # its own recorded final test accuracy
    precision: str
    remaining: float  # weights remaining fraction


def _load_copy(copy: str, final: str, mfile: str, run: dict, dev) -> _Copy:
    """A copy's final weights, after checking that its metrics file and checkpoint record the run
    and that it was trained on its own data stream ``copy``."""
    want = {
        "network": run["network"],
        "seed": run["seed"],
        "level": run["level"],
        "rewind_iteration": run["rewind_iteration"],
        "experiment": "stability",
    }
    attrs = metrics.read_attrs(mfile)
    identity.check(mfile, attrs, want, identity.describe(want))
    if attrs.get("data_stream") != copy:
        raise ValueError(
            f"{mfile} was trained on data stream {attrs.get('data_stream')!r}, "
            f"not {copy!r}: delete it and re-run its copy"
        )
    ck = checkpoint.load(final, map_location=dev)
    identity.check(
        final,
        {"network": ck["network"], **ck["meta"]},
        {"network": run["network"], "seed": run["seed"]},
        identity.describe(want),
    )
    return _Copy(
        ck["state_dict"],
        float(attrs["final_test_accuracy"]),
        str(attrs.get("precision", "fp32")),
        float(attrs.get("weights_remaining_fraction", 1.0)),
    )


def _check_endpoints(result: dict, copies: list[_Copy], batchnorm: str, log) -> tuple:
    """The accuracies at alpha = 0 and 1 and their largest difference from the copies' own."""
    ends = (float(result["accuracy"][0]), float(result["accuracy"][-1]))
    recorded = [c.accuracy for c in copies]
    diff = max(abs(a - b) for a, b in zip(ends, recorded, strict=True))
    if batchnorm == "interpolate":
        log(
            f"endpoints {ends[0]:.4f} / {ends[1]:.4f} vs the copies' own final accuracies "
            f"{recorded[0]:.4f} / {recorded[1]:.4f} (max difference {diff:.2e})"
        )
    return ends, diff


def measure(
    finals: tuple[str, str],
    metrics_files: tuple[str, str],
    data_path: str,
    *,
    run: dict,
    hparams: dict,
    points: int,
    batchnorm: str,
    bn_samples: int,
    runtime: dict,
    log=print,
) -> dict:
    """Interpolate between the two copies' final weights; ``run`` = network, seed, level,
    rewind_iteration (checked against both copies' files). Returns the curve with the attrs
    that ``write`` stores, the endpoint check included."""
    dev = device.select_from(runtime)
    ds = data.load(data_path, dev)
    copies = [
        _load_copy(copy, final, mfile, run, dev)
        for copy, final, mfile in zip(COPIES, finals, metrics_files, strict=True)
    ]
    precisions = [c.precision for c in copies]
    if len(set(precisions)) != 1:
        raise ValueError(
            f"the copies were trained in different precisions {precisions} ({metrics_files}): "
            "re-run both with one runtime.precision"
        )
    # Evaluate with the kernels the copies were evaluated with (TF32 switches, autocast), so
    # alpha = 0 and 1 reproduce their recorded accuracies.
    precision = precisions[0]
    device.set_precision(precision)
    model = layout.apply(models.build(run["network"]), dev)
    normalise = augment.Normalise(hparams["mean"], hparams["std"], dev)
    eval_batch = train.options_from_runtime(runtime, seed=run["seed"]).eval_batch_size

    def evaluate(m):
        return train.evaluate(m, ds.test_x, ds.test_y, normalise, eval_batch, precision)

    sample = bn_sample(ds.train_x, bn_samples, run["seed"])
    batch = int(hparams["batch_size"])
    result = curve(
        model,
        copies[0].state,
        copies[1].state,
        evaluate,
        points,
        batchnorm,
        recompute=lambda m: recompute_batchnorm(m, sample, normalise, batch),
    )
    ends, diff = _check_endpoints(result, copies, batchnorm, log)
    result["attrs"] = {
        **run,
        "experiment": "stability",
        "series": "dense" if not run["level"] else f"level{run['level']}",
        "batchnorm": batchnorm,
        "bn_samples": int(bn_samples) if batchnorm == "recompute" else 0,
        "points": int(points),
        "weights_remaining_fraction": copies[-1].remaining,
        "copy_final_accuracy": np.asarray([c.accuracy for c in copies]),
        "endpoint_accuracy": np.asarray(ends),
        "endpoint_max_difference": diff,
        "device": str(dev),
        "precision": precision,
        "n_test": int(ds.test_x.shape[0]),
    }
    return result


# ---- files --------------------------------------------------------------------------------------
def write(path, result: dict, attrs: dict) -> None:
    """One interpolation: arrays alpha, test_error, test_loss; attrs barrier, identity, settings."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["barrier"] = result["barrier"]
        f.attrs["loss_barrier"] = result["loss_barrier"]
        for k, v in attrs.items():
            f.attrs[k] = v
        f["alpha"] = result["alpha"]
        f["test_error"] = result["error"]
        f["test_accuracy"] = result["accuracy"]
        f["test_loss"] = result["loss"]


def read(path) -> dict:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT} file; re-run its interpolate job")
        out = {k: f[k][()] for k in ("alpha", "test_error", "test_loss") if k in f}
        out["attrs"] = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
        }
    return out


_PATH = re.compile(r"stability/(dense|level(\d+))/k(\d+)/interpolation\.h5$")


def run_of(path) -> dict:
    """(sub-network, level, k) a per-run interpolation path names, plus network and seed."""
    m = _PATH.search(str(path))
    if not m:
        raise ValueError(f"{path} is not a stability/<dense|level<L>>/k<k>/interpolation.h5 path")
    run = identity.from_path(str(path))
    return {
        "network": run.get("network"),
        "seed": run.get("seed"),
        "sub": m[1],
        "level": int(m[2] or 0),
        "rewind_iteration": int(m[3]),
    }


def summarise(paths: list[str], out_path, network: str) -> dict:
    """Across seeds, per sub-network ("dense", "level<L>") and k: the barrier (mean, std ddof=1,
    per-seed values) and the mean +- std error curve. Each file must record the run its path names.
    Returns {sub: {"rewind": [...], "barrier_mean": [...], ...}} as written."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for p in paths:
        want = run_of(p)
        r = read(p)
        expect = {k: want[k] for k in ("seed", "level", "rewind_iteration")}
        identity.check(p, r["attrs"], {"network": network, **expect}, identity.describe(want))
        groups.setdefault((want["sub"], want["rewind_iteration"]), []).append(r)
    out: dict[str, dict] = {}
    for sub, k in sorted(groups, key=lambda t: (t[0] != "dense", t[0], t[1])):
        runs = groups[(sub, k)]
        alpha = runs[0]["alpha"]
        if any(len(r["alpha"]) != len(alpha) for r in runs):
            raise ValueError(f"{network} {sub} k={k}: seeds were interpolated at different points")
        barriers = np.array([r["attrs"]["barrier"] for r in runs]) * 100.0
        curves = np.stack([r["test_error"] for r in runs]) * 100.0
        ddof = 1 if len(runs) > 1 else 0
        s = out.setdefault(
            sub,
            {
                "rewind": [],
                "barrier_mean": [],
                "barrier_std": [],
                "n": [],
                "barriers": [],
                "seeds": [],
                "curves": {},
            },
        )
        s["rewind"].append(k)
        s["barrier_mean"].append(float(barriers.mean()))
        s["barrier_std"].append(float(barriers.std(ddof=ddof)))
        s["n"].append(len(runs))
        s["barriers"].append(barriers)
        s["seeds"].append([int(r["attrs"]["seed"]) for r in runs])
        s["curves"][k] = {"alpha": alpha, "mean": curves.mean(0), "std": curves.std(0, ddof=ddof)}
        s["level"] = int(runs[0]["attrs"]["level"])
        s["batchnorm"] = str(runs[0]["attrs"]["batchnorm"])
        s["remaining"] = float(runs[0]["attrs"].get("weights_remaining_fraction", 1.0))

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = SUMMARY_FORMAT
        f.attrs["network"] = network
        f.attrs["stable_barrier_pp"] = STABLE_BARRIER
        for sub, s in out.items():
            g = f.create_group(sub)
            g.attrs["level"] = s["level"]
            g.attrs["batchnorm"] = s["batchnorm"]
            g.attrs["weights_remaining_fraction"] = s["remaining"]
            for key in ("rewind", "barrier_mean", "barrier_std", "n"):
                g[key] = np.asarray(s[key])
            for (
                k,
                barriers,
                seeds,
            ) in zip(s["rewind"], s["barriers"], s["seeds"], strict=True):
                c = g.create_group(f"k{k}")
                c["barrier"], c["seed"] = barriers, np.asarray(seeds)
                for key, v in s["curves"][k].items():
                    c[f"error_{key}" if key != "alpha" else "alpha"] = v
    return out


def read_summary(path) -> dict:
    """``summarise``'s file as {sub: {rewind, barrier_mean, barrier_std, n, level, batchnorm,
    curves: {k: {alpha, mean, std, barrier, seed}}}} (barriers and errors in percent)."""
    out = {}
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != SUMMARY_FORMAT:
            raise ValueError(f"{path} is not an {SUMMARY_FORMAT} file; re-run summarise_stability")
        for sub, g in f.items():
            s = {key: g[key][()] for key in ("rewind", "barrier_mean", "barrier_std", "n")}
            s["level"], s["batchnorm"] = int(g.attrs["level"]), str(g.attrs["batchnorm"])
            s["remaining"] = float(g.attrs.get("weights_remaining_fraction", 1.0))
            s["curves"] = {
                int(k): {
                    "alpha": g[f"k{k}/alpha"][()],
                    "mean": g[f"k{k}/error_mean"][()],
                    "std": g[f"k{k}/error_std"][()],
                    "barrier": g[f"k{k}/barrier"][()],
                    "seed": g[f"k{k}/seed"][()],
                }
                for k in s["rewind"]
            }
            out[sub] = s
    return out
