"""The training loop every job uses: dense runs, IMP levels, perturbation and pre-training branches.

Fast by construction (issue 7): the data set is a uint8 tensor on the device, augmentation is batched
(``augment``), the model runs channels_last (``RunOptions.precision``: fp32, tf32 or bf16 autocast), masks are applied with two
``_foreach_mul_`` calls, and the host synchronises only every ``log_every`` steps (to record the
training loss and stop on a non-finite one) and at evaluations.

Resumable: every ``checkpoint_seconds`` and on SIGTERM (SLURM pre-emption) the full state goes to
``workdir/resume.pt``; a re-run of the job continues from there with bit-identical results, because
all randomness is keyed by (seed, purpose, epoch) rather than carried in generator state.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import augment, checkpoint, rng
from . import device as devices
from .data import Dataset
from .hparams import TrainingHparams

RESUME_FORMAT = "earlyphase-resume/1"


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
    precision: str = "fp32"
    eval_iterations: Sequence[int] = ()  # evaluate on the test set after these many steps
    snapshot_iterations: Sequence[
        int
    ] = ()  # keep the weights after these many steps (rewind points)
    log_every: int = 100  # steps between training-loss records / non-finite checks (host syncs)
    eval_batch_size: int = 250  # measured fastest on a 2-core CPU (issue 7); bigger on GPUs is fine
    checkpoint_seconds: float = 600.0  # wall seconds between resume-state saves
    compile: bool = False  # torch.compile the model (pays only for long runs on GPUs; issue 7)
    batch_fn: Callable | None = None  # (x_uint8, y, iteration) -> (x_uint8, y), after crop/flip
    eval_subset: int = 0  # >0: evaluations up to eval_subset_until use a fixed random test subset
    eval_subset_until: int = -1  # last iteration evaluated on the subset (telemetry's dense points)


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


@contextlib.contextmanager
def _sigterm_flag():
    """Turn SIGTERM into a flag the loop polls, so the state is saved at a step boundary."""
    flag = {"set": False}
    previous = None

    def handler(signum, frame):
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. some test runners): no handler, no flag
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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


def sgd(params, hp: TrainingHparams) -> torch.optim.SGD:
    """The paper's SGD (momentum, weight decay) as one fused kernel: measured 5% faster than the
    foreach implementation on the 2-core CPU and bitwise identical to it (issue 7)."""
    return torch.optim.SGD(
        params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, fused=True
    )


def masked_parameters(model, mask: dict | None):
    """(params, masks) lists for the masked tensors, masks as float on the param's device."""
    if not mask:
        return [], []
    named = dict(model.named_parameters())
    unknown = sorted(set(mask) - set(named))
    if unknown:
        raise ValueError(f"mask names parameters the model does not have: {unknown[:5]}")
    params = [named[k] for k in mask]
    masks = [mask[k].to(device=named[k].device, dtype=named[k].dtype) for k in mask]
    return params, masks


def masked_step(optimizer, mparams: list, mmasks: list) -> None:
    """One optimizer step that keeps pruned weights exactly zero: gradients are masked before the
    step (so momentum and weight decay see zeros) and weights are re-masked after it."""
    if mparams:
        torch._foreach_mul_([p.grad for p in mparams], mmasks)
    optimizer.step()
    if mparams:
        with torch.no_grad():
            torch._foreach_mul_(mparams, mmasks)


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<stem>.stale-<UTC time><suffix>`` beside it (never deleted: evidence)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.stem}.stale-{stamp}{path.suffix}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.stem}.stale-{stamp}-{n}{path.suffix}"), n + 1
    path.rename(target)
    return target


def _resume_state(path: Path, device, fingerprint: str, recorder, log) -> dict | None:
    """The resume state at ``path`` if this very run saved it; else None, after moving a stale or
    damaged file (and the telemetry snapshots saved with it) aside and logging why."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            why = f"it is not an {RESUME_FORMAT} file"
        elif state.get("fingerprint") != fingerprint:
            why = (
                "it was saved by a different run (hyperparameters, schedule, seed, start weights, "
                "mask, perturbation, task, data, data stream or telemetry settings changed since)"
            )
        else:
            return state
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        why = f"it cannot be read ({type(e).__name__}: {e})"
    moved = [set_aside(path)]
    if recorder is not None and Path(recorder.path).exists():
        moved.append(set_aside(Path(recorder.path)))
    log(
        f"NOT resuming from {path}: {why}. Moved it aside ({', '.join(m.name for m in moved)}, "
        "kept as evidence) and starting this run afresh."
    )
    return None


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
) -> TrainResult:
    """Train ``model`` in place on ``data`` with SGD under ``mask``; see module docstring.

    ``identity`` names what the loop cannot see for itself (the start weights' and mask's
    contents, perturbation, task, data; ``runs.run_identity``): a resume state saved under another
    identity or settings, or a damaged one, is moved aside (``resume.stale-<time>.pt``) and the
    run starts afresh, saying so in the log."""
    device = data.train_x.device
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    resume_path = workdir / "resume.pt"

    model.to(device=device, memory_format=torch.channels_last)
    model.train()
    n = data.train_x.shape[0]
    ipe = hp.iterations_per_epoch(n)
    total = hp.total_iterations(n)
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

    optimizer = sgd(model.parameters(), hp)
    mparams, mmasks = masked_parameters(model, mask)
    with torch.no_grad():
        if mparams:
            torch._foreach_mul_(mparams, mmasks)

    precision = devices.effective_precision(opts.precision, device)
    devices.set_precision(precision)
    # Everything that shapes the trajectory: a resume state from other settings must not be used.
    fingerprint = repr(
        (
            hp.to_dict(),
            opts.seed,
            sorted(eval_at),
            sorted(snapshot_at),
            opts.eval_subset,
            opts.eval_subset_until,
            sorted(mask) if mask else None,
            total,
            start,
            identity,
            *((opts.data_stream,) if opts.data_stream else ()),
            *((recorder.settings(),) if hasattr(recorder, "settings") else ()),
            *((precision,) if precision != "fp32" else ()),
        )
    )
    metrics = Metrics()
    snapshots: dict[int, str] = {}
    it = last_log_it = start
    resumed = False
    loss_acc = torch.zeros((), device=device, dtype=torch.float32)
    state = _resume_state(resume_path, device, fingerprint, recorder, log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        it = int(state["iteration"])
        metrics = Metrics(**state["metrics"])
        snapshots = {int(k): v for k, v in state["snapshots"].items()}
        loss_acc = state["loss_acc"].to(device)
        last_log_it = int(state["last_log_it"])
        if recorder is not None:
            recorder.load_state_dict(state["telemetry"], device)
        resumed = True
        log(f"resumed from {resume_path} at iteration {it}/{total}")

    def save_resume():
        checkpoint.atomic_save(
            {
                "format": RESUME_FORMAT,
                "fingerprint": fingerprint,
                "iteration": it,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "metrics": metrics.to_dict(),
                "snapshots": {str(k): v for k, v in snapshots.items()},
                "loss_acc": loss_acc,
                "last_log_it": last_log_it,
                "telemetry": None if recorder is None else recorder.state_dict(),
            },
            resume_path,
        )

    def snapshot():
        path = workdir / f"iter{it}.pt"
        checkpoint.save(path, model.state_dict(), iteration=it, network=network)
        snapshots[it] = str(path)

    normalise = augment.Normalise(hp.mean, hp.std, device)
    forward = torch.compile(model) if opts.compile else model

    test_x, test_y = data.test_x, data.test_y
    if opts.eval_subset and opts.eval_subset < test_x.shape[0]:
        pick = torch.randperm(test_x.shape[0], generator=rng.generator(opts.seed, "eval_subset"))
        pick = pick[: opts.eval_subset].to(device)
        sub_x, sub_y = test_x[pick], test_y[pick]
    else:
        sub_x, sub_y = test_x, test_y

    def run_eval():
        t = time.perf_counter()
        x, y = (sub_x, sub_y) if it <= opts.eval_subset_until else (test_x, test_y)
        loss, acc = evaluate(model, x, y, normalise, opts.eval_batch_size, precision)
        metrics.eval_n.append(int(x.shape[0]))
        metrics.eval_seconds += time.perf_counter() - t
        metrics.eval_iteration.append(it)
        metrics.eval_loss.append(loss)
        metrics.eval_accuracy.append(acc)
        metrics.eval_wall_seconds.append(metrics.train_seconds)
        if not (loss == loss and abs(loss) != float("inf")):
            raise NonFiniteLoss(f"test loss is {loss} at iteration {it}: training diverged")
        log(f"iter {it:>7}/{total}  test loss {loss:.4f}  acc {acc:.4f}")

    if recorder is not None:

        def sample_loss(x, y):
            with devices.autocast(device, precision):
                return F.cross_entropy(forward(normalise(x)), y)

        recorder.attach(sample_loss)
    if not resumed:
        if start:
            log(f"rewound: steps {start}..{total} of the schedule ({total - start} iterations)")
        if recorder is not None and recorder.wants(start):
            recorder.on_state(start)
        if start in snapshot_at:
            snapshot()
        if start in eval_at:
            run_eval()

    draw, draw_epoch = None, -1
    current_lr = None
    last_save = time.monotonic()
    t0 = time.perf_counter()
    with _sigterm_flag() as sigterm:
        while it < total:
            epoch, j = divmod(it, ipe)
            if epoch != draw_epoch:
                draw = augment.draw_epoch(
                    n, opts.seed, epoch, hp.crop_padding, hp.flip, device, opts.data_stream
                )
                draw_epoch = epoch
            sl = slice(j * hp.batch_size, (j + 1) * hp.batch_size)
            idx = draw.order[sl]
            x, y = data.train_x[idx], data.train_y[idx]
            x = augment.crop_flip(x, draw.dy[sl], draw.dx[sl], draw.flip[sl], hp.crop_padding)
            if opts.batch_fn is not None:  # pre-training tasks; after the flip (rotation labels)
                x, y = opts.batch_fn(x, y, it)
            x = normalise(x)

            lr = hp.lr_at(it, n)
            if lr != current_lr:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                current_lr = lr

            with devices.autocast(device, precision):
                loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recorder is not None and recorder.wants(it):
                recorder.on_grad(it)
            masked_step(optimizer, mparams, mmasks)
            loss_acc += loss.detach().float()
            it += 1
            metrics.images += y.shape[0]
            if recorder is not None and recorder.wants(it):
                recorder.on_state(it)

            if it in snapshot_at:
                snapshot()
            if it % opts.log_every == 0 or it == total or it in eval_at:
                mean_loss = loss_acc.item() / (it - last_log_it)  # host sync
                if mean_loss != mean_loss or abs(mean_loss) == float("inf"):
                    raise NonFiniteLoss(
                        f"training loss became {mean_loss} between iterations {last_log_it} and "
                        f"{it} (lr {lr}); the run diverged, so no outputs were written"
                    )
                metrics.train_iteration.append(it)
                metrics.train_loss.append(mean_loss)
                loss_acc.zero_()
                last_log_it = it
                now = time.perf_counter()
                metrics.train_seconds += now - t0
                if it in eval_at:
                    run_eval()
                t0 = time.perf_counter()
            if sigterm["set"] or time.monotonic() - last_save > opts.checkpoint_seconds:
                metrics.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_resume()
                last_save = time.monotonic()
                if sigterm["set"]:
                    raise Interrupted(
                        f"SIGTERM at iteration {it}/{total}: state saved to {resume_path}; "
                        "re-run the workflow to resume"
                    )
    if recorder is not None:
        recorder.flush()
    return TrainResult(metrics, snapshots, total, ipe)
