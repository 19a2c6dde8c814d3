"""Training-throughput benchmark: our loop against a standard PyTorch loop.

Run::

    python -m pipeline_scripts.tools.bench [--data FILE] [--networks ...] [--threads N]
                                                [--out bench/out/bench.json] [--quick]

What it measures, on whatever device ``device.select("auto")`` finds, with ``--threads`` intra-op
threads (``device.configure``, as every job does):

* **ours**: steady-state training images/s of ``train.train`` itself -- the function every job
  calls -- so the numbers include everything the real loop does per step (uint8 gather,
  ``augment.crop_flip``, ``augment.Normalise``, channels_last model, foreach SGD, mask
  ``_foreach_mul_``, the periodic loss sync). A timing hook passed as train's ``on_step`` reads
  the clock after every step and stops the run (by raising) once enough windows are timed, so
  nothing is written and no evaluation runs. Median of >= 5 timed windows after a warm-up.
* a **masked** copy of one network (default resnet20) under an 80%-sparse global-magnitude mask
  (``prune.global_magnitude``): what every IMP level, perturbation and sparse branch runs.
* **reference**: the same network trained the standard way, as the paper's framework does -- a
  torchvision ``VisionDataset`` that turns each uint8 image into a PIL image (as
  ``torchvision.datasets.CIFAR10`` does), ``Compose([RandomCrop(32, padding=4),
  RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])``, a ``DataLoader`` (shuffle,
  batch 128, ``drop_last=False``) and a plain ``SGD`` step on an NCHW model. ``num_workers=0``:
  on a 2-core machine a loader worker process competes with the two compute threads for the same
  two cores (a 2-thread job slows 4-9x when another process takes a core), while loading
  is only ~10% of a step; with a GPU or more cores a standard loop would use workers.
  For networks that also have a reference, ours and the reference alternate in rounds, so both see
  the same background load and their ratio is meaningful on a shared machine.
* the dense float32 ``torch.mm`` rate (the machine's practical FLOP peak) and, per network, the
  achieved training FLOP rate = forward FLOPs per image (``torch.utils.flop_counter``) x 3 x img/s.
* evaluation images/s of ``train.evaluate`` (inference mode, channels_last) at several batch sizes.
* ``torch.compile`` (default mode) on one network: compile seconds, steady img/s against eager and
  the break-even number of iterations (compile seconds / seconds saved per iteration).

It asserts nothing about speed. ``--quick`` shrinks every window and the synthetic data for the
smoke test. Results go to stdout (a table) and ``--out`` (JSON; ``cost.py`` reads it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline_scripts.earlyphase import (
    augment,
    data,
    device,
    layout,
    models,
    multirun,
    prune,
    rng,
    train,
)
from pipeline_scripts.earlyphase.hparams import TrainingHparams

FORMAT = "earlyphase-bench/1"
NETWORKS = models.PAPER_NETWORKS
BATCH_SIZE = {"vgg13": 64}  # Table A1 (config.yaml training.per_network); 128 otherwise
REFERENCE = ("resnet20", "resnet56", "vgg13")  # the big nets' reference costs minutes here
SPARSITY = 0.8  # fraction of prunable weights removed in the masked benchmark (20% remain)
EVAL_BATCHES = (100, 250, 500, 1000)


class _Enough(Exception):
    """Raised by the timing hook inside train.train once every window is timed."""


@dataclass(frozen=True)
class Plan:
    """How long to time one loop: warm-up, then ``windows`` windows of about ``window_s``."""

    warmup_steps: int = 2  # steps before timing starts (allocator, oneDNN primitive caches)
    warmup_s: float = 1.5  # ... and at least this long
    window_s: float = 2.0  # target window length; a window is >= 1 whole step
    windows: int = 5  # timed windows (the median is reported)
    max_other_cores: float = 0.25  # a window during which other processes (or the hypervisor)
    # used more CPU than this is "contended": not counted, timed again (up to `tries` x windows)
    tries: int = 3

    def scaled(self, quick: bool) -> Plan:
        return (
            dataclasses.replace(
                self,
                warmup_steps=1,
                warmup_s=0.0,
                window_s=0.05,
                windows=3,
                max_other_cores=math.inf,
            )
            if quick
            else self
        )


def _busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy (user..softirq, plus steal) since boot; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


class Monitor:
    """How many cores other processes (and hypervisor steal) used while we were timing.

    A 2-thread job on a 2-core machine slows 4-9x when anything else takes a core, so a window
    that overlapped other work measures the neighbours, not the loop. ``others`` is
    (busy CPU seconds of the whole machine - this process's CPU seconds) / wall seconds.
    """

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), _busy_seconds(), time.process_time()

    def others(self) -> float:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return 0.0
        wall = max(time.perf_counter() - self.t, 1e-9)
        return max(0.0, (busy - self.busy) - (time.process_time() - self.own)) / wall


@dataclass
class Timing:
    windows: list  # images/s of each clean window (all windows if too few were clean)
    step_s: list  # every step's wall seconds, warm-up included
    window_steps: int
    contended: list = dataclasses.field(default_factory=list)  # images/s of contended windows
    others: list = dataclasses.field(default_factory=list)  # other processes' cores, per window

    @property
    def median(self) -> float:
        return statistics.median(self.windows)

    def to_dict(self) -> dict:
        return {
            "img_s": self.median,
            "windows_img_s": [round(w, 2) for w in self.windows],
            "contended_windows_img_s": [round(w, 2) for w in self.contended],
            "other_cores": [round(o, 2) for o in self.others],
            "window_steps": self.window_steps,
            "first_step_s": self.step_s[0] if self.step_s else None,
        }


class StepClock:
    """Reads the clock after every training step and stops the loop when the plan is done.

    ``on_step(it)`` is ``train.train_runs``' hook: it runs after step ``it`` and before the next
    step's forward pass.
    """

    def __init__(
        self,
        plan: Plan,
        n_train: int,
        batch_size: int,
        sync: Callable = lambda: None,
        models: int = 1,
    ):
        self.plan, self.n, self.b, self.sync, self.models = plan, n_train, batch_size, sync, models
        self.ipe = math.ceil(n_train / batch_size)
        self.times: list[float] = []
        self.images: list[int] = []  # images of step i (1-based index i-1)
        self.window_steps = 0
        self.window_start = None
        self.windows: list[float] = []
        self.contended: list[float] = []
        self.others: list[float] = []
        self.monitor = Monitor()

    def on_step(self, it: int) -> None:
        self.sync()
        now = time.perf_counter()
        if it > 0:
            j = (it - 1) % self.ipe
            self.images.append(self.models * min(self.b, self.n - j * self.b))
        self.times.append(now)
        if self.window_start is None:
            warm = it >= self.plan.warmup_steps and now - self.times[0] >= self.plan.warmup_s
            if it == 0 or not warm:
                return
            steps = np.diff(self.times[1:]) if len(self.times) > 2 else np.diff(self.times)
            step_s = float(np.median(steps))  # first step excluded when there are others
            self.window_steps = max(1, round(self.plan.window_s / max(step_s, 1e-9)))
            self.window_start = it
            self.monitor.start()
            return
        if it - self.window_start == self.window_steps:
            t0 = self.times[self.window_start]
            rate = sum(self.images[self.window_start : it]) / (now - t0)
            others = self.monitor.others()
            self.others.append(others)
            (self.windows if others <= self.plan.max_other_cores else self.contended).append(rate)
            self.window_start = it
            tried = len(self.windows) + len(self.contended)
            if (
                len(self.windows) == self.plan.windows
                or tried >= self.plan.tries * self.plan.windows
            ):
                raise _Enough
            self.sync()
            self.monitor.start()

    def result(self) -> Timing:
        clean = self.windows or self.contended  # nothing clean: report what there is, flagged
        return Timing(
            list(clean),
            list(np.diff(self.times)),
            self.window_steps,
            list(self.contended),
            list(self.others),
        )


def _sync_for(dev: torch.device) -> Callable:
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


def _hparams(net: str, batch_size: int | None) -> TrainingHparams:
    b = batch_size or BATCH_SIZE.get(net, 128)
    return TrainingHparams(batch_size=b, epochs=10_000, milestones=())


def _model(net: str, seed: int, dev) -> torch.nn.Module:
    m = models.build(net)
    models.initialise(m, rng.generator(seed, "init"))
    return m.to(dev)


def sparse_mask(model: torch.nn.Module, net: str, sparsity: float = SPARSITY) -> dict:
    """One-shot global magnitude mask removing ``sparsity`` of the prunable weights."""
    state = model.state_dict()
    return prune.global_magnitude(
        state, prune.full_mask(state, models.prunable(model, net)), sparsity
    )


# ----------------------------------------------------------------------------------------------
# Our loop: train.train itself, stopped by the clock


def time_ours(
    net: str,
    ds: data.Dataset,
    plan: Plan,
    *,
    batch_size: int | None = None,
    sparsity: float = 0.0,
    compile: bool = False,
    seed: int = 1,
) -> Timing:
    dev = ds.train_x.device
    hp = _hparams(net, batch_size)
    model = _model(net, seed, dev)
    mask = sparse_mask(model, net, sparsity) if sparsity else None
    opts = train.RunOptions(
        seed=seed, checkpoint_seconds=1e12, compile=compile, cuda_graphs=compile
    )
    clock = StepClock(plan, ds.train_x.shape[0], hp.batch_size, _sync_for(dev))
    train_until_stopped(model, ds, hp, opts, clock.on_step, network=net, mask=mask)
    return clock.result()


def train_until_stopped(model, ds, hp, opts, on_step, *, network: str, mask=None) -> None:
    """``train.train`` of ``model`` on ``ds`` until ``on_step`` raises ``_Enough``; the test set
    is cut to one image (no evaluation is reached) and nothing is written."""
    small = dataclasses.replace(ds, test_x=ds.test_x[:1], test_y=ds.test_y[:1])
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        try:
            train.train(
                model,
                small,
                hp,
                opts,
                workdir=workdir,
                mask=mask,
                network=network,
                log=lambda s: None,
                on_step=on_step,
            )
        except _Enough:
            pass


def time_group(
    net: str,
    ds: data.Dataset,
    n: int,
    method: str,
    plan: Plan,
    *,
    batch_size: int | None = None,
    cuda_graphs: bool = False,
    compile: bool = False,
    precision: str = "fp32",
) -> Timing:
    """images/s (all n models together) of train.train_runs with a batch of n runs."""
    dev = ds.train_x.device
    hp = _hparams(net, batch_size)
    small = dataclasses.replace(ds, test_x=ds.test_x[:1], test_y=ds.test_y[:1])
    clock = StepClock(plan, ds.train_x.shape[0], hp.batch_size, _sync_for(dev), models=n)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        batch = [
            train.Run(
                _model(net, seed, dev),
                small,
                train.RunOptions(
                    seed=seed,
                    checkpoint_seconds=1e12,
                    cuda_graphs=cuda_graphs,
                    compile=compile,
                    precision=precision,
                ),
                Path(workdir) / str(seed),
            )
            for seed in range(1, n + 1)
        ]
        try:
            train.train_runs(
                batch, hp, network=net, method=method, on_step=clock.on_step, log=lambda s: None
            )
        except _Enough:
            pass
    return clock.result()


def runs_per_job(
    net: str, ds: data.Dataset, ns, methods, plan: Plan, batch_size: int | None = None
) -> dict:
    """N runs in one job (each method) against one run at a time (train.train), interleaved."""
    out = {}
    for n in ns:
        single = time_ours(net, ds, plan, batch_size=batch_size)
        for method in methods:
            t = time_group(net, ds, n, method, plan, batch_size=batch_size)
            out[f"{method}_n{n}"] = {
                "method": method,
                "n": n,
                "img_s": t.median,
                "separate_img_s": single.median,
                "speedup": t.median / single.median,
                "windows_img_s": t.windows,
                "separate_windows_img_s": single.windows,
            }
    return out


# ----------------------------------------------------------------------------------------------
# The reference loop, written the standard way


def reference_dataset(images_nhwc: np.ndarray, labels: np.ndarray, mean, std, pad: int = 4):
    """A torchvision dataset of PIL images with the paper framework's augmentation."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import VisionDataset

    class PILImages(VisionDataset):
        """Like torchvision.datasets.CIFAR10: uint8 HWC arrays, one PIL image per __getitem__."""

        def __init__(self, images, targets, transform):
            super().__init__(root=None, transform=transform)
            self.data, self.targets = images, [int(t) for t in targets]

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.data[i])), self.targets[i]

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=pad),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    return PILImages(images_nhwc, labels, transform)


def time_reference(
    net: str,
    ds: data.Dataset,
    plan: Plan,
    *,
    batch_size: int | None = None,
    seed: int = 1,
    num_workers: int = 0,
    _dataset_cache: dict = {},  # noqa: B006 -- one PIL dataset per data set and process
) -> Timing:
    dev = ds.train_x.device
    hp = _hparams(net, batch_size)
    key = id(ds)
    if key not in _dataset_cache:
        images = ds.train_x.permute(0, 2, 3, 1).cpu().numpy()  # NCHW -> HWC arrays, as on disk
        _dataset_cache.clear()
        _dataset_cache[key] = reference_dataset(images, ds.train_y.cpu().numpy(), hp.mean, hp.std)
    dataset = _dataset_cache[key]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=hp.batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=False,
        pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    model = _model(net, seed, dev)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
    )
    clock = StepClock(plan, len(dataset), hp.batch_size, _sync_for(dev))
    it = 0
    clock.on_step(0)
    try:
        while True:
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                it += 1
                clock.on_step(it)
    except _Enough:
        pass
    return clock.result()


# ----------------------------------------------------------------------------------------------
# Peak, FLOPs, evaluation


def _clean_windows(measure: Callable[[], float], plan: Plan, windows: int) -> Timing:
    """Call ``measure`` (returns a rate) until ``windows`` uncontended results (or give up)."""
    clean, contended, others = [], [], []
    monitor = Monitor()
    while len(clean) < windows and len(clean) + len(contended) < plan.tries * windows:
        monitor.start()
        rate = measure()
        others.append(monitor.others())
        (clean if others[-1] <= plan.max_other_cores else contended).append(rate)
    return Timing(clean or contended, [], 0, contended, others)


def matmul_peak(dev, plan: Plan, n: int = 2048, windows: int = 7, reps: int = 3) -> dict:
    """Median float32 GFLOP/s of ``torch.mm`` on n x n matrices (2 n^3 FLOPs each)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev)
    b = torch.randn(n, n, generator=g).to(dev)
    sync = _sync_for(dev)
    out = torch.empty(n, n, device=dev)
    for _ in range(2):
        torch.mm(a, b, out=out)

    def measure() -> float:
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync()
        return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9

    t = _clean_windows(measure, plan, windows)
    return {
        "gflops": t.median,
        "windows_gflops": t.windows,
        "n": n,
        "contended_windows_gflops": t.contended,
        "other_cores": t.others,
    }


def forward_flops(net: str, dev, batch_size: int) -> float:
    """Forward FLOPs per image (conv/linear/matmul; FlopCounterMode on one training batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = layout.apply(_model(net, 0, dev), dev)
    x = torch.randn(batch_size, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / batch_size


def time_eval(net: str, ds: data.Dataset, batch_size: int, plan: Plan, seed: int = 1) -> dict:
    """images/s of train.evaluate (inference mode, channels_last) over test-set windows."""
    dev = ds.test_x.device
    hp = TrainingHparams()
    model = layout.apply(_model(net, seed, dev), dev)
    normalise = augment.Normalise(hp.mean, hp.std, dev)
    sync = _sync_for(dev)
    n_test = ds.test_x.shape[0]
    reps = math.ceil(batch_size / n_test)  # tiny (synthetic) test sets are tiled
    test_x = ds.test_x.repeat(reps, 1, 1, 1) if reps > 1 else ds.test_x
    test_y = ds.test_y.repeat(reps) if reps > 1 else ds.test_y

    def run(m: int) -> float:
        sync()
        t = time.perf_counter()
        train.evaluate(model, test_x[:m], test_y[:m], normalise, batch_size)
        sync()
        return time.perf_counter() - t

    run(batch_size)  # warm-up: first call builds the primitives for this shape
    per_batch = min(run(batch_size) for _ in range(1 if plan.windows < 5 else 2))
    batches = max(1, min(round(plan.window_s / per_batch), test_x.shape[0] // batch_size))
    m = batches * batch_size
    t = _clean_windows(lambda: m / run(m), plan, plan.windows)
    return {
        "img_s": t.median,
        "windows_img_s": t.windows,
        "images": m,
        "contended_windows_img_s": t.contended,
        "other_cores": t.others,
    }


def fill_ablation(net: str, ds: data.Dataset, plan: Plan, rounds: int) -> dict:
    """Our loop with deterministic mode's fill of uninitialised memory on (PyTorch's default
    with deterministic algorithms) and off (device.configure), alternated in rounds."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(rounds):
            for fill in (True, False):
                torch.utils.deterministic.fill_uninitialized_memory = fill
                rates[fill].append(time_ours(net, ds, plan).median)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    ratios = [off / on for on, off in zip(rates[True], rates[False], strict=True)]
    return {
        "network": net,
        "fill_on_img_s": statistics.median(rates[True]),
        "fill_off_img_s": statistics.median(rates[False]),
        "off_over_on": statistics.median(ratios),
        "per_round": ratios,
    }


# ----------------------------------------------------------------------------------------------
# Layouts and kernels per layer shape (layout.py's rule)

LAYER_VARIANTS = (  # (name, memory format, oneDNN on)
    ("channels_last", torch.channels_last, True),  # the rule's choice: sliced where it routes
    ("nchw", torch.contiguous_format, True),
    ("native", torch.channels_last, False),  # ATen's own kernels, oneDNN switched off
)


def conv_shapes(net: str, batch_size: int) -> list[dict]:
    """The distinct convolutions of ``net`` on 32x32 inputs: channels, kernel, stride, input
    size, and how many layers share the shape."""
    model = models.build(net)
    seen: dict[tuple, dict] = {}

    def hook(m, args, out):
        key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], args[0].shape[-1])
        entry = seen.setdefault(key, {"layers": 0, "rule": "channels_last"})
        entry["layers"] += 1
        if layout.slice_on_cpu(m):
            entry["rule"] = "channels_last, sliced"

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return [
        {
            "in": k[0],
            "out": k[1],
            "kernel": k[2],
            "stride": k[3],
            "size": k[4],
            "batch": batch_size,
            **v,
        }
        for k, v in seen.items()
    ]


def _conv_step(shape: dict, fmt, onednn: bool) -> Callable[[], float]:
    """One forward + backward of one convolution shape in one layout; returns its seconds."""
    conv = torch.nn.Conv2d(
        shape["in"],
        shape["out"],
        shape["kernel"],
        shape["stride"],
        shape["kernel"] // 2,
        bias=False,
    ).to(memory_format=fmt)
    if fmt == torch.contiguous_format:  # a 1x1 kernel keeps channels_last strides otherwise
        conv.weight.data = conv.weight.data.clone(memory_format=fmt)
    elif onednn:  # channels_last as the rule runs it (sliced where layout.py routes)
        layout.route(conv, "cpu")
    x = torch.randn(shape["batch"], shape["in"], shape["size"], shape["size"])
    x = x.contiguous(memory_format=fmt).requires_grad_(shape["in"] > 3)
    grad = torch.randn_like(conv(x))

    def step() -> float:
        t = time.perf_counter()
        with warnings.catch_warnings():  # the flags' TF32 setter warns on non-Intel-GPU builds
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=onednn):
                conv(x).backward(grad)
        return time.perf_counter() - t

    return step


def layer_layouts(net: str, plan: Plan, rounds: int, batch_size: int | None = None) -> dict:
    """Per conv shape of ``net``: forward + backward seconds in each LAYER_VARIANT, alternated in
    rounds (median), GFLOP/s, the fastest variant and the rule's choice; and the whole network's
    training step channels_last vs NCHW, alternated the same way."""
    b = batch_size or BATCH_SIZE.get(net, 128)
    rows = []
    for shape in conv_shapes(net, b):
        steps = {name: _conv_step(shape, fmt, dnn) for name, fmt, dnn in LAYER_VARIANTS}
        times: dict[str, list[float]] = {name: [] for name in steps}
        reps = 1 if plan.window_s < 1 else 3
        for f in steps.values():
            f()  # primitive creation
        for _ in range(rounds):
            for name, f in steps.items():
                times[name].append(statistics.median(f() for _ in range(reps)))
        passes = 3 if shape["in"] > 3 else 2  # the stem has no input gradient
        flops = 2 * b * shape["out"] * shape["in"] * shape["kernel"] ** 2 * passes
        flops *= (shape["size"] // shape["stride"]) ** 2
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                **shape,
                "ms": ms,
                "gflops": {k: flops / v / 1e6 for k, v in ms.items()},
                "fastest": min(ms, key=ms.get),
            }
        )
    return {
        "network": net,
        "batch_size": b,
        "shapes": rows,
        "network_step": _network_layouts(net, b, rounds),
    }


def _network_layouts(net: str, b: int, rounds: int) -> dict:
    """The training step (forward, backward, SGD) of the whole network, channels_last (the
    rule) vs plain NCHW, alternated in rounds; img/s medians and their per-round ratio."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 32, 32, generator=g)
    y = torch.randint(10, (b,), generator=g)
    steps = {}
    for name in ("channels_last", "nchw"):
        model = _model(net, 1, torch.device("cpu"))
        if name == "channels_last":
            layout.apply(model, "cpu")
        xin = x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x
        opt = train.sgd(model.parameters(), TrainingHparams())

        def step(model=model, xin=xin, opt=opt) -> float:
            t = time.perf_counter()
            loss = F.cross_entropy(model(xin), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return time.perf_counter() - t

        step()
        steps[name] = step
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            rates[k].append(b / statistics.median(f() for _ in range(3)))
    ratios = [a / c for a, c in zip(rates["channels_last"], rates["nchw"], strict=True)]
    return {
        "img_s": {k: statistics.median(v) for k, v in rates.items()},
        "channels_last_over_nchw": statistics.median(ratios),
        "per_round": ratios,
    }


def layers_table(result: dict) -> str:
    lines = []
    for entry in result["layers"]:
        lines.append(
            f"{entry['network']} (batch {entry['batch_size']}), forward + backward per conv shape:"
        )
        lines.append(
            f"  {'in':>4} {'out':>4} {'k':>2} {'s':>2} {'size':>4} {'n':>2}  "
            + "  ".join(f"{name:>20}" for name, _, _ in LAYER_VARIANTS)
            + "  fastest        rule"
        )
        for r in entry["shapes"]:
            cells = [
                f"{r['ms'][n]:8.2f} ms {r['gflops'][n]:5.0f} GF/s" for n, _, _ in LAYER_VARIANTS
            ]
            lines.append(
                f"  {r['in']:>4} {r['out']:>4} {r['kernel']:>2} {r['stride']:>2} {r['size']:>4} "
                f"{r['layers']:>2}  " + "  ".join(cells) + f"  {r['fastest']:<14} {r['rule']}"
            )
        ns = entry["network_step"]
        lines.append(
            f"  whole network: channels_last {ns['img_s']['channels_last']:.0f} img/s, NCHW "
            f"{ns['img_s']['nchw']:.0f} img/s: x{ns['channels_last_over_nchw']:.2f} (per-round median)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Driver


def _machine(dev, threads: int) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info = {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return info


def _synthetic(tmp: Path, quick: bool, device_: torch.device) -> data.Dataset:
    n_train, n_test = (256, 128) if quick else (10_000, 2_000)
    path = tmp / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": n_train, "n_test": n_test}, seed=0)
    return data.load(path, device_)


def wait_quiet(max_other_cores: float, timeout_s: float, log: Callable[[str], None]) -> float:
    """Wait (up to ``timeout_s``) until other processes use at most ``max_other_cores`` over a
    second; returns the last reading."""
    start = time.monotonic()
    last_log = -math.inf
    while True:
        m = Monitor()
        time.sleep(1.0)
        others = m.others()
        waited = time.monotonic() - start
        if others <= max_other_cores or waited >= timeout_s:
            if waited > 2:
                log(f"waited {waited:.0f} s for a quiet machine (others now {others:.1f} cores)")
            return others
        if waited - last_log >= 60:
            log(f"waiting for a quiet machine: other processes use {others:.1f} cores")
            last_log = waited
        time.sleep(min(5.0, max(0.0, timeout_s - waited)))


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """The whole benchmark (module docstring): the matmul peak, every network's training rate
    (``_time_network``), the optional parts (``_optional_parts``), the peak again (pooled)."""
    device.configure(args.threads)
    dev = device.select(args.device)
    plan = Plan(max_other_cores=args.max_other_cores).scaled(args.quick)
    if args.wait_quiet > 0:
        wait_quiet(plan.max_other_cores, args.wait_quiet, log)
    result: dict = {
        "format": FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(dev, torch.get_num_threads()),
        "quick": bool(args.quick),
        "plan": dataclasses.asdict(plan),
    }
    ds, result["data"] = _load_data(args, dev)
    log(
        f"benchmark on {result['machine']['device']} ({result['machine']['cpu']}), "
        f"{torch.get_num_threads()} thread(s), {result['data']['n_train']} training images"
    )

    t0 = time.perf_counter()
    peak = matmul_peak(dev, plan, n=512 if args.quick else 2048, windows=3 if args.quick else 7)
    result["matmul"] = peak
    log(f"dense float32 matmul: {peak['gflops']:.1f} GFLOP/s (median)")

    entries = [(net, 0.0) for net in args.networks]
    if args.sparse and args.sparse != "none":
        entries.append((args.sparse, SPARSITY))
    result["networks"] = {}
    for net, sparsity in entries:
        key = net if not sparsity else f"{net}_sparse{round(100 * sparsity)}"
        result["networks"][key] = entry = _time_network(net, sparsity, args, ds, dev, plan, peak)
        log(_row(key, entry))

    _optional_parts(result, args, ds, plan, log)
    _pool_peak(result, matmul_peak(dev, plan, n=peak["n"], windows=3 if args.quick else 7))
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = time.perf_counter() - t0
    log("")
    log(table(result))
    return result


def _load_data(args: argparse.Namespace, dev: torch.device) -> tuple[data.Dataset, dict]:
    """``--data``'s file, or synthetic images; and what the result records about them."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        if args.data:
            ds = data.load(args.data, dev)
            return ds, {"file": str(args.data), **_data_info(ds)}
        ds = _synthetic(Path(tmp), args.quick, dev)
        return ds, {"file": None, "synthetic": True, **_data_info(ds)}


def _time_network(
    net: str, sparsity: float, args: argparse.Namespace, ds: data.Dataset, dev, plan: Plan, peak
) -> dict:
    """One network's entry: our loop's img/s (masked when ``sparsity``), alternating in rounds
    with what it is compared to (the reference loop, or for the masked net the dense one), its
    FLOP rate, and the evaluation rate."""
    b = args.batch_size or BATCH_SIZE.get(net, 128)
    flops = forward_flops(net, dev, b)
    with_ref = not sparsity and (args.reference == ["all"] or net in args.reference)
    rounds = 1 if args.quick or not (with_ref or sparsity) else args.rounds
    sub = dataclasses.replace(plan, windows=max(1, math.ceil(plan.windows / rounds)))
    if rounds == 1:
        sub = plan
    ours, ref, dense = [], [], []
    for _ in range(rounds):
        ours.append(time_ours(net, ds, sub, batch_size=b, sparsity=sparsity))
        if with_ref:
            ref.append(time_reference(net, ds, sub, batch_size=args.reference_batch_size))
        if sparsity:
            dense.append(time_ours(net, ds, sub, batch_size=b))
    entry = {
        "network": net,
        "batch_size": b,
        "sparsity": sparsity,
        "forward_flops_per_image": flops,
        "ours": _merge(ours).to_dict(),
    }
    ips = entry["ours"]["img_s"]
    entry["train_gflops"] = 3 * flops * ips / 1e9
    entry["fraction_of_matmul_peak"] = entry["train_gflops"] / peak["gflops"]
    if ref:
        entry["reference"] = _merge(ref).to_dict()
        entry["reference"]["batch_size"] = args.reference_batch_size or b
        entry["ratio_to_reference"] = ips / entry["reference"]["img_s"]
    if dense:
        entry["dense"] = _merge(dense).to_dict()
        entry["ratio_to_dense"] = ips / entry["dense"]["img_s"]
    if not sparsity:
        entry["eval"] = {str(args.eval_batch_size): time_eval(net, ds, args.eval_batch_size, plan)}
    return entry


def _optional_parts(result: dict, args: argparse.Namespace, ds, plan: Plan, log) -> None:
    """The parts a flag switches off ('none'): the eval sweep, torch.compile, runs per job, the
    memory-fill ablation and the conv layouts; each adds its section to ``result``."""
    if args.eval_sweep and args.eval_sweep != "none":
        sweep = {str(bs): time_eval(args.eval_sweep, ds, bs, plan) for bs in args.eval_batches}
        result["eval_sweep"] = {"network": args.eval_sweep, "batch_sizes": sweep}
        log(
            f"eval {args.eval_sweep}: "
            + ", ".join(f"batch {bs} {v['img_s']:.0f} img/s" for bs, v in sweep.items())
        )
    if args.compile and args.compile != "none":
        rounds = 1 if args.quick else args.rounds
        result["compile"] = c = _compile(args.compile, ds, plan, args.batch_size, rounds)
        log(
            f"torch.compile {args.compile}: {c['compile_s']:.1f} s to compile, "
            f"{c['compiled_img_s']:.0f} vs eager {c['eager_img_s']:.0f} img/s "
            f"(x{c['speedup']:.2f}); break-even after {c['break_even_iterations']} iterations"
        )
    if args.multirun and args.multirun != "none":
        sub = dataclasses.replace(plan, windows=min(plan.windows, 3))
        groups = runs_per_job(
            args.multirun, ds, args.multirun_n, args.multirun_methods, sub, args.batch_size
        )
        result["runs_per_job"] = {"network": args.multirun, "groups": groups}
        for k, v in groups.items():
            log(
                f"{args.multirun} {k}: {v['img_s']:.0f} img/s together vs {v['separate_img_s']:.0f}"
                f" one run at a time: x{v['speedup']:.2f}"
            )
    if args.fill_ablation and args.fill_ablation != "none":
        rounds = 1 if args.quick else max(args.rounds, 5)
        result["fill_ablation"] = f = fill_ablation(args.fill_ablation, ds, plan, rounds)
        log(
            f"{args.fill_ablation}: deterministic mode's fill of new memory on "
            f"{f['fill_on_img_s']:.0f} img/s, off (device.configure) {f['fill_off_img_s']:.0f} "
            f"img/s: x{f['off_over_on']:.3f} (per-round median of {rounds})"
        )
    if args.layers and args.layers != ["none"]:
        rounds = 1 if args.quick else max(args.rounds, 5)
        result["layers"] = [
            layer_layouts(net, plan, rounds, args.batch_size) for net in args.layers
        ]
        log(layers_table(result))


def _pool_peak(result: dict, end: dict) -> None:
    """The matmul peak measured again at the end, pooled with the first; every network's
    fraction of the peak against the pooled one."""
    peak = result["matmul"]
    pooled = peak["windows_gflops"] + end["windows_gflops"]
    peak.update(
        start_gflops=peak["gflops"],
        end_gflops=end["gflops"],
        windows_gflops=pooled,
        gflops=statistics.median(pooled),
    )
    peak["contended_windows_gflops"] += end["contended_windows_gflops"]
    for e in result["networks"].values():
        e["fraction_of_matmul_peak"] = e["train_gflops"] / peak["gflops"]


def _data_info(ds: data.Dataset) -> dict:
    return {"n_train": int(ds.train_x.shape[0]), "n_test": int(ds.test_x.shape[0])}


def _merge(timings: list[Timing]) -> Timing:
    return Timing(
        [w for t in timings for w in t.windows],
        [s for t in timings for s in t.step_s],
        timings[0].window_steps,
        [w for t in timings for w in t.contended],
        [o for t in timings for o in t.others],
    )


def _compile(net: str, ds: data.Dataset, plan: Plan, batch_size: int | None, rounds: int) -> dict:
    """torch.compile against eager in alternating rounds (eager, compiled, eager, compiled, ...),
    so both see the same machine. Compile seconds = the first compiled run's warm-up time beyond
    its steady-state steps, minus the same excess of the eager run before it."""
    torch._dynamo.reset()
    b = batch_size or BATCH_SIZE.get(net, 128)
    warm = dataclasses.replace(
        plan,
        warmup_steps=max(plan.warmup_steps, 3),
        windows=max(1, math.ceil(plan.windows / rounds)),
    )
    eager, compiled = [], []
    for _ in range(rounds):
        eager.append(time_ours(net, ds, warm, batch_size=b))
        compiled.append(time_ours(net, ds, warm, batch_size=b, compile=True))
    torch._dynamo.reset()

    def excess(t: Timing) -> float:
        steady = b / t.median  # seconds per steady-state step
        first = t.step_s[: warm.warmup_steps]
        return sum(first) - steady * len(first)

    compile_s = excess(compiled[0]) - excess(eager[0])
    eager_t, compiled_t = _merge(eager), _merge(compiled)
    saved = b / eager_t.median - b / compiled_t.median  # seconds saved per iteration
    return {
        "network": net,
        "mode": "default",
        "compile_s": compile_s,
        "eager_img_s": eager_t.median,
        "compiled_img_s": compiled_t.median,
        "speedup": compiled_t.median / eager_t.median,
        "break_even_iterations": math.ceil(compile_s / saved) if saved > 0 else None,
        "eager": eager_t.to_dict(),
        "compiled": compiled_t.to_dict(),
        "first_compiled_step_s": compiled[0].step_s[0] if compiled[0].step_s else None,
    }


def table(result: dict) -> str:
    peak = result["matmul"]["gflops"]
    lines = [
        f"{'network':<20} {'batch':>5} {'img/s':>8} {'ref img/s':>9} {'ours/ref':>8} "
        f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'of peak':>7} {'eval img/s':>10}",
    ]
    for key, e in result["networks"].items():
        ref = e.get("reference")
        ev = next(iter(e.get("eval", {}).values()), None)
        ref_ips = f"{ref['img_s']:.1f}" if ref else "-"
        ratio = f"{e['ratio_to_reference']:.2f}x" if ref else "-"
        ev_ips = f"{ev['img_s']:.0f}" if ev else "-"
        lines.append(
            f"{key:<20} {e['batch_size']:>5} {e['ours']['img_s']:>8.1f} {ref_ips:>9} {ratio:>8} "
            f"{3 * e['forward_flops_per_image'] / 1e9:>9.3f} {e['train_gflops']:>8.1f} "
            f"{e['fraction_of_matmul_peak']:>7.1%} {ev_ips:>10}"
        )
    lines.append(f"matmul peak (float32 torch.mm, n={result['matmul']['n']}): {peak:.1f} GFLOP/s")
    lines.append("fraction of peak = 3 x forward FLOPs x img/s / matmul peak")
    return "\n".join(lines)


def _row(key: str, e: dict) -> str:
    s = f"{key}: ours {e['ours']['img_s']:.1f} img/s ({e['fraction_of_matmul_peak']:.1%} of peak)"
    if "reference" in e:
        s += f", reference {e['reference']['img_s']:.1f} img/s, x{e['ratio_to_reference']:.2f}"
    if "dense" in e:
        s += f", dense {e['dense']['img_s']:.1f} img/s, masked/dense x{e['ratio_to_dense']:.3f}"
    dropped = len(e["ours"]["contended_windows_img_s"]) + len(
        e.get("reference", {}).get("contended_windows_img_s", [])
    )
    if dropped:
        s += f" [{dropped} window(s) dropped: other processes were using the CPU]"
    return s


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.bench",
        description="Training throughput of our loop vs a standard DataLoader/PIL loop.",
    )
    p.add_argument("--data", help="prepared HDF5 data file (data.load); default: synthetic data")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the rules' threads: 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench/out/bench.json", help="JSON output ('' = none)")
    p.add_argument("--quick", action="store_true", help="tiny windows and data (smoke test)")
    p.add_argument("--batch-size", type=int, help="override every network's batch size")
    p.add_argument(
        "--reference",
        nargs="+",
        default=list(REFERENCE),
        help="networks that also get the reference loop ('all', or 'none')",
    )
    p.add_argument(
        "--reference-batch-size",
        type=int,
        default=None,
        help="reference loop batch size (default: the network's, 128 for most)",
    )
    p.add_argument("--rounds", type=int, default=2, help="ours/reference alternations")
    p.add_argument(
        "--max-other-cores",
        type=float,
        default=Plan.max_other_cores,
        help="drop (and re-time) windows during which other processes used more cores than this",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="first wait up to this many seconds for other processes to finish",
    )
    p.add_argument("--sparse", default="resnet20", help="network benchmarked 80%% sparse; 'none'")
    p.add_argument("--eval-batch-size", type=int, default=250, help="per-network eval batch")
    p.add_argument("--eval-sweep", default="resnet20", help="network of the eval sweep; 'none'")
    p.add_argument("--eval-batches", type=int, nargs="+", default=list(EVAL_BATCHES))
    p.add_argument("--compile", default="resnet20", help="network to torch.compile; 'none'")
    p.add_argument("--multirun", default="resnet20", help="network of the runs-per-job test")
    p.add_argument("--multirun-n", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--multirun-methods", nargs="+", default=list(multirun.METHODS))
    p.add_argument(
        "--fill-ablation",
        default="none",
        help="network timed with deterministic mode's memory fill on and off, alternating",
    )
    p.add_argument(
        "--isa",
        nargs="+",
        choices=sorted(device.ISA_ENV),
        help="run the benchmark under each instruction set (e.g. native avx2), alternating in "
        "--rounds rounds, in child processes; one JSON with a section per instruction set",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=["resnet20"],
        help="networks whose conv shapes are timed per layout and kernel ('none')",
    )
    return p.parse_args(argv)


def by_isa(argv: list[str], isas: list[str], rounds: int, log=print) -> dict:
    """The benchmark once per instruction set in one run: ``rounds`` rounds, each running a
    child benchmark (``--rounds 1``) per ISA under that ISA's caps (``device.ISA_ENV``), so the
    instruction sets alternate and see the same machine. Per ISA the windows of all rounds are
    pooled (medians, ratios and fractions of peak recomputed from them)."""
    children: dict[str, list[dict]] = {isa: [] for isa in isas}
    with tempfile.TemporaryDirectory(prefix="bench-isa-") as tmp:
        for r in range(rounds):
            for isa in isas:
                out = Path(tmp) / f"{isa}-{r}.json"
                cmd = [sys.executable, "-m", "pipeline_scripts.tools.bench", *argv]
                cmd += ["--rounds", "1", "--out", str(out)]
                log(f"round {r + 1}/{rounds}, isa={isa}")
                env = {**os.environ, **device.ISA_ENV[isa]}
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                children[isa].append(json.loads(out.read_text()))
    return {
        "format": FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": children[isas[0]][0]["machine"],
        "isa": {isa: _pool(runs) for isa, runs in children.items()},
    }


def _pool(results: list[dict]) -> dict:
    """One benchmark result from several one-round results of the same configuration."""
    out = dict(results[0])
    windows = [w for r in results for w in r["matmul"]["windows_gflops"]]
    out["matmul"] = {
        **results[0]["matmul"],
        "windows_gflops": windows,
        "gflops": statistics.median(windows),
    }
    out["rounds"] = len(results)
    out["machine"] = {
        **results[0]["machine"],
        "env": {k: os.environ.get(k) for k in device.ISA_CAPS},
    }
    out["networks"] = {}
    for key, entry in results[0]["networks"].items():
        e = dict(entry)
        for part in ("ours", "reference", "dense"):
            if part in entry:
                ws = [w for r in results for w in r["networks"][key][part]["windows_img_s"]]
                e[part] = {**entry[part], "windows_img_s": ws, "img_s": statistics.median(ws)}
        ips = e["ours"]["img_s"]
        e["train_gflops"] = 3 * e["forward_flops_per_image"] * ips / 1e9
        e["fraction_of_matmul_peak"] = e["train_gflops"] / out["matmul"]["gflops"]
        if "reference" in e:
            e["ratio_to_reference"] = ips / e["reference"]["img_s"]
            per_round = [
                r["networks"][key]["ours"]["img_s"] / r["networks"][key]["reference"]["img_s"]
                for r in results
            ]
            e["ratio_to_reference_per_round"] = per_round
        out["networks"][key] = e
    return out


def isa_table(result: dict) -> str:
    lines = [
        f"{'isa':<8} {'capability':<10}" + table(next(iter(result["isa"].values()))).splitlines()[0]
    ]
    for isa, r in result["isa"].items():
        for line in table(r).splitlines()[1:-2]:
            lines.append(f"{isa:<8} {r['machine']['cpu_capability']:<10}{line}")
        lines.append(f"{isa:<8} matmul peak {r['matmul']['gflops']:.1f} GFLOP/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.isa:
        rest, skip = [], False
        for a in argv:  # the same benchmark without --isa, --rounds and --out
            if skip and not a.startswith("--"):
                continue
            skip = a in ("--isa", "--rounds", "--out")
            if not skip:
                rest.append(a)
        result = by_isa(rest, args.isa, args.rounds)
        print(isa_table(result))
    else:
        result = run(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
