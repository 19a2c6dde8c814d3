"""Several runs of one network shape trained together in one process (issue 7, item 3).

N runs that share a network (the seeds of one experiment, the perturbation variants of one (k,
level)) become one batch of models. Each keeps its own data order and augmentation (its own seed,
through the same ``augment.draw_epoch`` streams as ``train.train``), its own mask, its own weights,
optimizer state and BatchNorm running statistics; the per-run losses are summed, so each model's
gradient is exactly the gradient of its own mean loss and the SGD update (elementwise) is the one
a separate run would make. Two ways to batch the models:

``grouped`` (default)
    One *wide* network: every ``Conv2d(c_in, c_out, groups=g)`` becomes ``Conv2d(N c_in, N c_out,
    groups=N g)``, every ``BatchNorm2d(C)`` a ``BatchNorm2d(N C)``, every ``Linear`` a block-diagonal
    ``GroupedLinear``. Channels are model-major (model i owns channels ``[i C, (i+1) C)``), so the
    unchanged ``forward`` of the network computes all N models at once and BatchNorm's per-channel
    statistics -- batch and running -- are per model by construction. Parameter names are the
    narrow network's, so masks and ``train.masked_parameters`` work unchanged. Runs channels_last.
``vmap``
    ``torch.func.stack_module_state`` + ``torch.func.functional_call`` under ``torch.vmap``. The
    BatchNorm buffers are stacked and vmapped too (in_dims 0), so each model's running statistics
    are updated in place in its own slice -- not the documented workarounds
    (``track_running_stats=False`` / ``replace_all_batch_norm_modules_``), which drop them.

Both match separately trained runs to float tolerance over the first steps (tests/unit/
test_multirun.py; the kernels differ, so not bit for bit, and over a whole schedule those tiny
differences grow as between any two devices: compare full runs by accuracy, not weights).

Throughput (``python -m pipeline_scripts.tools.bench --multirun resnet20``; README,
Performance). On the 2-core CPU neither method beats N runs one after another: ResNet-20 at batch
128 already keeps both cores busy in large oneDNN kernels, and a grouped convolution (or vmap's
batching rule, which also becomes a grouped convolution, in NCHW) runs at a lower FLOP rate than
N plain ones. Measured, all N models together vs one run at a time (interleaved, medians; two runs
of the benchmark, the second in the README): grouped 0.70-0.82x / 0.60-0.62x / 0.46-0.72x and vmap
0.52-0.56x / 0.44-0.53x / 0.31x for N = 2 / 4 / 8. So the switch stays off on CPUs.

When to use it: on a GPU, one small-network job (ResNet-20/56 at batch 128) leaves most of the device idle -- each of its ~200 kernels per step is too small to fill the
SMs and the step is launch-bound -- and N runs per job issue the same number of launches with N
times the work each (grouped: one cuDNN grouped convolution per layer, channels_last). Measure
``bench.py --multirun resnet20 --multirun-n 2 4 8 16`` on the GPU and take the N where img/s per
job stops growing (memory grows N-fold); it pays least for the big networks, which fill a GPU
alone.

Not here: resume state, telemetry, eval subsets -- so dense runs are never grouped and a killed
group restarts (runs.run_group, `runtime.runs_per_job`, wires this into the DAG).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import augment
from .data import Dataset
from .hparams import TrainingHparams
from .train import Metrics, NonFiniteLoss, masked_parameters, masked_step, sgd

METHODS = ("grouped", "vmap")


# ----------------------------------------------------------------------------------------------
# grouped: one wide network


class GroupedLinear(nn.Module):
    """N independent ``Linear(in, out)`` on model-major features: (B, N*in) -> (B, N*out)."""

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True, **kw):
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(n, out_features, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, self.n, self.in_features).transpose(0, 1)  # (N, B, in)
        w = self.weight.transpose(1, 2)  # (N, in, out)
        out = torch.bmm(x, w) if self.bias is None else torch.baddbmm(self.bias[:, None], x, w)
        return out.transpose(0, 1).reshape(b, self.n * self.out_features)


def _wide_module(m: nn.Module, n: int) -> nn.Module | None:
    # Built on the meta device (values come from Grouped.load), so the global RNG is never used.
    params = list(m.parameters(recurse=False))
    kw = {"device": "meta", "dtype": params[0].dtype if params else None}
    if type(m) is nn.Conv2d:
        if m.padding_mode != "zeros":
            raise NotImplementedError("grouped runs support zero-padded convolutions only")
        return nn.Conv2d(
            n * m.in_channels,
            n * m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            n * m.groups,
            m.bias is not None,
            **kw,
        )
    if type(m) is nn.BatchNorm2d:
        return nn.BatchNorm2d(
            n * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, **kw
        )
    if type(m) is nn.Linear:
        return GroupedLinear(n, m.in_features, m.out_features, m.bias is not None, **kw)
    if isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, _BatchNorm, nn.LayerNorm)):
        raise NotImplementedError(f"grouped runs cannot widen {type(m).__name__}")
    return None


def widen(model: nn.Module, n: int) -> nn.Module:
    """A wide copy of ``model`` computing ``n`` models at once (values undefined until ``pack``)."""
    wide = copy.deepcopy(model).to("meta")
    for _, parent in list(wide.named_modules()):
        for name, child in list(parent.named_children()):
            new = _wide_module(child, n)
            if new is not None:
                setattr(parent, name, new)
    return wide


def _stacked_names(model: nn.Module) -> set[str]:
    """State entries that stack along a new dim 0 (GroupedLinear); the rest concatenate."""
    return {
        f"{path}.{leaf}"
        for path, m in model.named_modules()
        if type(m) is nn.Linear
        for leaf in ("weight", "bias")
        if getattr(m, leaf) is not None
    }


class Grouped:
    """N models of one architecture as one wide channels_last network (see module docstring)."""

    method = "grouped"

    def __init__(self, models: Sequence[nn.Module], dev: torch.device):
        self.n = len(models)
        self.template = models[0]
        self.stacked = _stacked_names(self.template)
        self.net = widen(self.template, self.n).to_empty(device=dev)
        self.net.to(memory_format=torch.channels_last)
        self._nbt_start: dict[str, list[int]] = {}
        self.load([m.state_dict() for m in models])

    def load(self, states: Sequence[dict]) -> None:
        wide = self.net.state_dict()
        if set(wide) != set(states[0]):
            raise ValueError("the wide network's state names differ from the models'")
        with torch.no_grad():
            for name, target in wide.items():
                parts = [s[name].to(target.device) for s in states]
                if name.endswith("num_batches_tracked"):
                    # One counter per wide BN; keep each model's own start to give it back.
                    self._nbt_start[name] = [int(p) for p in parts]
                    target.fill_(0)
                elif name in self.stacked:
                    target.copy_(torch.stack(parts))
                else:
                    target.copy_(torch.cat(parts))

    def state_dict(self, i: int) -> dict:
        out = {}
        for name, value in self.net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                out[name] = value + self._nbt_start[name][i]
            elif name in self.stacked:
                out[name] = value[i].clone()
            else:
                out[name] = value.chunk(self.n)[i].clone()
        return out

    def parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters())

    def grad(self, name: str, i: int) -> torch.Tensor:
        """Model i's slice of the gradient of parameter ``name``."""
        g = dict(self.net.named_parameters())[name].grad
        return g[i] if name in self.stacked else g.chunk(self.n)[i]

    def wide_mask(self, masks: Sequence[dict | None]) -> dict | None:
        return _combine_masks(
            self.template,
            masks,
            lambda name, parts: torch.stack(parts) if name in self.stacked else torch.cat(parts),
        )

    def masked(self, mask: dict | None):
        return masked_parameters(self.net, mask)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)

    def logits(self, xs: Sequence[torch.Tensor], normalise) -> torch.Tensor:
        """xs: N uint8 batches (B, C, H, W) -> logits (N, B, classes)."""
        b, c, h, w = xs[0].shape
        x = normalise(torch.stack(xs, dim=1).view(b, self.n * c, h, w))
        out = self.net(x)
        return out.view(b, self.n, -1).transpose(0, 1)

    def normaliser(self, hp: TrainingHparams, dev) -> augment.Normalise:
        return augment.Normalise(list(hp.mean) * self.n, list(hp.std) * self.n, dev)


# ----------------------------------------------------------------------------------------------
# vmap: stacked parameters and buffers


class Vmapped:
    """N models as stacked parameters/buffers, run by ``vmap(functional_call)``."""

    method = "vmap"

    def __init__(self, models: Sequence[nn.Module], dev: torch.device):
        self.n = len(models)
        self.template = models[0]
        self.base = copy.deepcopy(models[0]).to("meta")
        with torch.no_grad():
            self.params = {
                k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
                .to(dev)
                .requires_grad_()
                for k, _ in models[0].named_parameters()
            }
            self.buffers = {
                k: torch.stack([dict(m.named_buffers())[k] for m in models]).to(dev)
                for k, _ in models[0].named_buffers()
            }

        def call(p, b, x):
            return torch.func.functional_call(self.base, (p, b), (x,))

        self._forward = torch.vmap(call, in_dims=(0, 0, 0))

    def state_dict(self, i: int) -> dict:
        order = self.template.state_dict().keys()
        both = {**self.params, **self.buffers}
        return {k: both[k][i].detach().clone() for k in order}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def grad(self, name: str, i: int) -> torch.Tensor:
        return self.params[name].grad[i]

    def wide_mask(self, masks: Sequence[dict | None]) -> dict | None:
        return _combine_masks(self.template, masks, lambda name, parts: torch.stack(parts))

    def masked(self, mask: dict | None):
        if not mask:
            return [], []
        names = list(mask)
        return [self.params[k] for k in names], [
            mask[k].to(self.params[k].device, self.params[k].dtype) for k in names
        ]

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def logits(self, xs: Sequence[torch.Tensor], normalise) -> torch.Tensor:
        x = torch.stack([normalise(x) for x in xs])  # (N, B, C, H, W)
        return self._forward(self.params, self.buffers, x)

    def normaliser(self, hp: TrainingHparams, dev) -> augment.Normalise:
        return augment.Normalise(hp.mean, hp.std, dev)


def _combine_masks(template: nn.Module, masks: Sequence[dict | None], join) -> dict | None:
    """Per-model masks -> one mask over the batched parameters; a model without a mask (or
    without an entry for a tensor another model masks) keeps that tensor dense."""
    names = [n for n, _ in template.named_parameters() if any(m and n in m for m in masks)]
    if not names:
        return None
    params = dict(template.named_parameters())
    out = {}
    for name in names:
        parts = [
            (m[name] if m and name in m else torch.ones_like(params[name], dtype=torch.bool))
            .to(torch.bool)
            .cpu()
            for m in masks
        ]
        out[name] = join(name, parts)
    return out


def make(method: str, models: Sequence[nn.Module], dev: torch.device):
    if method == "grouped":
        return Grouped(models, dev)
    if method == "vmap":
        return Vmapped(models, dev)
    raise ValueError(f"unknown multirun method {method!r}; known: {METHODS}")


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class GroupResult:
    metrics: list[Metrics]  # one per model
    snapshots: list[dict]  # per model: iteration -> state_dict (CPU)
    total_iterations: int
    iterations_per_epoch: int


@torch.inference_mode()
def evaluate(group, tests: Sequence[tuple], normalise, batch_size: int) -> list[tuple]:
    """Per-model (mean cross-entropy, accuracy); ``tests`` holds each model's (x, y)."""
    group.train(False)
    n = tests[0][0].shape[0]
    dev = tests[0][0].device
    loss = torch.zeros(group.n, device=dev, dtype=torch.float64)
    correct = torch.zeros(group.n, device=dev, dtype=torch.int64)
    for i in range(0, n, batch_size):
        out = group.logits([x[i : i + batch_size] for x, _ in tests], normalise).float()
        y = torch.stack([t[1][i : i + batch_size] for t in tests])  # (N, b)
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        loss += ce.view(group.n, -1).sum(1)
        correct += (out.argmax(-1) == y).sum(1)
    group.train(True)
    return [(lo / n, c / n) for lo, c in zip(loss.tolist(), correct.tolist(), strict=True)]


def train_group(
    models: Sequence[nn.Module],
    datasets: Dataset | Sequence[Dataset],
    hp: TrainingHparams,
    seeds: Sequence[int],
    *,
    masks: Sequence[dict | None] | None = None,
    method: str = "grouped",
    eval_iterations: Sequence[int] = (),
    snapshot_iterations: Sequence[int] = (),
    log_every: int = 100,
    eval_batch_size: int = 250,
    batch_fns: Sequence[Callable | None] | None = None,
    max_iterations: int | None = None,
    on_step: Callable[[int], None] | None = None,
    start_iteration: int = 0,
    log: Callable[[str], None] = print,
) -> GroupResult:
    """Train ``models`` (same architecture) together, in place; model i follows ``seeds[i]``.

    Per step and per model the same operations as ``train.train`` (data order, crop/flip,
    ``batch_fns[i]``, normalisation, SGD with momentum and weight decay, masked gradients and
    weights), so model i ends where ``train.train(models[i], datasets[i], hp, seed=seeds[i],
    mask=masks[i])`` would, up to float rounding. ``datasets`` may be one data set for all or one
    per model (e.g. a task's relabelled training labels); the training images must have the same
    shape. ``max_iterations`` stops early (tests); ``on_step(it)`` runs before the first step
    (``it`` = ``start_iteration``) and after every step (``it`` = the absolute iteration), e.g. the
    benchmark's clock. ``start_iteration``: rewinding, as ``train.RunOptions.start_iteration``.
    """
    n = len(models)
    if len(seeds) != n:
        raise ValueError(f"{n} models but {len(seeds)} seeds")
    dss = [datasets] * n if isinstance(datasets, Dataset) else list(datasets)
    masks = list(masks) if masks is not None else [None] * n
    batch_fns = list(batch_fns) if batch_fns is not None else [None] * n
    if not (len(dss) == len(masks) == len(batch_fns) == n):
        raise ValueError("datasets, masks and batch_fns need one entry per model")
    if len({tuple(d.train_x.shape) for d in dss}) != 1:
        raise ValueError("the runs of a group must train on images of the same shape")
    dev = dss[0].train_x.device
    n_train = dss[0].train_x.shape[0]
    ipe = hp.iterations_per_epoch(n_train)
    total = hp.total_iterations(n_train)
    stop = total if max_iterations is None else min(total, int(max_iterations))
    start = int(start_iteration)
    if not 0 <= start < total:
        raise ValueError(f"start iteration {start} must lie in 0..{total - 1}")
    snapshot_at = set(snapshot_iterations)
    eval_at = {i for i in eval_iterations if start <= i <= total} | {start, total}

    for m in models:
        m.to(dev)
        m.train()
    group = make(method, models, dev)
    group.train(True)
    optimizer = sgd(group.parameters(), hp)
    mparams, mmasks = group.masked(group.wide_mask(masks))
    with torch.no_grad():
        if mparams:
            torch._foreach_mul_(mparams, mmasks)
    normalise = group.normaliser(hp, dev)
    tests = [(d.test_x, d.test_y) for d in dss]
    metrics = [Metrics() for _ in range(n)]
    snapshots: list[dict] = [{} for _ in range(n)]
    loss_acc = torch.zeros(n, device=dev, dtype=torch.float32)
    it = last_log_it = start

    def snapshot():
        for i in range(n):
            snapshots[i][it] = {k: v.cpu() for k, v in group.state_dict(i).items()}

    def run_eval():
        t = time.perf_counter()
        results = evaluate(group, tests, normalise, eval_batch_size)
        dt = time.perf_counter() - t
        for i, (loss, acc) in enumerate(results):
            mt = metrics[i]
            mt.eval_seconds += dt / n
            mt.eval_iteration.append(it)
            mt.eval_loss.append(loss)
            mt.eval_accuracy.append(acc)
            mt.eval_wall_seconds.append(mt.train_seconds)
            mt.eval_n.append(int(tests[i][0].shape[0]))
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"run {i} (seed {seeds[i]}): test loss {loss} at {it}")
        log(f"iter {it:>7}/{total}  test acc " + " ".join(f"{a:.4f}" for _, a in results))

    if start in snapshot_at:
        snapshot()
    if start in eval_at:
        run_eval()
    if on_step is not None:
        on_step(start)
    draws, draw_epoch, current_lr = None, -1, None
    t0 = time.perf_counter()
    while it < stop:
        epoch, j = divmod(it, ipe)
        if epoch != draw_epoch:
            draws = [
                augment.draw_epoch(n_train, s, epoch, hp.crop_padding, hp.flip, dev) for s in seeds
            ]
            draw_epoch = epoch
        sl = slice(j * hp.batch_size, (j + 1) * hp.batch_size)
        xs, ys = [], []
        for i, (d, draw) in enumerate(zip(dss, draws, strict=True)):
            idx = draw.order[sl]
            x, y = d.train_x[idx], d.train_y[idx]
            x = augment.crop_flip(x, draw.dy[sl], draw.dx[sl], draw.flip[sl], hp.crop_padding)
            if batch_fns[i] is not None:
                x, y = batch_fns[i](x, y, it)
            xs.append(x)
            ys.append(y)
        lr = hp.lr_at(it, n_train)
        if lr != current_lr:
            for g in optimizer.param_groups:
                g["lr"] = lr
            current_lr = lr

        out = group.logits(xs, normalise)  # (N, B, classes)
        y = torch.stack(ys)
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        losses = per.view(n, -1).mean(1)  # each model's mean loss; their sum trains all
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        masked_step(optimizer, mparams, mmasks)
        loss_acc += losses.detach().float()
        it += 1
        for mt in metrics:
            mt.images += y.shape[1]
        if on_step is not None:
            on_step(it)

        if it in snapshot_at:
            snapshot()
        if it % log_every == 0 or it == stop or it in eval_at:
            means = (loss_acc / (it - last_log_it)).tolist()  # host sync
            bad = [i for i, v in enumerate(means) if not math.isfinite(v)]
            if bad:
                raise NonFiniteLoss(
                    f"training loss became non-finite for runs {bad} (seeds "
                    f"{[seeds[i] for i in bad]}) between iterations {last_log_it} and {it}"
                )
            now = time.perf_counter()
            for mt, v in zip(metrics, means, strict=True):
                mt.train_iteration.append(it)
                mt.train_loss.append(v)
                mt.train_seconds += (now - t0) / n
            loss_acc.zero_()
            last_log_it = it
            if it in eval_at:
                run_eval()
            t0 = time.perf_counter()

    with torch.no_grad():
        for i, m in enumerate(models):
            m.load_state_dict(group.state_dict(i))
    return GroupResult(metrics, snapshots, total, ipe)
