"""Sharpness (beyond the paper): the top eigenvalue of the training-loss Hessian.

The paper motivates the early phase by the curvature reshaping in the first iterations (Gur-Ari,
Roberts & Dyer, 2018: the top Hessian eigenvalues grow fast, then settle). Here it is measured at
the dense runs' kept states (every rewind point and the ``hessian.iterations`` of the first T).

* The loss: mean cross-entropy over a fixed, un-augmented training sample (``samples`` images in
  random order, keyed by the seed), in mini-batches of the training batch size, the network in
  training mode as SGD sees it (BatchNorm normalises with each mini-batch's statistics; the
  running statistics it updates are restored). The Hessian is that of the mean of the batch losses.
* Hessian-vector products by double back-propagation (Pearlmutter), no Hessian is ever formed.
* Lanczos with full re-orthogonalisation for ``steps`` iterations from a seeded random start; the
  largest Ritz value estimates the largest (algebraic) eigenvalue. Recorded with it: the next Ritz
  values and the Ritz residual |beta_m * s_m| (an upper bound on the distance of the estimate
  from an eigenvalue of the Hessian), so a budget too small for convergence is visible in the data.

Reference: for SGD with heavy-ball momentum mu and learning rate lr, the quadratic model is stable
only while lambda_max < 2 (1 + mu) / lr (``stability_threshold``; 38 at the paper's 0.1 / 0.9).
"""

from __future__ import annotations

import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from . import augment, checkpoint, data, device, identity, layout, models, rng
from .atomic import atomic_path

FORMAT = "earlyphase-hessian/1"
SUMMARY_FORMAT = "earlyphase-hessian-summary/1"


def stability_threshold(lr: float, momentum: float) -> float:
    """2 (1 + mu) / lr: the largest curvature heavy-ball SGD can follow without diverging."""
    return 2.0 * (1.0 + momentum) / lr


def sample(train_x: torch.Tensor, train_y: torch.Tensor, size: int, seed: int):
    """The fixed training sample (random order: data files may be stored class by class)."""
    n = train_x.shape[0]
    pick = torch.randperm(n, generator=rng.generator(seed, "hessian_sample"))[: min(size, n)]
    pick = pick.to(train_x.device)
    return train_x[pick], train_y[pick]


def network_model(network: str, dev: torch.device) -> torch.nn.Module:
    """The network as the Hessian jobs evaluate it: the training loop's layout (layout.py; its
    CPU rule also covers the double backward of the routed convolutions)."""
    return layout.apply(models.build(network), dev)


def hvp_function(model, params: list, batches: list, loss_fn):
    """v (flat) -> H v (flat) for the mean over ``batches`` of ``loss_fn(model, x, y)``."""

    def hvp(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for x, y in batches:
            loss = loss_fn(model, x, y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads])
            hv = torch.autograd.grad(flat @ v, params)
            out += torch.cat([h.reshape(-1) for h in hv])
        return out / len(batches)

    return hvp


def lanczos(matvec, dim: int, steps: int, generator: torch.Generator, device=None, dtype=None):
    """Largest eigenvalue of the symmetric operator ``matvec`` by ``steps`` Lanczos iterations.

    Returns (top, ritz values in decreasing order, residual bound |beta_m s_m|, matvecs used)."""
    steps = max(1, min(int(steps), dim))
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    v = v / v.norm()
    basis, a_s, b_s = [v], [], []
    w = matvec(v)
    a = float(w @ v)
    w = w - a * v
    a_s.append(a)
    for _ in range(1, steps):
        b = float(w.norm())
        if b <= 1e-10 * max(1.0, abs(a)):  # an invariant subspace: the Ritz values are exact
            break
        v = w / b
        for _pass in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            for u in basis:
                v = v - (v @ u) * u
        v = v / v.norm()
        w = matvec(v) - b * basis[-1]
        basis.append(v)
        b_s.append(b)
        a = float(w @ v)
        w = w - a * v
        a_s.append(a)
    t = np.diag(a_s) + np.diag(b_s, 1) + np.diag(b_s, -1)
    evals, evecs = np.linalg.eigh(t)
    residual = abs(float(w.norm()) * evecs[-1, -1])
    return float(evals[-1]), evals[::-1].copy(), residual, len(a_s)


def _loss(normalise):
    def loss_fn(model, x, y):
        return F.cross_entropy(model(normalise(x)).float(), y)

    return loss_fn


def top_eigenvalue(
    model, x, y, normalise, *, batch_size: int, steps: int, seed: int, key: str = ""
) -> dict:
    """The top Hessian eigenvalue of the mean training loss over (x, y) at the model's weights.

    ``key`` (e.g. the iteration) keys the Lanczos start vector with ``seed``. The model's running
    statistics are restored afterwards; its weights and gradients are untouched."""
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    was_training = model.training
    model.train()
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    hvp = hvp_function(model, params, batches, _loss(normalise))
    g = rng.generator(seed, "hessian_lanczos", key)
    t = time.perf_counter()
    top, ritz, residual, used = lanczos(hvp, dim, steps, g, params[0].device, params[0].dtype)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        for b, v in zip(buffers, saved, strict=True):
            b.copy_(v)
    model.train(was_training)
    return {"top": top, "ritz": ritz, "residual": residual, "hvps": used, "seconds": seconds}


# ---- the hessian job --------------------------------------------------------------------------
def measure(
    checkpoints: dict[int, str],
    data_path: str,
    *,
    network: str,
    seed: int,
    hparams: dict,
    samples: int,
    steps: int,
    runtime: dict,
    log=print,
) -> tuple:
    """The top eigenvalue at each of a dense run's kept states {iteration: checkpoint path}.
    Returns (iterations, results, attrs) for ``write``."""
    dev = device.select_from(runtime)
    device.set_precision("fp32")  # strict float32 whatever runtime.precision: Lanczos needs it
    ds = data.load(data_path, dev)
    x, y = sample(ds.train_x, ds.train_y, samples, seed)
    normalise = augment.Normalise(hparams["mean"], hparams["std"], dev)
    model = network_model(network, dev)
    iterations, results = sorted(int(i) for i in checkpoints), []
    run = {"network": network, "seed": seed}
    for it in iterations:
        path = checkpoints[it]
        ck = checkpoint.load(path, map_location=dev)
        identity.check(
            path,
            {"network": ck["network"], "iteration": ck["iteration"]},
            {"network": network, "iteration": it},
            identity.describe(run),
        )
        model.load_state_dict(ck["state_dict"])
        r = top_eigenvalue(
            model,
            x,
            y,
            normalise,
            batch_size=int(hparams["batch_size"]),
            steps=steps,
            seed=seed,
            key=str(it),
        )
        results.append(r)
        log(
            f"iteration {it:>6}: top eigenvalue {r['top']:.4g} (residual {r['residual']:.2g}, "
            f"{r['hvps']} Hessian-vector products, {r['seconds']:.1f} s)"
        )
    lr, momentum = float(hparams["lr"]), float(hparams["momentum"])
    attrs = {
        "network": network,
        "seed": int(seed),
        "experiment": "dense",
        "series": "dense",
        "level": 0,
        "samples": int(x.shape[0]),
        "steps": int(steps),
        "lr": lr,
        "momentum": momentum,
        "threshold": stability_threshold(lr, momentum),
        "batch_size": int(hparams["batch_size"]),
        "device": str(dev),
    }
    return iterations, results, attrs


# ---- files --------------------------------------------------------------------------------------
RITZ_KEPT = 3  # Ritz values written per point (the top one and the next two)


def write(path, iterations: list[int], results: list[dict], attrs: dict) -> None:
    def ritz(r):
        v = np.full(RITZ_KEPT, np.nan)
        v[: min(RITZ_KEPT, len(r["ritz"]))] = r["ritz"][:RITZ_KEPT]
        return v

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        for k, v in attrs.items():
            f.attrs[k] = v
        f["iteration"] = np.asarray(iterations, dtype=np.int64)
        f["top_eigenvalue"] = np.asarray([r["top"] for r in results])
        f["ritz"] = np.stack([ritz(r) for r in results]) if results else np.zeros((0, RITZ_KEPT))
        f["residual"] = np.asarray([r["residual"] for r in results])
        f["hvps"] = np.asarray([r["hvps"] for r in results], dtype=np.int64)
        f["seconds"] = np.asarray([r["seconds"] for r in results])


def read(path) -> dict:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT} file; re-run its hessian job")
        out = {k: f[k][()] for k in f}
        out["attrs"] = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
        }
    return out


def summarise(paths: list[str], out_path, network: str, rewinds: list[int]) -> dict:
    """Mean and std (ddof=1; 0 for one seed) of the top eigenvalue across seeds at every
    iteration every seed measured; ``rewinds`` marks the rewind points (the against-k panel)."""
    runs = []
    for p in paths:
        r = read(p)
        want = {**identity.from_path(p), "network": network}
        want = {k: want[k] for k in ("network", "seed") if k in want}
        identity.check(p, r["attrs"], want, identity.describe(want))
        runs.append(r)
    its = runs[0]["iteration"]
    for p, r in zip(paths, runs, strict=True):
        if not np.array_equal(r["iteration"], its):
            raise ValueError(
                f"{p} measured iterations {list(r['iteration'])}, {paths[0]} {list(its)}"
            )
    top = np.stack([r["top_eigenvalue"] for r in runs])
    ddof = 1 if len(runs) > 1 else 0
    out = {
        "iteration": its,
        "mean": top.mean(0),
        "std": top.std(0, ddof=ddof),
        "per_seed": top,
        "seed": np.asarray([int(r["attrs"]["seed"]) for r in runs]),
        "residual_max": np.stack([r["residual"] for r in runs]).max(0),
        "is_rewind": np.isin(its, np.asarray(rewinds, dtype=np.int64)),
    }
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = SUMMARY_FORMAT
        f.attrs["network"] = network
        for k in ("lr", "momentum", "samples", "steps", "threshold"):
            if k in runs[0]["attrs"]:
                f.attrs[k] = runs[0]["attrs"][k]
        for k, v in out.items():
            f[k] = v
    out["attrs"] = dict(runs[0]["attrs"])
    return out


def read_summary(path) -> dict:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != SUMMARY_FORMAT:
            raise ValueError(f"{path} is not an {SUMMARY_FORMAT} file; re-run summarise_hessian")
        out = {k: f[k][()] for k in f}
        out["attrs"] = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
        }
    return out
