"""Early-phase telemetry (Section 4, Figures 2, 3 and A3).

During the first ``T`` iterations of a dense run, at a schedule that resolves every one of the first
ten iterations and then thins out logarithmically (``schedule``), the ``Recorder`` measures on the
*telemetry weights* W (all prunable weights: conv and linear weights, flattened and concatenated in
parameter order; biases and BatchNorm parameters excluded):

    mean_abs[t]      mean |W_t|                                       (average weight magnitude)
    sign_changed[t]  fraction of W_t whose sign bit differs from W_0  (x100 = % sign changes)
    ten_weights[t]   W_t at ten flat indices drawn once from (seed, "telemetry_ten_weights")
    grad_norm[t]     the gradient magnitude of Figure 3, measured (not one noisy mini-batch): the
                     mean over the m mini-batches of a fixed training sample (``grad_sample``
                     images, drawn once from (seed, "telemetry_grad_sample"), no augmentation) of
                     ||g_b||_2, the loss gradient of mini-batch b at state t over W (BatchNorm in
                     training mode, as in a step; its running statistics are left untouched)
    grad_norm_full[t]  ||mean_b g_b||_2: the gradient of the mean loss over that fixed sample
    grad_norm_step[t]  ||g_t||_2 of the training step's own mini-batch at state t (the step
                     t -> t+1; NaN at the last point), as recorded before format 2
    dist_init[t]     ||W_t - W_0||_2
    cos_init[t]      <W_t, W_0> / (||W_t|| ||W_0||)
and keeps a float16 snapshot of W_t. After training, ``final_relative`` turns the snapshots into
    dist_final[t]    ||W_t - W_final||_2,   cos_final[t]   <W_t, W_final> / (||W_t|| ||W_final||)
where W_final are the weights at the end of the dense run. Accuracy and loss come from the test-set
evaluations the training loop runs at every telemetry iteration.

All per-step measurements stay on the device (no host sync); snapshots are written row by row to
an HDF5 file in the job's work directory, so a resumed run continues the same file.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import torch

from . import identity, rng

FORMAT = "earlyphase-telemetry/2"


def schedule(total: int, dense_until: int = 10, points: int = 60) -> list[int]:
    """Iterations 0..dense_until, then ~log-spaced up to ``total`` (inclusive); ``points`` in all."""
    total = int(total)
    first = list(range(0, min(dense_until, total) + 1))
    rest = max(0, points - len(first))
    if total <= dense_until or rest == 0:
        return first
    logs = np.logspace(math.log10(dense_until), math.log10(total), rest + 1)[1:]
    return sorted(set(first) | {int(round(v)) for v in logs} | {total})


def grad_sample(ds, size: int, seed: int) -> tuple | None:
    """The fixed training sample the gradient magnitude is measured on: ``size`` images drawn
    once from (seed, "telemetry_grad_sample"), un-augmented; None for size 0."""
    if size <= 0:
        return None
    n = ds.train_x.shape[0]
    # In random order, not sorted: data files may be stored class by class (image folders), and a
    # mini-batch of neighbouring indices would then hold one or two classes, not a training batch.
    pick = torch.randperm(n, generator=rng.generator(seed, "telemetry_grad_sample"))[: min(size, n)]
    pick = pick.to(ds.train_x.device)
    return ds.train_x[pick], ds.train_y[pick]


class Recorder:
    """Collects telemetry inside the training loop; see module docstring for the quantities."""

    def __init__(
        self,
        model,
        names: list[str],
        iterations,
        seed: int,
        snapshot_path,
        grad_sample: tuple | None = None,
        grad_batch: int = 128,
    ):
        """``grad_sample``: (uint8 images, labels) of the fixed sample the gradient magnitude is
        measured on, in mini-batches of ``grad_batch``; None records only the step's gradient."""
        self.model = model
        self.grad_sample = grad_sample
        self.grad_batch = int(grad_batch)
        self.loss_fn = None  # (uint8 x, y) -> mean loss; set by the training loop (attach)
        self.names = list(names)
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.sizes = [p.numel() for p in self.params]
        self.iterations = sorted(int(i) for i in iterations)
        self.index = {it: i for i, it in enumerate(self.iterations)}
        self.path = Path(snapshot_path)
        n = sum(self.sizes)
        g = rng.generator(seed, "telemetry_ten_weights")
        self.ten_index = torch.randperm(n, generator=g)[:10].sort().values
        self.w0 = None  # flat weights at iteration 0, set by on_state(0)
        rows = len(self.iterations)
        self.values = {
            k: torch.full((rows,), float("nan"), dtype=torch.float64)
            for k in (
                "mean_abs",
                "sign_changed",
                "grad_norm",
                "grad_norm_full",
                "grad_norm_step",
                "dist_init",
                "cos_init",
            )
        }
        self.values["ten_weights"] = torch.full((rows, 10), float("nan"), dtype=torch.float64)
        self._pending = []  # (row, key, device tensor): host copies happen at flush()

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.params])

    def wants(self, it: int) -> bool:
        return it in self.index

    def on_state(self, it: int) -> None:
        """Record the state after ``it`` steps (call before the next step's forward pass)."""
        row = self.index[it]
        w = self._flat()
        if it == 0 or self.w0 is None:
            self.w0 = w.clone()
        d = w - self.w0
        nw, n0 = w.norm(), self.w0.norm()
        for key, value in (
            ("mean_abs", w.abs().mean()),
            ("sign_changed", (torch.signbit(w) != torch.signbit(self.w0)).float().mean()),
            ("dist_init", d.norm()),
            ("cos_init", (w @ self.w0) / (nw * n0)),
            ("ten_weights", w[self.ten_index.to(w.device)]),
        ):
            self._pending.append((row, key, value.detach()))
        self._sample_gradients(row)
        with h5py.File(self.path, "a") as f:
            if "snapshots" not in f:
                f.create_dataset("snapshots", shape=(len(self.iterations), w.numel()), dtype="f2")
            f["snapshots"][row] = w.to(torch.float16).cpu().numpy()

    def attach(self, loss_fn) -> None:
        """The training loop's loss, ``loss_fn(x_uint8, y) -> mean loss`` (normalisation, autocast
        and the forward pass exactly as in a training step)."""
        self.loss_fn = loss_fn

    def _sample_gradients(self, row: int) -> None:
        """grad_norm and grad_norm_full at the current state on the fixed sample. The model is in
        training mode (BatchNorm uses batch statistics, as in the step); the BatchNorm running
        statistics it updates are restored, and no .grad is touched, so training is unchanged."""
        if self.grad_sample is None or self.loss_fn is None:
            return
        x_all, y_all = self.grad_sample
        buffers = [b for b in self.model.buffers()]
        saved = [b.detach().clone() for b in buffers]
        norms, total = [], None
        for i in range(0, x_all.shape[0], self.grad_batch):
            loss = self.loss_fn(x_all[i : i + self.grad_batch], y_all[i : i + self.grad_batch])
            grads = torch.autograd.grad(loss, self.params)
            flat = torch.cat([g.detach().float().reshape(-1) for g in grads])
            norms.append(flat.norm())
            total = flat if total is None else total + flat
        with torch.no_grad():
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)
        self._pending.append((row, "grad_norm", torch.stack(norms).mean()))
        self._pending.append((row, "grad_norm_full", (total / len(norms)).norm()))

    def on_grad(self, it: int) -> None:
        """Record ||g|| of the step's own gradient at state ``it`` (after backward, before step)."""
        sq = torch.stack([p.grad.detach().float().pow(2).sum() for p in self.params]).sum()
        self._pending.append((self.index[it], "grad_norm_step", sq.sqrt()))

    def flush(self) -> None:
        for row, key, value in self._pending:
            self.values[key][row] = value.to("cpu", torch.float64)
        self._pending.clear()

    def settings(self) -> tuple:
        """What this recorder measures, for the training loop's resume fingerprint: a state saved
        while measuring on another gradient sample (or other points, tensors) is not continued."""
        sample = None
        if self.grad_sample is not None:
            x, y = self.grad_sample
            sample = (
                int(x.shape[0]),
                self.grad_batch,
                hashlib.sha256(x.cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest(),
            )
        return (tuple(self.iterations), tuple(self.names), sample)

    def state_dict(self) -> dict:
        self.flush()
        return {"w0": None if self.w0 is None else self.w0.cpu(), "values": self.values}

    def load_state_dict(self, state: dict, device) -> None:
        self.w0 = None if state["w0"] is None else state["w0"].to(device)
        self.values = state["values"]

    def write(self, extra_attrs: dict | None = None) -> Path:
        """Add the recorded series to the snapshot file and return its path."""
        self.flush()
        with h5py.File(self.path, "a") as f:
            f.attrs["format"] = FORMAT
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = v
            series = {
                "iteration": np.asarray(self.iterations, dtype=np.int64),
                **{key: value.numpy() for key, value in self.values.items()},
                "ten_index": self.ten_index.numpy(),
                "param_names": np.array(self.names, dtype=h5py.string_dtype()),
                "param_sizes": np.asarray(self.sizes, dtype=np.int64),
            }
            for key, value in series.items():
                if key in f:  # a job that died after writing these is being re-run
                    del f[key]
                f.create_dataset(key, data=value)
        return self.path


def final_relative(snapshots: np.ndarray, w_final: np.ndarray, chunk: int = 8) -> dict:
    """dist_final and cos_final for each snapshot row against the final weights (float64 math)."""
    wf = torch.as_tensor(w_final, dtype=torch.float64)
    nf = wf.norm()
    dist, cos = [], []
    for i in range(0, snapshots.shape[0], chunk):
        w = torch.as_tensor(np.asarray(snapshots[i : i + chunk]), dtype=torch.float64)
        dist.append((w - wf).norm(dim=1))
        cos.append((w @ wf) / (w.norm(dim=1) * nf))
    return {"dist_final": torch.cat(dist).numpy(), "cos_final": torch.cat(cos).numpy()}


# ---- after the dense run: final-relative quantities, summaries, the Figure 2 timeline ----------
SERIES = (
    "accuracy", "loss", "mean_abs", "sign_changed", "grad_norm", "grad_norm_full", "grad_norm_step",
    "dist_init", "dist_final", "cos_init", "cos_final",
)  # fmt: skip


def _atomic_h5(out_path, write) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finalise(
    raw_path, final_state: dict, metrics_path, out_path, expect: dict | None = None
) -> dict:
    """One run's complete telemetry: the raw series, final-relative distances and the test
    accuracy/loss at every telemetry iteration. Returns the series as numpy arrays.
    ``expect`` (network, seed, ...): the run both files must record (identity.check)."""
    expect = expect or {}
    run = {k: expect[k] for k in ("network", "seed") if k in expect}
    with h5py.File(raw_path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{raw_path} is not an {FORMAT} file; re-run its dense job")
        identity.check(raw_path, _attrs(f), run, identity.describe(expect))
        out = {k: f[k][()] for k in f if k != "snapshots"}
        names = [n.decode() if isinstance(n, bytes) else n for n in out["param_names"]]
        w_final = torch.cat([final_state[n].reshape(-1).double() for n in names]).numpy()
        out.update(final_relative(f["snapshots"], w_final))
        attrs = dict(f.attrs)
    with h5py.File(metrics_path, "r") as f:
        identity.check(metrics_path, _attrs(f), expect, identity.describe(expect))
        ev_it = f["eval/iteration"][()]
        first = {int(it): i for i, it in reversed(list(enumerate(ev_it)))}
        missing = [int(t) for t in out["iteration"] if int(t) not in first]
        if missing:
            raise ValueError(
                f"{metrics_path} has no evaluation at telemetry iterations {missing[:5]}"
            )
        rows = [first[int(t)] for t in out["iteration"]]
        out["accuracy"] = f["eval/accuracy"][()][rows]
        out["loss"] = f["eval/loss"][()][rows]
        out["eval_n"] = f["eval/n"][()][rows] if "n" in f["eval"] else np.full(len(rows), -1)
        final_accuracy = float(f.attrs["final_test_accuracy"])
        total = int(f.attrs["total_iterations"])

    def write(h):
        h.attrs.update({**attrs, "final_test_accuracy": final_accuracy, "total_iterations": total})
        for k, v in out.items():
            h.create_dataset(k, data=v)

    _atomic_h5(out_path, write)
    return out


def _attrs(f: h5py.File) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def summarise(paths: list[str], out_path, network: str) -> dict:
    """Mean and std (ddof=1; 0 for one seed) of every series across seeds, plus the timeline.
    Each file must record ``network`` and the seed its path names (identity.from_path)."""
    runs = []
    for p in paths:
        with h5py.File(p, "r") as f:
            run = {**identity.from_path(p), "network": network}
            run = {k: run[k] for k in ("network", "seed") if k in run}
            identity.check(p, _attrs(f), run, identity.describe(run))
            runs.append(
                {
                    **{k: f[k][()] for k in f},
                    "_final": float(f.attrs["final_test_accuracy"]),
                    "_seed": int(f.attrs["seed"]),
                }
            )
    its = runs[0]["iteration"]
    for p, r in zip(paths, runs, strict=True):
        if not np.array_equal(r["iteration"], its):
            raise ValueError(f"{p} has a different telemetry schedule than {paths[0]}")
    summary = {"iteration": its}
    for key in SERIES:
        stack = np.stack([r[key] for r in runs])
        summary[f"{key}/mean"] = stack.mean(0)
        summary[f"{key}/std"] = stack.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(its))
        summary[f"{key}/seeds"] = stack
    summary["ten_weights"] = runs[0]["ten_weights"]  # one seed's weights, as the paper shows
    final = np.array([r["_final"] for r in runs])
    tl = timeline(summary, float(final.mean()))

    def write(h):
        h.attrs.update(
            {
                "schema": "earlyphase-telemetry-summary/2",
                "network": network,
                "seeds": [r["_seed"] for r in runs],
                "final_accuracy_mean": final.mean(),
            }
        )
        for k, v in summary.items():
            h.create_dataset(k, data=v)
        g = h.create_group("timeline")
        for k, v in tl.items():
            g.attrs[k] = v

    _atomic_h5(out_path, write)
    return {"summary": summary, "timeline": tl}


def _at(its, values, t):
    """Value at iteration t, linearly interpolated between the telemetry points either side (the
    log-spaced schedule has no point at 400 or 2000; NaN outside the window)."""
    its, values = np.asarray(its, dtype=float), np.asarray(values, dtype=float)
    if t > its[-1] or t < its[0]:
        return float("nan")
    ok = np.isfinite(values)
    return float(np.interp(t, its[ok], values[ok]))


def timeline(summary: dict, final_accuracy: float, settle_fraction: float = 0.1) -> dict:
    """The Figure 2 landmarks, measured on the across-seed means (iterations; NaN if not reached):

    grad_min_iteration     iteration (>= 1) where the gradient norm is smallest
    grad_settle_iteration  first iteration after that minimum where the gradient norm has
                           recovered all but ``settle_fraction`` of the dip, i.e. is at least
                           min + (1 - settle_fraction) (plateau - min), the plateau being the mean
                           over the second half of the window (iterations >= T/2). Relative to the
                           dip's depth: a band around the plateau (the earlier detector) is crossed
                           inside the dip's own noise when the dip is shallow (17% measured).
    acc50_iteration, acc80_iteration
                           first iteration where test accuracy reaches 50% / 80% of the run's
                           final accuracy
    accuracy_at_400, accuracy_at_2000   test accuracy (fraction) at those iterations
    signs_changed_at_500, _at_2000      fraction of weights whose sign differs from init
                                        (interpolated between the neighbouring points)
    signs_changed_500_to_2000           the difference of the two (the paper's "about 9%")
    """
    its = np.asarray(summary["iteration"])
    g = np.asarray(summary["grad_norm/mean"])
    acc = np.asarray(summary["accuracy/mean"])
    signs = np.asarray(summary["sign_changed/mean"])
    later = np.flatnonzero((its >= 1) & np.isfinite(g))  # the last point has no gradient (NaN)
    i_min = int(later[np.argmin(g[later])])
    plateau = float(np.nanmean(g[its >= its[-1] / 2]))
    level = g[i_min] + (1.0 - settle_fraction) * (plateau - g[i_min])
    settle = [t for t, v in zip(its[i_min:], g[i_min:], strict=True) if v >= level]

    def first_reach(threshold):
        hit = np.flatnonzero(acc >= threshold)
        return float(its[hit[0]]) if hit.size else float("nan")

    s500, s2000 = _at(its, signs, 500), _at(its, signs, 2000)
    return {
        "window": int(its[-1]),
        "final_accuracy": final_accuracy,
        "grad_min_iteration": float(its[i_min]),
        "grad_plateau": plateau,
        "grad_settle_iteration": float(settle[0]) if settle else float("nan"),
        "acc50_iteration": first_reach(0.5 * final_accuracy),
        "acc80_iteration": first_reach(0.8 * final_accuracy),
        "accuracy_at_400": _at(its, acc, 400),
        "accuracy_at_2000": _at(its, acc, 2000),
        "signs_changed_at_500": s500,
        "signs_changed_at_2000": s2000,
        "signs_changed_500_to_2000": s2000 - s500,
    }


PAPER_RESNET20 = {  # Section 4's claims for ResNet-20, to print beside the measurement
    "grad_min_iteration": "about 200",
    "grad_settle_iteration": "about 500",
    "accuracy_at_400": "0.55",
    "accuracy_at_2000": "approaching 0.80",
    "signs_changed_500_to_2000": "about 0.09",
}


def timeline_table(network: str, tl: dict) -> str:
    """A short plain-text table of the timeline (written beside the summary)."""
    lines = [
        f"Figure 2 timeline, {network} (first {tl['window']} iterations; mean over seeds)",
        f"{'landmark':<28}{'measured':>12}  paper (ResNet-20)",
    ]
    for key, value in tl.items():
        if key == "window":
            continue
        paper = PAPER_RESNET20.get(key, "") if network == "resnet20" else ""
        lines.append(f"{key:<28}{value:>12.4g}  {paper}")
    return "\n".join(lines) + "\n"
