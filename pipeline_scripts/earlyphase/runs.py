"""One mechanism for every training job: start state + optional mask -> trained run files.

Dense runs, IMP levels, perturbation branches and pre-trained starts differ only in
  * where the starting weights come from (``init``: a fresh seeded initialisation or a checkpoint,
    optionally transformed by a named ``perturbation``), and
  * which mask constrains them (none, a mask file, or a new mask pruned from a previous level).
Everything else (data, loop, outputs, provenance, resume) is shared, so an experiment family is a
new way of naming a start state, not a copy of the training code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import (
    __version__,
    checkpoint,
    data,
    device,
    identity,
    models,
    perturb,
    prune,
    rng,
    tasks,
    telemetry,
)
from .hparams import TrainingHparams
from .metrics import write_run
from .train import Run, RunOptions, options_from_runtime, train_runs


@dataclass(frozen=True)
class Job:
    network: str
    seed: int
    data_path: str
    hparams: dict  # TrainingHparams fields
    runtime: dict  # device, deterministic, compile, eval_batch_size, log_every, checkpoint_seconds
    eval_every: float  # evaluate every this many epochs (and at the end)
    out_final: str
    out_metrics: str
    workdir: str  # resume state and snapshots; outside the job's outputs, removed on success
    threads: int = 1
    init: str | None = None  # checkpoint to start from; None = fresh init from the seed
    snapshots: dict = field(default_factory=dict)  # iteration -> output path
    mask_in: str | None = None  # train under this mask
    prune_from: tuple | None = None  # (prev final weights, prev mask or None): make a new mask
    prune_fraction: float = 0.2
    prune_exclude: list | None = None  # None -> the network's framework default
    level: int = 0
    out_mask: str | None = None
    attrs: dict = field(default_factory=dict)  # experiment identity, written to the metrics file
    eval_iterations: tuple = ()  # extra evaluation points
    telemetry: dict | None = None  # iterations, points, dense_until, eval_subset, eval_subset_until
    out_telemetry: str | None = None  # raw telemetry + weight snapshots (telemetry.Recorder)
    perturbation: dict | None = None  # {"kind": ..., **params}: perturb the start (Section 5)
    perturb_init0: str | None = None  # iteration-0 weights, the "0" source of a perturbation
    perturb_key: str = ""  # names the perturbation's random stream (variant, k, level)
    init_purpose: str = "init"  # random stream of a fresh init ("reinit" = not the dense run's)
    task: str | None = None  # pre-training task (tasks.REGISTRY); None = CIFAR-10 itself
    random_mask_like: str | None = None  # random mask with this IMP mask's per-layer sparsity
    # Where in the schedule the start state stands (rewinding, config key `rewinding`): the run
    # trains steps start .. T, start = start_iteration + round(start_epochs x iterations/epoch).
    start_iteration: int = 0  # the dense run's step k the start weights come from
    start_epochs: float = 0.0  # pre-training that counts as the schedule's first epochs
    data_stream: str = ""  # another sample of SGD noise for this seed (stability copies)


def code_version() -> str:
    """Package version plus the git commit of the workflow checkout, when there is one."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def config_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_schedule(total: int, ipe: int, every_epochs: float, extra=()) -> list[int]:
    step = max(1, round(every_epochs * ipe)) if every_epochs > 0 else total
    return sorted(set(range(0, total + 1, step)) | {total} | {i for i in extra if 0 <= i <= total})


def _checkpoint_of(job: Job, path: str) -> dict:
    """Load a checkpoint this job reads and check it belongs to the job's run: the network, the
    seed (files that record one) and, for a dense snapshot ``iter<k>.pt``, iteration k."""
    ck = checkpoint.load(path)
    recorded = {"network": ck["network"], **ck.get("meta", {}), "iteration": ck["iteration"]}
    expected = {"network": job.network} if ck["network"] else {}
    if "seed" in ck.get("meta", {}):
        expected["seed"] = job.seed
    snapshot = re.fullmatch(r"iter(\d+)\.pt", Path(path).name)
    if snapshot:
        expected["iteration"] = int(snapshot[1])
    identity.check(path, recorded, expected, f"{job.network} seed {job.seed}")
    return ck


def build_start(job: Job, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model at its starting state; returns (model, init_std per layer)."""
    model = models.build(job.network)
    init_std = models.initialise(model, rng.generator(job.seed, job.init_purpose))
    if job.init is not None:
        ck = _checkpoint_of(job, job.init)
        model.load_state_dict(ck["state_dict"])
    return model.to(dev), init_std


def apply_perturbation(job: Job, model, mask: dict, init_std: dict) -> dict:
    """Replace the kept prunable weights of the rewound sub-network by a perturbed version
    (Section 5); biases, BatchNorm parameters and buffers keep their iteration-k values.
    Returns the bookkeeping written to the metrics file (effective std for Figure 8)."""
    if not mask:
        raise ValueError("a perturbation needs the IMP mask of its level (mask_in)")
    names = list(mask)
    state = model.state_dict()
    dev = state[names[0]].device

    def masked(weights):
        return {n: weights[n].to(dev) * mask[n].to(dev) for n in names}

    fresh = models.build(job.network)
    models.initialise(fresh, rng.generator(job.seed, "fresh_init"))
    w_k = masked(state)
    sources = perturb.Sources(
        weights_k=w_k,
        weights_0=masked(_checkpoint_of(job, job.perturb_init0)["state_dict"])
        if job.perturb_init0
        else None,
        fresh=masked(fresh.state_dict()),
        mask={n: mask[n].to(dev) for n in names},
        init_std={n: init_std[n] for n in names},
    )
    spec = dict(job.perturbation)
    kind = spec.pop("kind")
    new = perturb.perturb(
        kind, sources, rng.generator(job.seed, "perturb", job.perturb_key), **spec
    )
    mean, std = perturb.effective_change(new, w_k, sources.mask)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in names:
            params[n].copy_(new[n])
    return {
        "perturbation": {"kind": kind, **spec},
        "perturbation_family": perturb.family(kind, **spec),
        "effective_mean": mean,
        "effective_std": std,
        "perturbed_tensors": names,
    }


def make_mask(job: Job, model) -> dict | None:
    if job.random_mask_like is not None:
        like = prune.load(job.random_mask_like, level=job.level, seed=job.seed)
        return prune.random_like(like, rng.generator(job.seed, "random_mask", job.level))
    if job.mask_in is not None:
        return prune.load(job.mask_in, level=job.level, seed=job.seed)
    if job.prune_from is None:
        return None
    prev_weights, prev_mask = job.prune_from
    weights = _checkpoint_of(job, prev_weights)["state_dict"]
    names = models.prunable(model, job.network, job.prune_exclude)
    if prev_mask:
        mask = prune.load(prev_mask, level=job.level - 1, seed=job.seed)
    else:
        mask = prune.full_mask(weights, names)
    return prune.global_magnitude(weights, mask, job.prune_fraction)


@dataclass
class Prepared:
    """One job's start, after everything that precedes training (data, mask, perturbation, task)."""

    job: Job
    hp: TrainingHparams
    ds: data.Dataset
    dev: torch.device
    model: torch.nn.Module
    init_std: dict
    mask: dict | None  # the sub-network's mask (written as out_mask)
    train_mask: dict | None  # what training applies (a temporary pretext head stays dense)
    perturbed: dict  # perturbation bookkeeping for the metrics file
    task: tasks.Task | None
    main_classes: int
    opts: RunOptions
    recorder: telemetry.Recorder | None
    total: int
    ipe: int


def prepare(job: Job, ds: data.Dataset, dev: torch.device) -> Prepared:
    """Build the job's starting model, mask, perturbation, task and options (no training)."""
    hp = TrainingHparams.from_dict(job.hparams)
    model, init_std = build_start(job, dev)
    mask = make_mask(job, model)
    perturbed = apply_perturbation(job, model, mask, init_std) if job.perturbation else {}
    task, batch_fn, main_classes, train_mask = None, None, ds.num_classes, mask
    if job.task is not None:
        # Pre-training (Section 6): the task's head (rotation: 4-way), labels and batch transform;
        # the test set gets the same transform once, so evaluation measures the pretext task.
        task = tasks.get(job.task)
        if task.num_classes and task.num_classes != main_classes:
            models.replace_head(model, task.num_classes, rng.generator(job.seed, "pretext_head"))
            model.to(dev)
            if mask:  # the temporary pretext head is dense; the body keeps its mask (6.4)
                head = models.output_layer(model) + "."
                train_mask = {k: v for k, v in mask.items() if not k.startswith(head)}
        if task.relabel is not None:
            ds = dataclasses.replace(ds, train_y=task.relabel(ds.train_y, job.seed))
        if task.batch is not None:
            test_x, test_y = task.batch(ds.test_x, ds.test_y, rng.generator(job.seed, "task_eval"))
            ds = dataclasses.replace(ds, test_x=test_x, test_y=test_y)

            def batch_fn(x, y, it, _task=task, _seed=job.seed):
                return _task.batch(x, y, tasks.batch_generator(_seed, it))

    n = ds.train_x.shape[0]
    total, ipe = hp.total_iterations(n), hp.iterations_per_epoch(n)
    start = start_iteration(job, ipe)
    recorder, extra_evals, tel = None, list(job.eval_iterations), job.telemetry or {}
    if job.out_telemetry is not None:
        points = telemetry.schedule(
            min(int(tel.get("iterations", 4000)), total),
            int(tel.get("dense_until", 10)),
            int(tel.get("points", 60)),
        )
        Path(job.workdir).mkdir(parents=True, exist_ok=True)
        recorder = telemetry.Recorder(
            model,
            models.prunable(model, job.network),
            points,
            job.seed,
            Path(job.workdir) / "telemetry.h5",
            grad_sample=telemetry.grad_sample(ds, int(tel.get("grad_sample", 2048)), job.seed),
            grad_batch=hp.batch_size,
        )
        extra_evals += points
    opts = options_from_runtime(
        job.runtime,
        seed=job.seed,
        start_iteration=start,
        data_stream=job.data_stream,
        eval_iterations=eval_schedule(total, ipe, job.eval_every, extra_evals),
        eval_subset=int(tel.get("eval_subset") or 0),
        eval_subset_until=int(tel.get("eval_subset_until", -1)),
        snapshot_iterations=sorted(int(k) for k in job.snapshots),
        batch_fn=batch_fn,
    )
    return Prepared(
        job,
        hp,
        ds,
        dev,
        model,
        init_std,
        mask,
        train_mask,
        perturbed,
        task,
        main_classes,
        opts,
        recorder,
        total,
        ipe,
    )


def start_iteration(job: Job, ipe: int) -> int:
    """The absolute iteration a job's start state stands at (see Job.start_iteration)."""
    return int(job.start_iteration) + round(float(job.start_epochs) * ipe)


def tensors_sha256(tensors: dict | None) -> str:
    """sha256 of named tensors' contents (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors or {}):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def run_identity(p: Prepared) -> str:
    """What makes this run this run, beyond train.train's own settings: the contents of the start
    weights (after initialisation or checkpoint, perturbation and pretext head) and of the mask,
    the perturbation and its random key, the task, the verified data content, network, seed and
    hyperparameters. Call it before training (the model trains in place); ``train`` folds it
    into its resume fingerprint, so a state saved under any other start is never continued."""
    job = p.job
    parts = (
        tensors_sha256(p.model.state_dict()),
        tensors_sha256(p.mask),
        tensors_sha256(p.train_mask),
        job.perturbation,
        job.perturb_key,
        job.task,
        job.init_purpose,
        p.ds.provenance.get("sha256_content", ""),
        job.network,
        job.seed,
        p.hp.to_dict(),
    )
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def describe(p: Prepared) -> str:
    start = p.opts.start_iteration
    return (
        f"{p.job.network} seed {p.job.seed}: iterations {start}..{p.total} "
        f"({p.total - start} steps, {p.ipe}/epoch) on {p.dev}, "
        f"{torch.get_num_threads()} thread(s)"
        + (f", {prune.remaining_fraction(p.mask):.4f} of weights kept" if p.mask else "")
    )


def finish(
    p: Prepared, metrics, snapshots: dict, started: float, log=print, extra=None, kernels=()
) -> dict:
    """Write the job's declared outputs (snapshots, telemetry, final weights, mask, metrics last)
    from the trained model; returns the metrics file's root attributes."""
    job, hp, model = p.job, p.hp, p.model
    if p.task is not None and p.task.num_classes and p.task.num_classes != p.main_classes:
        # The pre-trained state feeds CIFAR-10 training: a fresh 10-way head (Section 6.2).
        models.replace_head(model, p.main_classes, rng.generator(job.seed, "main_head"))
    meta = {"hparams": hp.to_dict(), "seed": job.seed, "code_version": code_version()}
    dev = p.dev
    attrs = {
        **job.attrs,
        **p.perturbed,
        "network": job.network,
        "seed": job.seed,
        "level": job.level,
        "hparams": hp.to_dict(),
        "config_hash": config_hash(
            job.hparams, job.eval_every, job.init is None, job.prune_fraction
        ),
        "code_version": meta["code_version"],
        "torch_version": torch.__version__,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),  # tools/overhead.py reads sacct with it
        "python": platform.python_version(),
        "data_file": str(job.data_path),
        # recomputed from the arrays this job loaded and checked against the file (data.load)
        "data_sha256_train": p.ds.provenance.get("sha256_train_images", ""),
        "data_sha256": p.ds.provenance.get("sha256_content", ""),
        "init": job.init or f"random(seed={job.seed})",
        "total_iterations": p.total,
        "start_iteration": p.opts.start_iteration,
        "precision": device.effective_precision(p.opts.precision, dev),
        "iterations_per_epoch": p.ipe,
        "n_train": int(p.ds.train_x.shape[0]),
        "n_test": int(p.ds.test_x.shape[0]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "weights_remaining_fraction": prune.remaining_fraction(p.mask) if p.mask else 1.0,
        # the kernels each stretch of training ran on (device.kernels; > 1 entry: resumed on
        # other kernels, so not bit-identical to an uninterrupted run)
        "kernels": json.dumps(list(kernels)),
        **(extra or {}),
    }
    # Outputs: snapshots first (moved out of the workdir), then final weights, mask and metrics.
    for k, out in job.snapshots.items():
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(snapshots[int(k)], out)
    if p.recorder is not None:
        Path(job.out_telemetry).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p.recorder.write({"network": job.network, "seed": job.seed}), job.out_telemetry)
    checkpoint.save(
        job.out_final, model.state_dict(), iteration=p.total, network=job.network, meta=meta
    )
    if job.out_mask is not None:
        prune.save(job.out_mask, p.mask, level=job.level, meta=meta)
    write_run(
        job.out_metrics,
        metrics,
        attrs,
        sparsity=prune.counts(p.mask) if p.mask else None,
        init_std=p.init_std if job.init is None else None,
    )
    _clean_workdir(Path(job.workdir))
    log(
        f"done: {job.network} seed {job.seed} final test accuracy "
        f"{metrics.eval_accuracy[-1]:.4f}, "
        f"{metrics.images / max(metrics.train_seconds, 1e-9):.0f} img/s"
    )
    return attrs


def _clean_workdir(workdir: Path) -> None:
    """Remove a finished job's workdir, except resume states set aside as stale (evidence)."""
    if not workdir.is_dir():
        return
    stale = [p for p in workdir.iterdir() if ".stale-" in p.name]
    if not stale:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for p in workdir.iterdir():
        if p in stale:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _run(j: Job, p: Prepared) -> Run:
    return Run(p.model, p.ds, p.opts, j.workdir, p.train_mask, run_identity(p), p.recorder)


def run(job: Job, log: Callable[[str], None] = print) -> dict:
    """Train one job and write its declared outputs; returns the metrics file's root attributes."""
    return run_group([job], log=log)[0]


def run_group(
    jobs: list[Job],
    method: str = "grouped",
    log: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
    on_evaluate: Callable[[int, list[tuple]], None] | None = None,
) -> list[dict]:
    """Train jobs of one network together in one process (``runtime.runs_per_job``;
    ``train.train_runs``) and write each job's outputs exactly as a job of its own would. The jobs
    may differ in seed, start state, mask, perturbation, task labels and data stream; they must
    share the network, the hyperparameters, the data and the start iteration. The batch resumes
    like a single run (its state lives in the first job's workdir); telemetry needs a job of its
    own. ``on_step`` and ``on_evaluate`` are ``train.train_runs``'s hooks (progress, deadlines).
    Returns each job's metrics-file root attributes."""
    if not jobs:
        raise ValueError("run_group needs at least one job")
    first = jobs[0]
    for j in jobs:
        for name in ("network", "hparams", "data_path", "eval_every", "task", "runtime"):
            if getattr(j, name) != getattr(first, name):
                raise ValueError(
                    f"jobs of one group must share {name}: {getattr(first, name)!r} (seed "
                    f"{first.seed}) vs {getattr(j, name)!r} (seed {j.seed})"
                )
        if len(jobs) > 1 and j.out_telemetry:
            raise ValueError(f"seed {j.seed}: telemetry needs a job of its own (runs_per_job 1)")
    clock = JobClock()  # this process started, imported torch and the package, and is here
    device.configure_from(first.runtime, first.threads)
    dev = device.select_from(first.runtime)
    clock.mark("device")
    ds = data.load(first.data_path, dev)
    clock.mark("data")
    prepared = [prepare(j, ds, dev) for j in jobs]
    clock.mark("prepare")
    for p in prepared:
        log(describe(p))
    starts = {p.opts.start_iteration for p in prepared}
    if len(starts) != 1:
        raise ValueError(f"jobs of one group must share their start iteration, not {starts}")
    if len(jobs) > 1:
        log(f"training {len(jobs)} runs together ({method})")
    started = time.time()
    results = train_runs(
        [_run(j, p) for j, p in zip(jobs, prepared, strict=True)],
        prepared[0].hp,
        network=first.network,
        method=method,
        log=log,
        on_step=clock.on_step if on_step is None else _both(clock.on_step, on_step),
        on_evaluate=on_evaluate,
    )
    clock.mark("train")
    extra = {"runs_per_job": len(jobs), "multirun_method": method} if len(jobs) > 1 else {}
    extra["job_phase_seconds"] = json.dumps(clock.phases())  # up to the end of training
    out = [
        finish(p, r.metrics, r.snapshots, started, log, extra, r.kernels)
        for p, r in zip(prepared, results, strict=True)
    ]
    clock.mark("write")
    log("job phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in clock.phases().items()))
    return out


def _both(first: Callable, second: Callable) -> Callable:
    def call(*args):
        first(*args)
        second(*args)

    return call


class JobClock:
    """Where a training job's wall time goes beside the training itself: the seconds of each
    phase -- the Snakemake process that runs the job (on SLURM it parses the workflow first) up
    to the start of this process, its imports (torch), device set-up, the data (read and
    sha256-checked), preparing the runs, the first step (with compilation, when compiled), the
    rest of training with its evaluations, and writing the outputs."""

    def __init__(self):
        try:  # (psutil comes with Snakemake; a bare GPU node may lack it)
            import psutil
        except ImportError:  # the phases then start here, without the process start and imports
            self.marks = [("clock_start", time.time())]
            self._calls = 0
            return
        me = psutil.Process()
        self.marks = [("process_start", me.create_time())]
        try:
            parent = me.parent()
            if parent is not None and "snakemake" in " ".join(parent.cmdline()):
                self.marks = [
                    ("snakemake_start", parent.create_time()),
                    ("snakemake", me.create_time()),
                ]
        except psutil.Error:  # the parent is gone or hidden: start at this process
            pass
        self.mark("imports")
        self._calls = 0

    def mark(self, phase: str) -> None:
        """``phase`` ends now (it began where the previous one ended)."""
        self.marks.append((phase, time.time()))

    def on_step(self, it: int) -> None:
        self._calls += 1
        if self._calls == 2:  # train_runs calls it before the first step and after every step
            self.mark("first_step")

    def phases(self) -> dict:
        """{phase: seconds}, in order."""
        return {
            name: round(t - t_prev, 3)
            for (_, t_prev), (name, t) in zip(self.marks, self.marks[1:], strict=False)
        }
