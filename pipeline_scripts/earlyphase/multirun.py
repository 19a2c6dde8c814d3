"""Batches of models: the N >= 1 runs one training job trains together.

``train.train_runs`` -- the one training loop -- trains a *batch* of runs of one network shape.
A batch presents N models through one interface (``logits``, ``parameters``, ``masked``,
``state_dict(i)``, ``load``, ``compile``); three kinds:

``Single`` (N = 1)
    The plain model, channels_last: exactly the operations of a one-run job (bitwise the results
    it always had), and the only kind that carries telemetry.
``grouped`` (N > 1, default)
    One *wide* network: every ``Conv2d(c_in, c_out, groups=g)`` becomes ``Conv2d(N c_in, N c_out,
    groups=N g)``, every ``BatchNorm2d(C)`` a ``BatchNorm2d(N C)``, every ``Linear`` a block-diagonal
    ``GroupedLinear``. Channels are model-major (model i owns channels ``[i C, (i+1) C)``), so the
    unchanged ``forward`` of the network computes all N models at once and BatchNorm's per-channel
    statistics -- batch and running -- are per model by construction. Parameter names are the
    narrow network's, so masks and ``masked_parameters`` work unchanged. Runs channels_last.
``vmap`` (N > 1)
    ``torch.func.stack_module_state`` + ``torch.func.functional_call`` under ``torch.vmap``. The
    BatchNorm buffers are stacked and vmapped too (in_dims 0), so each model's running statistics
    are updated in place in its own slice -- not the documented workarounds
    (``track_running_stats=False`` / ``replace_all_batch_norm_modules_``), which drop them.

Each model keeps its own data order and augmentation, mask, weights, optimizer state and BatchNorm
statistics; the per-run losses are summed, so each model's gradient is exactly the gradient of its
own mean loss and the (elementwise) SGD update the one a separate run would make. Grouped and
vmapped runs match separately trained runs to float tolerance over the first steps (tests/unit/
test_multirun.py; the kernels differ, so not bit for bit, and over a whole schedule those tiny
differences grow as between any two devices: compare full runs by accuracy, not weights).

Throughput (``python -m pipeline_scripts.tools.bench --multirun resnet20``; docs/performance.md).
On the 2-core CPU neither N > 1 method beats N runs one after another: ResNet-20 at batch 128
already keeps both cores busy in large oneDNN kernels, and a grouped convolution (or vmap's
batching rule, which also becomes a grouped convolution, in NCHW) runs at a lower FLOP rate than
N plain ones (grouped 0.46-0.82x, vmap 0.31-0.56x for N = 2..8, measured). On a GPU one
small-network run (ResNet-20/56 at batch 128) leaves most of the device idle -- each of its ~200
kernels per step is too small to fill the SMs and the step is launch-bound -- and N runs per job
make the same number of launches with N times the work each. ``runtime.runs_per_job`` sets N per
network; ``python -m pipeline_scripts.tools.bench --multirun`` measures where it stops paying.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import augment, layout
from . import device as devices
from .hparams import TrainingHparams

METHODS = ("grouped", "vmap")  # how N > 1 runs are batched (runtime.multirun_method)


def like(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a tensor of ``param``'s dtype, device *and strides*: ``_foreach_mul_`` takes
    its one-kernel fast path only when every pair has equal strides, and the parameters are
    channels_last (layout.py), so a contiguous mask would cost one kernel per tensor."""
    out = torch.empty_like(param)  # preserves the strides of a dense parameter
    out.copy_(mask)
    return out


def masked_parameters(model: nn.Module, mask: dict | None):
    """(params, masks) lists for the masked tensors, masks as ``like`` their parameters."""
    if not mask:
        return [], []
    named = dict(model.named_parameters())
    unknown = sorted(set(mask) - set(named))
    if unknown:
        raise ValueError(f"mask names parameters the model does not have: {unknown[:5]}")
    return [named[k] for k in mask], [like(named[k], mask[k]) for k in mask]


def _compiled(module, mode: str | None):
    """``torch.compile`` of a module or function, as every training step compiles."""
    # dynamic=False: the partial last batch of an epoch gets a graph of its own instead of turning
    # every graph dynamic.
    devices.pin_cpu_vector_isa()
    return torch.compile(module, mode=mode, dynamic=False)


# ----------------------------------------------------------------------------------------------
# Single: one run, the plain model


class Single:
    """One model as a batch of one: the plain network, channels_last."""

    method = "single"
    n = 1

    def __init__(self, models: Sequence[nn.Module], dev: torch.device):
        if len(models) != 1:
            raise ValueError(f"Single holds one model, not {len(models)}")
        self.model = layout.apply(models[0], dev)
        self.forward = self.model

    def compile(self, mode: str | None = None) -> None:
        self.forward = _compiled(self.model, mode)

    def load(self, states: Sequence[dict]) -> None:
        self.model.load_state_dict(states[0])

    def state_dict(self, i: int = 0) -> dict:
        return self.model.state_dict()

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def grad(self, name: str, i: int = 0) -> torch.Tensor:
        return dict(self.model.named_parameters())[name].grad

    def wide_mask(self, masks: Sequence[dict | None]) -> dict | None:
        return masks[0]

    def masked(self, mask: dict | None):
        return masked_parameters(self.model, mask)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    @property
    def module(self) -> nn.Module:
        """The one module holding every run's parameters and buffers."""
        return self.model

    def logits(
        self, xs: Sequence[torch.Tensor], normalise, step: bool = False, call=None
    ) -> torch.Tensor:
        """xs: one uint8 batch (B, C, H, W) in a list -> logits (1, B, classes); ``step``: the
        training step's (compiled, when compiled) forward, else the eager model; ``call(module,
        x)`` runs the module instead (``wholestep``: with the state it traces)."""
        x = normalise(xs[0])
        if call is not None:
            return call(self.model, x).unsqueeze(0)
        return (self.forward if step else self.model)(x).unsqueeze(0)

    def normaliser(self, hp: TrainingHparams, dev) -> augment.Normalise:
        return augment.Normalise(hp.mean, hp.std, dev)

    def write_back(self, models: Sequence[nn.Module]) -> None:
        pass  # trained in place


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
    if isinstance(m, nn.Conv2d):  # layout.StridedBySlicing too: the wide net is routed anew
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
        self.net = layout.apply(widen(self.template, self.n).to_empty(device=dev), dev)
        self._nbt_start: dict[str, list[int]] = {}
        self.load([m.state_dict() for m in models])
        self.forward = self.net

    def compile(self, mode: str | None = None) -> None:
        self.forward = _compiled(self.net, mode)

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each model's trained state back into the models the batch was made from."""
        with torch.no_grad():
            for i, m in enumerate(models):
                m.load_state_dict(self.state_dict(i))

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

    @property
    def module(self) -> nn.Module:
        return self.net

    def logits(
        self, xs: Sequence[torch.Tensor], normalise, step: bool = False, call=None
    ) -> torch.Tensor:
        """xs: N uint8 batches (B, C, H, W) -> logits (N, B, classes); ``step``, ``call`` as
        Single's."""
        b, c, h, w = xs[0].shape
        x = normalise(torch.stack(xs, dim=1).view(b, self.n * c, h, w))
        out = call(self.net, x) if call is not None else (self.forward if step else self.net)(x)
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
        layout.route(self.base, dev)
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

        self._eager = self._forward = torch.vmap(call, in_dims=(0, 0, 0))

    def compile(self, mode: str | None = None) -> None:
        self._forward = _compiled(self._forward, mode)

    def load(self, states: Sequence[dict]) -> None:
        with torch.no_grad():
            for store in (self.params, self.buffers):
                for k, v in store.items():
                    v.copy_(torch.stack([s[k].to(v.device) for s in states]))

    def write_back(self, models: Sequence[nn.Module]) -> None:
        with torch.no_grad():
            for i, m in enumerate(models):
                m.load_state_dict(self.state_dict(i))

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
        return [self.params[k] for k in names], [like(self.params[k], mask[k]) for k in names]

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def logits(self, xs: Sequence[torch.Tensor], normalise, step: bool = False) -> torch.Tensor:
        x = torch.stack([normalise(x) for x in xs])  # (N, B, C, H, W)
        return (self._forward if step else self._eager)(self.params, self.buffers, x)

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
    """The batch for ``models``: ``Single`` for one model, else the ``method`` (METHODS)."""
    if len(models) == 1:
        return Single(models, dev)
    if method == "grouped":
        return Grouped(models, dev)
    if method == "vmap":
        return Vmapped(models, dev)
    raise ValueError(f"unknown multirun method {method!r}; known: {METHODS}")
