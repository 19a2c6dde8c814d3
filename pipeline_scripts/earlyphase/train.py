"""The one training loop: N >= 1 runs of one network shape, every job's dense runs, IMP levels,
perturbation branches, pre-training and stability copies.

``train_runs`` trains a batch of runs (``multirun.make``: the plain model for N = 1, one wide
grouped network or vmap for N > 1); ``train`` is its one-run form. Per step and per run: the run's
own data order and augmentation (``augment.draw_epoch`` keyed by its seed and data stream), its
batch transform (pre-training tasks), normalisation, forward, cross-entropy, SGD with momentum and
weight decay under its own mask. The per-run mean losses are summed, so each model gets exactly
the gradient of its own loss.

Fast by construction: the data set is a uint8 tensor on the device, augmentation is batched
(``augment``), the models run channels_last (``RunOptions.precision``: fp32, tf32 or bf16
autocast), masks are applied with two ``_foreach_mul_`` calls, the host synchronises only every
``log_every`` steps (to record the training loss and stop on a non-finite one) and at evaluations;
``compile`` (Inductor) and ``cuda_graphs`` (one CUDA graph a step, on a GPU) run the whole step,
and each evaluation batch, as one graph (``wholestep``); telemetry runs the eager module.

Resumable for any N: every ``checkpoint_seconds`` and on SIGTERM (SLURM pre-emption) the full state
of every run goes to the first run's ``workdir/resume.pt``; a re-run continues from there with
bit-identical results, because all randomness is keyed by (seed, purpose, epoch) rather than
carried in generator state.

``train_runs`` is the loop itself, short enough to read top to bottom. What it does at each point
is named beside it, as open_lth's training/train.py keeps evaluation, checkpointing and logging
beside its ``train``: ``_set_up`` (checks, schedule, batched models, optimizer, arithmetic) makes
a ``_Loop``, the batch's state, whose methods resume, compile, draw the batch, take the step, keep
snapshots, record a training-loss window, evaluate and save the resume state.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import augment, checkpoint, multirun, rng, wholestep
from . import device as devices
from .data import Dataset
from .hparams import TrainingHparams
from .resume import RESUME_FORMAT, fingerprint_of, resume_state, sigterm_flag
from .sgd import SGD


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """Raised after the resume state was saved in response to SIGTERM."""


@dataclass(frozen=True)
class RunOptions:
    seed: int  # replicate seed: data order and augmentation derive from it
    # Rewinding (OpenLTH's lottery/runner.py + training/train.py start_step): the absolute
    # iteration the start state stands at. The run trains steps start_iteration .. total with the
    # learning rate, data order and augmentation those steps have in a run from 0 (a fresh
    # optimizer, as the framework makes one per level); evaluations keep absolute iterations.
    start_iteration: int = 0
    # Which sample of SGD noise (data order + augmentation, augment.draw_epoch): "" = the seed's
    # own; another name = an independent sample for the same seed (instability analysis copies).
    data_stream: str = ""
    # Arithmetic (config runtime.precision, device.PRECISIONS): fp32, tf32 (CUDA only; fp32 on CPUs)
    # or bf16 autocast. Part of the resume fingerprint and recorded in the metrics.
    precision: str = "tf32"
    eval_iterations: Sequence[int] = ()  # evaluate on the test set after these many steps
    snapshot_iterations: Sequence[int] = ()  # keep the weights after these steps (rewind points)
    log_every: int = 100  # steps between training-loss records / non-finite checks (host syncs)
    eval_batch_size: int = 250  # measured fastest on a 2-core CPU; bigger on GPUs is fine
    checkpoint_seconds: float = 600.0  # wall seconds between resume-state saves
    compile: bool = False  # Inductor compiles the whole step (wholestep; the forward and
    # backward only where the step cannot be one graph)
    # CUDA graphs: the whole step captured in one CUDA graph and replayed (wholestep), for
    # launch-bound small networks on GPUs (on by default: docs/gpu.md); no effect on a CPU.
    cuda_graphs: bool = True
    batch_fn: Callable | None = None  # (x_uint8, y, iteration) -> (x_uint8, y), after crop/flip
    eval_subset: int = 0  # >0: evaluations up to eval_subset_until use a fixed random test subset
    eval_subset_until: int = -1  # last iteration evaluated on the subset (telemetry's dense points)


def options_from_runtime(runtime: dict, **per_run) -> RunOptions:
    """RunOptions from config ``runtime`` (precision, log_every, eval_batch_size,
    checkpoint_seconds, compile, cuda_graphs) plus the run's own fields; a key the config leaves
    out takes RunOptions' default, which equals the schema's (tests/unit/test_schema.py)."""
    names = {f.name for f in dataclasses.fields(RunOptions)} - set(per_run)
    return RunOptions(**per_run, **{k: v for k, v in runtime.items() if k in names})


@dataclass
class Metrics:
    train_iteration: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    eval_iteration: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)
    eval_accuracy: list = field(default_factory=list)
    eval_wall_seconds: list = field(default_factory=list)  # training wall time when evaluated
    eval_n: list = field(default_factory=list)  # test images used by that evaluation
    train_seconds: float = 0.0  # wall time spent in training steps (evaluation excluded)
    eval_seconds: float = 0.0
    images: int = 0  # training images processed (counting resumed parts)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    metrics: Metrics
    snapshots: dict  # iteration -> path of the snapshot file in workdir
    total_iterations: int
    iterations_per_epoch: int
    # device.kernels of each stretch the run trained in: one entry, or more when it was resumed
    # on another device model, thread count or compile/CUDA-graph/determinism setting
    kernels: list = field(default_factory=list)


@torch.inference_mode()
def evaluate(
    model, x: torch.Tensor, y: torch.Tensor, normalise, batch_size: int, precision: str = "fp32"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y); one host sync at the end."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, x.shape[0], batch_size):
        with devices.autocast(x.device, precision):
            out = model(normalise(x[i : i + batch_size]))
        yb = y[i : i + batch_size]
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = x.shape[0]
    return loss.item() / n, correct.item() / n


def sgd(params, hp: TrainingHparams) -> SGD:
    """The paper's SGD (momentum, weight decay) as one fused kernel (``sgd.SGD``)."""
    return SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)


def masked_step(optimizer, mparams: list, mmasks: list) -> None:
    """One optimizer step that keeps pruned weights exactly zero: gradients are masked before the
    step (so momentum and weight decay see zeros) and weights are re-masked after it."""
    if mparams:
        torch._foreach_mul_([p.grad for p in mparams], mmasks)
    optimizer.step()
    if mparams:
        with torch.no_grad():
            torch._foreach_mul_(mparams, mmasks)


# Options every run of a batch must share (the loop runs them in lockstep); the rest (seed, data
# stream, batch transform) is per run.
SHARED_OPTIONS = (
    "start_iteration",
    "precision",
    "eval_iterations",
    "snapshot_iterations",
    "log_every",
    "eval_batch_size",
    "checkpoint_seconds",
    "compile",
    "cuda_graphs",
    "eval_subset",
    "eval_subset_until",
)


@dataclass
class Run:
    """One run of a batch: its model (trained in place), data, options, snapshot directory, mask
    and what ``runs.run_identity`` says makes it this run (folded into the resume fingerprint)."""

    model: torch.nn.Module
    data: Dataset
    opts: RunOptions
    workdir: str | Path  # snapshots; the first run's also holds the batch's resume state
    mask: dict | None = None
    identity: str = ""
    recorder: object = None  # telemetry.Recorder (one-run batches only)


def _shared(runs: Sequence[Run]) -> RunOptions:
    first = runs[0].opts
    for i, r in enumerate(runs[1:], 1):
        for name in SHARED_OPTIONS:
            a, b = getattr(first, name), getattr(r.opts, name)
            if (sorted(a) if isinstance(a, (list, tuple)) else a) != (
                sorted(b) if isinstance(b, (list, tuple)) else b
            ):
                raise ValueError(
                    f"the runs of one batch must share RunOptions.{name}: run 0 (seed "
                    f"{first.seed}) has {a!r}, run {i} (seed {r.opts.seed}) {b!r}"
                )
    if len({tuple(r.data.train_x.shape) for r in runs}) != 1:
        raise ValueError("the runs of one batch must train on images of the same shape")
    if len({tuple(r.data.test_x.shape) for r in runs}) != 1:
        raise ValueError("the runs of one batch must evaluate on test sets of the same shape")
    if len(runs) > 1 and any(r.recorder is not None for r in runs):
        raise ValueError("telemetry needs a run of its own (a batch of one run)")
    return first


def _evaluate_batch(group, tests, normalise, batch_size: int, precision: str) -> list[tuple]:
    """Per-run (mean cross-entropy, accuracy) on each run's own (x, y); one host sync."""
    if group.n == 1:  # exactly the one-run evaluation
        ((x, y),) = tests
        return [evaluate(group.model, x, y, normalise, batch_size, precision)]
    return _evaluate_many(group, tests, normalise, batch_size, precision)


@torch.inference_mode()
def _evaluate_many(group, tests, normalise, batch_size: int, precision: str) -> list[tuple]:
    group.train(False)
    n, dev = tests[0][0].shape[0], tests[0][0].device
    loss = torch.zeros(group.n, device=dev, dtype=torch.float64)
    correct = torch.zeros(group.n, device=dev, dtype=torch.int64)
    for i in range(0, n, batch_size):
        with devices.autocast(dev, precision):
            out = group.logits([x[i : i + batch_size] for x, _ in tests], normalise)
        out = out.float()
        y = torch.stack([t[1][i : i + batch_size] for t in tests])  # (N, b)
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        loss += ce.view(group.n, -1).sum(1)
        correct += (out.argmax(-1) == y).sum(1)
    group.train(True)
    return [(lo / n, c / n) for lo, c in zip(loss.tolist(), correct.tolist(), strict=True)]


def step_mode(opts: RunOptions, device: torch.device) -> tuple[bool, bool]:
    """(compile, capture) of the training step: Inductor with ``compile``; one CUDA graph per
    step with ``cuda_graphs`` on a GPU (``wholestep``)."""
    return bool(opts.compile), bool(opts.cuda_graphs and device.type == "cuda")


def train_runs(
    runs: Sequence[Run],
    hp: TrainingHparams,
    *,
    network: str = "",
    method: str = "grouped",
    log: Callable[[str], None] = print,
    max_iterations: int | None = None,
    on_step: Callable[[int], None] | None = None,
    on_evaluate: Callable[[int, list[tuple]], None] | None = None,
) -> list[TrainResult]:
    """Train ``runs`` (one network shape, one start iteration) together, in place; see the module
    docstring. Returns one ``TrainResult`` per run, in order.

    ``method``: how N > 1 runs are batched (``multirun.METHODS``). ``max_iterations`` stops early
    (tests, benchmarks); ``on_step(it)`` runs before the first step and after every step (``it`` =
    the absolute iteration; the benchmark's clock); ``on_evaluate(it, [(loss, accuracy), ...])``
    after every evaluation (progress reports). A resume state saved by another batch or under
    other settings, or a damaged one, is moved aside (``resume.stale-<time>.pt``) and the batch
    starts afresh, saying so in the log."""
    loop = _set_up(
        list(runs), hp, method=method, network=network, log=log, max_iterations=max_iterations
    )
    loop.on_evaluate = on_evaluate
    resumed = loop.resume()
    loop.compile()
    if not resumed:
        loop.begin()
    if on_step is not None:
        on_step(loop.it)

    sched, opts = loop.sched, loop.opts
    loop.last_save = time.monotonic()
    loop.t0 = time.perf_counter()
    with sigterm_flag() as sigterm:
        while loop.it < sched.stop:
            loop.advance()
            if on_step is not None:
                on_step(loop.it)
            if loop.it in sched.snapshot_at:
                loop.snapshot()
            if loop.it % opts.log_every == 0 or loop.it == sched.stop or loop.it in sched.eval_at:
                loop.log_window()
                if loop.it in sched.eval_at:
                    loop.evaluate()
                loop.t0 = time.perf_counter()  # the training clock restarts after evaluating
            if sigterm["set"] or time.monotonic() - loop.last_save > opts.checkpoint_seconds:
                loop.save_resume()
                if sigterm["set"]:
                    raise Interrupted(
                        f"SIGTERM at iteration {loop.it}/{sched.total}: state saved to "
                        f"{loop.resume_path}; re-run the workflow to resume"
                    )
    return loop.finish()


# ----------------------------------------------------------------------------------------------
# The loop's pieces: set-up, then the batch's state (_Loop) with a method per thing the loop does


@dataclass(frozen=True)
class _Schedule:
    """The iterations of a batch."""

    n: int  # training images
    ipe: int  # iterations per epoch
    total: int  # iterations of the whole schedule
    start: int  # the iteration the start state stands at (rewinding)
    stop: int  # the iteration this call stops at: total, or max_iterations
    eval_at: set  # evaluate after these steps (the start and the end included)
    snapshot_at: set  # keep the weights after these steps


def _schedule(hp: TrainingHparams, opts: RunOptions, n: int, max_iterations) -> _Schedule:
    """The batch's schedule; a start or a snapshot outside it is refused."""
    ipe = hp.iterations_per_epoch(n)
    total = hp.total_iterations(n)
    stop = total if max_iterations is None else min(total, int(max_iterations))
    start = int(opts.start_iteration)
    if not 0 <= start < total:
        raise ValueError(
            f"start iteration {start} must lie in 0..{total - 1}: a run of {total} iterations "
            "has no steps left after it (a rewind point or pre-training too long for the schedule)"
        )
    bad = [k for k in opts.snapshot_iterations if not start <= k <= total]
    if bad:
        raise ValueError(
            f"snapshot iterations {bad} lie outside this run's iterations {start}..{total}"
        )
    snapshot_at = set(opts.snapshot_iterations)
    # OpenLTH evaluates at its start step too
    eval_at = {i for i in opts.eval_iterations if start <= i <= total} | {start, total}
    return _Schedule(n, ipe, total, start, stop, eval_at, snapshot_at)


def _batched(runs: list[Run], hp: TrainingHparams, method: str, device) -> tuple:
    """(batch, optimizer, masked parameters, their masks): the runs' models as one batch
    (``multirun.make``) in training mode, its SGD, and each run's mask applied."""
    for r in runs:
        r.model.to(device)
        r.model.train()
    group = multirun.make(method, [r.model for r in runs], device)
    group.train(True)
    optimizer = sgd(group.parameters(), hp)
    mparams, mmasks = group.masked(group.wide_mask([r.mask for r in runs]))
    with torch.no_grad():
        if mparams:
            torch._foreach_mul_(mparams, mmasks)
    return group, optimizer, mparams, mmasks


def _test_sets(runs: list[Run], opts: RunOptions, device) -> list[tuple]:
    """Per run: (its evaluation set up to ``eval_subset_until``, its full test set); with
    ``eval_subset`` the first is a random subset fixed by the run's seed."""
    tests = []
    for r in runs:
        test_x, test_y = r.data.test_x, r.data.test_y
        if opts.eval_subset and opts.eval_subset < test_x.shape[0]:
            g = rng.generator(r.opts.seed, "eval_subset")
            pick = torch.randperm(test_x.shape[0], generator=g)[: opts.eval_subset].to(device)
            tests.append(((test_x[pick], test_y[pick]), (test_x, test_y)))
        else:
            tests.append(((test_x, test_y), (test_x, test_y)))
    return tests


def _set_up(
    runs: list[Run], hp: TrainingHparams, *, method: str, network: str, log, max_iterations
) -> _Loop:
    """The batch at its start iteration: the runs checked, their workdirs made, the batched
    models masked, their optimizer, arithmetic, test sets and telemetry hook."""
    if not runs:
        raise ValueError("train_runs needs at least one run")
    opts = _shared(runs)
    device = runs[0].data.train_x.device
    for r in runs:
        Path(r.workdir).mkdir(parents=True, exist_ok=True)
    sched = _schedule(hp, opts, runs[0].data.train_x.shape[0], max_iterations)
    group, optimizer, mparams, mmasks = _batched(runs, hp, method, device)
    precision = devices.effective_precision(opts.precision, device)
    devices.set_precision(precision)
    # CUDA graphs only where the step is one graph (wholestep.unsupported: else it runs eagerly)
    whole = wholestep.unsupported(runs, method) is None
    kernels = devices.kernels(device, compile=opts.compile, cuda_graphs=opts.cuda_graphs and whole)
    loop = _Loop(
        runs, hp, opts, sched, group, optimizer, mparams, mmasks, precision, kernels, network, log
    )
    if loop.recorder is not None:
        loop.recorder.attach(loop.sample_loss)
    return loop


def _kernel_segments(saved: list | None, kernels: dict, start: int, it: int, log) -> list[dict]:
    """The kernel segments of a batch resumed at ``it``: the saved ones (a state saved without
    them: one from ``start`` on an unknown device), plus one from ``it`` when this process
    computes with other kernels -- logged, as the run is then not bit-identical to an
    uninterrupted one."""
    segments = saved or [{"from_iteration": start, "device": "unknown"}]
    before = {k: v for k, v in segments[-1].items() if k != "from_iteration"}
    if before == kernels:
        return segments
    changed = sorted(k for k in kernels.keys() | before.keys() if before.get(k) != kernels.get(k))
    log(
        f"NOTE: resuming under other kernels ({', '.join(changed)}: "
        f"{ {k: before.get(k) for k in changed} } -> { {k: kernels.get(k) for k in changed} }): "
        "the run continues with other rounding from here, so it is not bit-identical to an "
        "uninterrupted one; its metrics record every segment's kernels"
    )
    return [*segments, {"from_iteration": it, **kernels}]


@dataclass(eq=False)
class _Loop:
    """A batch in training: what its steps share (``_set_up``) and where it stands -- the part
    the resume state saves (``save_resume``)."""

    runs: list[Run]
    hp: TrainingHparams
    opts: RunOptions  # the options the runs share (SHARED_OPTIONS)
    sched: _Schedule
    group: object  # multirun.make's batch
    optimizer: SGD
    mparams: list  # the masked parameters and their masks (masked_step)
    mmasks: list
    precision: str  # device.effective_precision
    kernels: dict  # device.kernels of this process
    network: str
    log: Callable[[str], None]
    # derived from the above (__post_init__)
    normalise: Callable = field(init=False)
    tests: list = field(init=False)  # _test_sets
    fingerprint: str = field(init=False)  # resume.fingerprint_of
    # where the batch stands, saved in the resume state (a fresh batch's: __post_init__)
    it: int = field(init=False)
    metrics: list[Metrics] = field(init=False)
    snapshots: list[dict] = field(init=False)  # per run: iteration -> path
    loss_acc: torch.Tensor = field(init=False)  # per run: the summed losses since the last record
    last_log_it: int = field(init=False)
    segments: list[dict] = field(init=False)  # the kernels of each stretch, from its iteration on
    # this process only
    draws: list | None = field(init=False, default=None)  # per run: draw_epoch's augment.draw_epoch
    draw_epoch: int = field(init=False, default=-1)
    lr: float | None = field(init=False, default=None)  # the learning rate of the last step
    on_evaluate: Callable | None = field(init=False, default=None)  # train_runs' hook
    whole: wholestep.WholeStep | None = field(init=False, default=None)  # the step as one graph
    t0: float = field(init=False, default=0.0)  # perf_counter when the training clock started
    last_save: float = field(init=False, default=0.0)  # monotonic time of the last save

    def __post_init__(self):
        runs, hp, opts, sched = self.runs, self.hp, self.opts, self.sched
        self.normalise = self.group.normaliser(hp, self.device)
        self.tests = _test_sets(runs, opts, self.device)
        self.fingerprint = fingerprint_of(
            runs,
            hp,
            opts,
            sched.eval_at,
            sched.snapshot_at,
            sched.total,
            sched.start,
            self.precision,
            self.group.method,
        )
        start = sched.start
        self.it = self.last_log_it = start
        self.metrics = [Metrics() for _ in self.runs]
        self.snapshots = [{} for _ in self.runs]
        self.loss_acc = torch.zeros(self.n_runs, device=self.device, dtype=torch.float32)
        self.segments = [{"from_iteration": start, **self.kernels}]

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def device(self) -> torch.device:
        return self.runs[0].data.train_x.device

    @property
    def recorder(self):
        return self.runs[0].recorder if self.n_runs == 1 else None

    @property
    def resume_path(self) -> Path:
        return Path(self.runs[0].workdir) / "resume.pt"

    def sample_loss(self, x, y):
        """Telemetry's loss on a sample batch, through the eager model (a compiled one would
        compile this shape too)."""
        with devices.autocast(self.device, self.precision):
            return F.cross_entropy(self.group.logits([x], self.normalise)[0], y)

    def resume(self) -> bool:
        """Continue from the resume state if this very batch saved it (``resume.resume_state``
        sets any other aside); True when it did."""
        state = resume_state(
            self.resume_path, self.device, self.fingerprint, self.recorder, self.log
        )
        if state is None:
            return False
        self.group.load(state["models"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.it = int(state["iteration"])
        self.metrics = [Metrics(**m) for m in state["metrics"]]
        self.snapshots = [{int(k): v for k, v in s.items()} for s in state["snapshots"]]
        self.loss_acc = state["loss_acc"].to(self.device)
        self.last_log_it = int(state["last_log_it"])
        if self.recorder is not None:
            self.recorder.load_state_dict(state["telemetry"], self.device)
        self.log(f"resumed from {self.resume_path} at iteration {self.it}/{self.sched.total}")
        start = self.sched.start
        self.segments = _kernel_segments(
            state.get("kernels"), self.kernels, start, self.it, self.log
        )
        return True

    def compile(self) -> None:
        """Set the training step up as ``step_mode`` says: the whole step as one graph
        (``wholestep``: compiled by Inductor, captured in a CUDA graph, or both) where the batch
        allows it; else, with ``compile``, its forward and backward compiled; else eager."""
        opts, device = self.opts, self.device
        compile, capture = step_mode(opts, device)
        if not (compile or capture):
            return
        if compile:
            import torch._inductor.config as inductor  # (device.configure leaves it unimported)

            inductor.deterministic = torch.are_deterministic_algorithms_enabled()
            devices.check_compiler(device)
        why = wholestep.unsupported(self.runs, self.group.method)
        if why is None:
            self.whole = wholestep.WholeStep(self, compile=compile, capture=capture)
        elif compile:
            self.log(f"compiling the forward and backward only: {why}")
            self.group.compile(None)
        else:
            self.log(f"no CUDA graph: {why}; the step runs eagerly")

    def begin(self) -> None:
        """A batch starting afresh: telemetry, snapshot and evaluation at its start iteration."""
        start, total = self.sched.start, self.sched.total
        if start:
            self.log(
                f"rewound: steps {start}..{total} of the schedule ({total - start} iterations)"
            )
        if self.recorder is not None and self.recorder.wants(start):
            self.recorder.on_state(start)
        if start in self.sched.snapshot_at:
            self.snapshot()
        if start in self.sched.eval_at:
            self.evaluate()

    def advance(self) -> None:
        """One training step of every run: as one graph (``whole``) or in pieces."""
        if self.whole is None:
            xs, ys = self.next_batch()
            self.step(xs, ys)
            return
        hp, sched = self.hp, self.sched
        epoch, j = divmod(self.it, sched.ipe)
        if epoch != self.draw_epoch:
            self.whole.begin_epoch(wholestep.epoch_draws(self), j)
            self.draw_epoch = epoch
        b = min(hp.batch_size, sched.n - j * hp.batch_size)
        self.lr = hp.lr_at(self.it, sched.n)  # (for messages; the graph looks its own up)
        self.whole.step(b)
        self.it += 1
        for mt in self.metrics:
            mt.images += b

    def next_batch(self) -> tuple[list, list]:
        """Each run's (images, labels) for step ``it``: its own data order and augmentation (drawn
        once per epoch), cropped and flipped, then its batch transform."""
        hp = self.hp
        epoch, j = divmod(self.it, self.sched.ipe)
        if epoch != self.draw_epoch:
            self.draws = wholestep.epoch_draws(self)
            self.draw_epoch = epoch
        sl = slice(j * hp.batch_size, (j + 1) * hp.batch_size)
        xs, ys = [], []
        for r, draw in zip(self.runs, self.draws, strict=True):
            idx = draw.order[sl]
            x, y = r.data.train_x[idx], r.data.train_y[idx]
            x = augment.crop_flip(x, draw.dy[sl], draw.dx[sl], draw.flip[sl], hp.crop_padding)
            if r.opts.batch_fn is not None:  # pre-training tasks; after the flip (rotation)
                x, y = r.opts.batch_fn(x, y, self.it)
            xs.append(x)
            ys.append(y)
        return xs, ys

    def step(self, xs: list, ys: list) -> None:
        """One SGD step of every run at the schedule's learning rate; ``it`` advances."""
        lr = self.hp.lr_at(self.it, self.sched.n)
        if lr != self.lr:
            self.optimizer.lr = lr
        self.lr = lr
        with devices.autocast(self.device, self.precision):
            losses = wholestep.losses(self.group.logits(xs, self.normalise, step=True), ys)
        self.optimizer.zero_grad()
        (losses[0] if self.n_runs == 1 else losses.sum()).backward()
        recorder = self.recorder
        if recorder is not None and recorder.wants(self.it):
            recorder.on_grad(self.it)
        masked_step(self.optimizer, self.mparams, self.mmasks)
        self.loss_acc += losses.detach().float()
        self.it += 1
        for mt, y in zip(self.metrics, ys, strict=True):
            mt.images += y.shape[0]
        if recorder is not None and recorder.wants(self.it):
            recorder.on_state(self.it)

    def snapshot(self) -> None:
        """Keep each run's weights at ``it`` in its workdir (a rewind point)."""
        for i, r in enumerate(self.runs):
            path = Path(r.workdir) / f"iter{self.it}.pt"
            checkpoint.save(path, self.group.state_dict(i), iteration=self.it, network=self.network)
            self.snapshots[i][self.it] = str(path)

    def log_window(self) -> None:
        """Record each run's mean training loss since the last record and the training time
        (one host sync); a non-finite loss stops the batch."""
        it, last = self.it, self.last_log_it
        means = (self.loss_acc / (it - last)).tolist()  # host sync
        bad = [i for i, v in enumerate(means) if v != v or abs(v) == float("inf")]
        if bad:
            seeds = [self.runs[i].opts.seed for i in bad]
            who = f" for runs {bad} (seeds {seeds})" if self.n_runs > 1 else ""
            raise NonFiniteLoss(
                f"training loss became {means[bad[0]]}{who} between iterations {last} and {it} "
                f"(lr {self.lr}); the run diverged, so no outputs were written"
            )
        now = time.perf_counter()
        for mt, v in zip(self.metrics, means, strict=True):
            mt.train_iteration.append(it)
            mt.train_loss.append(v)
            mt.train_seconds += (now - self.t0) / self.n_runs
        self.loss_acc.zero_()
        self.last_log_it = it

    def evaluate(self) -> None:
        """Evaluate each run on its test set (the fixed subset up to ``eval_subset_until``),
        record and log it; a non-finite test loss stops the batch."""
        it, n_runs = self.it, self.n_runs
        t = time.perf_counter()
        which = 0 if it <= self.opts.eval_subset_until else 1
        sets = [pair[which] for pair in self.tests]
        if self.whole is not None:
            results = self.whole.evaluate(sets, self.opts.eval_batch_size)
        else:
            results = _evaluate_batch(
                self.group, sets, self.normalise, self.opts.eval_batch_size, self.precision
            )
        dt = time.perf_counter() - t
        for i, (loss, acc) in enumerate(results):
            mt = self.metrics[i]
            mt.eval_n.append(int(sets[i][0].shape[0]))
            mt.eval_seconds += dt / n_runs
            mt.eval_iteration.append(it)
            mt.eval_loss.append(loss)
            mt.eval_accuracy.append(acc)
            mt.eval_wall_seconds.append(mt.train_seconds)
            if not (loss == loss and abs(loss) != float("inf")):
                who = f" (run {i}, seed {self.runs[i].opts.seed})" if n_runs > 1 else ""
                raise NonFiniteLoss(
                    f"test loss is {loss} at iteration {it}{who}: training diverged"
                )
        if self.on_evaluate is not None:
            self.on_evaluate(it, results)
        accs = " ".join(f"{a:.4f}" for _, a in results)
        if n_runs == 1:
            self.log(f"iter {it:>7}/{self.sched.total}  test loss {results[0][0]:.4f}  acc {accs}")
        else:
            self.log(f"iter {it:>7}/{self.sched.total}  test acc {accs}")

    def save_resume(self) -> None:
        """Count the training time so far and save the whole batch to ``resume_path``."""
        for mt in self.metrics:
            mt.train_seconds += (time.perf_counter() - self.t0) / self.n_runs
        self.t0 = time.perf_counter()
        checkpoint.atomic_save(
            {
                "format": RESUME_FORMAT,
                "fingerprint": self.fingerprint,
                "iteration": self.it,
                "models": [self.group.state_dict(i) for i in range(self.n_runs)],
                "optimizer": self.optimizer.state_dict(),
                "metrics": [m.to_dict() for m in self.metrics],
                "snapshots": [{str(k): v for k, v in s.items()} for s in self.snapshots],
                "loss_acc": self.loss_acc,
                "last_log_it": self.last_log_it,
                "telemetry": None if self.recorder is None else self.recorder.state_dict(),
                "kernels": self.segments,
            },
            self.resume_path,
        )
        self.last_save = time.monotonic()

    def finish(self) -> list[TrainResult]:
        """The telemetry flushed, the trained weights in the runs' models: one result per run."""
        if self.recorder is not None:
            self.recorder.flush()
        self.group.write_back([r.model for r in self.runs])
        sched = self.sched
        return [
            TrainResult(self.metrics[i], self.snapshots[i], sched.total, sched.ipe, self.segments)
            for i in range(self.n_runs)
        ]


def train(
    model: torch.nn.Module,
    data: Dataset,
    hp: TrainingHparams,
    opts: RunOptions,
    *,
    workdir: str | Path,
    mask: dict | None = None,
    network: str = "",
    log: Callable[[str], None] = print,
    recorder=None,
    identity: str = "",
    max_iterations: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one run (``train_runs`` with a batch of one): ``model`` in place on ``data`` with SGD
    under ``mask``. ``identity`` names what the loop cannot see for itself (the start weights'
    and mask's contents, perturbation, task, data; ``runs.run_identity``)."""
    (result,) = train_runs(
        [Run(model, data, opts, workdir, mask, identity, recorder)],
        hp,
        network=network,
        log=log,
        max_iterations=max_iterations,
        on_step=on_step,
    )
    return result
