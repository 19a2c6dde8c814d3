"""Resume state of the training loop (train.train_runs): what makes a saved state this batch's,
where it goes, how a stale or damaged one is set aside, and SIGTERM as a flag the loop polls."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import torch

RESUME_FORMAT = "earlyphase-resume/3"  # /2: one state per run of the batch; /3: sgd.SGD state


@contextlib.contextmanager
def sigterm_flag():
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


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<stem>.stale-<UTC time><suffix>`` beside it (never deleted: evidence)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.stem}.stale-{stamp}{path.suffix}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.stem}.stale-{stamp}-{n}{path.suffix}"), n + 1
    path.rename(target)
    return target


def resume_state(path: Path, device, fingerprint: str, recorder, log) -> dict | None:
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


def fingerprint_of(runs, hp, opts, eval_at, snapshot_at, total, start, precision, method) -> str:
    """Everything that shapes the trajectory: a resume state from other settings is not used."""

    def one(r) -> tuple:
        return (
            r.opts.seed,
            sorted(r.mask) if r.mask else None,
            r.identity,
            *((r.opts.data_stream,) if r.opts.data_stream else ()),
            *((r.recorder.settings(),) if hasattr(r.recorder, "settings") else ()),
        )

    shared = (
        hp.to_dict(),
        sorted(eval_at),
        sorted(snapshot_at),
        opts.eval_subset,
        opts.eval_subset_until,
        total,
        start,
        *((precision,) if precision != "fp32" else ()),
    )
    if len(runs) == 1:
        return repr((shared, one(runs[0])))
    return repr((shared, method, [one(r) for r in runs]))
