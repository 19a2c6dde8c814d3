"""The one metrics layout (house habit 7): every training job writes the same HDF5 file.

``docs/results-schema.md`` is the reference page for this layout; keep the two in step.

    /                    attrs: schema, run provenance and the run's headline numbers
    /train/iteration     int64 (n,)   step count at the end of each logging window
    /train/loss          float64 (n,) mean training cross-entropy over that window (nats)
    /eval/iteration      int64 (m,)   steps taken when the test set was evaluated
    /eval/loss           float64 (m,) mean test cross-entropy (nats)
    /eval/accuracy       float64 (m,) test accuracy, fraction in [0, 1]
    /eval/train_seconds  float64 (m,) training wall time (s, evaluation excluded) at that point
    /eval/n              int64 (m,)   test images in that evaluation (a subset at telemetry points)
    /sparsity/...        per prunable tensor: name, total and remaining counts (masked runs only)
    /init_std/...        per conv/linear weight: its initialisation std (dense runs)
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from .atomic import atomic_path

SCHEMA = "earlyphase-metrics/1"


def _attr(value):
    """HDF5-storable form of an attribute: str subclasses (torch.__version__) as plain str,
    numeric lists as arrays, anything structured as sorted JSON."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict | list | tuple) and not (
        isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value)
    ):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "none"
    return value


def write_names_values(group: h5py.Group, names, **columns) -> None:
    group.create_dataset("name", data=np.array([str(n) for n in names], dtype=h5py.string_dtype()))
    for key, col in columns.items():
        group.create_dataset(key, data=np.asarray(col))


def write_run(
    path, metrics, attrs: dict, *, sparsity: dict | None = None, init_std: dict | None = None
) -> None:
    """Write one run's metrics file atomically. ``metrics`` is a ``train.Metrics``."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            for key, value in attrs.items():
                f.attrs[key] = _attr(value)
            acc = metrics.eval_accuracy
            f.attrs["final_test_accuracy"] = float(acc[-1]) if acc else float("nan")
            f.attrs["final_test_loss"] = float(metrics.eval_loss[-1]) if acc else float("nan")
            f.attrs["train_seconds"] = float(metrics.train_seconds)
            f.attrs["eval_seconds"] = float(metrics.eval_seconds)
            f.attrs["images"] = int(metrics.images)  # training images processed (T - start steps)
            f.attrs["images_per_second"] = (
                metrics.images / metrics.train_seconds if metrics.train_seconds else float("nan")
            )
            t = f.create_group("train")
            t.create_dataset("iteration", data=np.asarray(metrics.train_iteration, dtype=np.int64))
            t.create_dataset("loss", data=np.asarray(metrics.train_loss, dtype=np.float64))
            e = f.create_group("eval")
            e.create_dataset("iteration", data=np.asarray(metrics.eval_iteration, dtype=np.int64))
            e.create_dataset("loss", data=np.asarray(metrics.eval_loss, dtype=np.float64))
            e.create_dataset("accuracy", data=np.asarray(acc, dtype=np.float64))
            e.create_dataset(
                "train_seconds", data=np.asarray(metrics.eval_wall_seconds, dtype=np.float64)
            )
            e.create_dataset("n", data=np.asarray(getattr(metrics, "eval_n", []), dtype=np.int64))
            if sparsity is not None:
                g = f.create_group("sparsity")
                names = list(sparsity)
                total = [sparsity[k][0] for k in names]
                remaining = [sparsity[k][1] for k in names]
                write_names_values(
                    g,
                    names,
                    total=np.asarray(total, dtype=np.int64),
                    remaining=np.asarray(remaining, dtype=np.int64),
                )
                g.attrs["remaining_fraction"] = sum(remaining) / max(1, sum(total))
            if init_std is not None:
                write_names_values(
                    f.create_group("init_std"),
                    list(init_std),
                    std=np.asarray(list(init_std.values()), dtype=np.float64),
                )


def read_attrs(path) -> dict:
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an {SCHEMA} file")
        return {
            k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v)
            for k, v in f.attrs.items()
        }
