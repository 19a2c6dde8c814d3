"""Collect many runs' metrics files into one summary HDF5: one table per plotted series.

Every figure of the paper is "final test accuracy against something, mean +- std over seeds"
(Section 3: "mean and standard deviation across five replicates"). A *series* is one line of such a
plot: ``rewind500`` (IMP rewinding to iteration 500, Figure 1), ``dense`` (the unpruned reference),
``shuffle_layer`` (a perturbation, Section 5), ``pretrain_rotation_e40`` (Section 6), and so on. Each
series has one row per pruning *level* and one column per *seed*. Figures read only this file, so
re-drawing a plot never opens hundreds of metrics files. ``docs/results-schema.md`` documents it.

    /                          attrs: schema, seeds (int64, every seed in any series), caller's attrs
    /series/<name>/level             int64   (L,)   pruning levels present, ascending
    /series/<name>/remaining_percent float64 (L,)   mean over seeds of 100 * weights_remaining_fraction
    /series/<name>/accuracy          float64 (L, S) final test accuracy (%), NaN where a seed is missing
    /series/<name>/mean              float64 (L,)   mean over the seeds present (%)
    /series/<name>/std               float64 (L,)   sample std (ddof=1) over those seeds; 0 with one
    /series/<name>/n                 int64   (L,)   number of seeds present
    /series/<name>/paths             str     (L, S) metrics file of each cell, "" where missing

Columns of ``accuracy`` and ``paths`` follow the root ``seeds`` attribute, the same for every series.
Series appear in the file (and in ``read_summary``'s dict) in order of first appearance in the
entries.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from . import identity, metrics
from .atomic import atomic_path

SCHEMA = "earlyphase-summary/1"
_FIELDS = ("level", "remaining_percent", "accuracy", "mean", "std", "n", "paths")
_ATTRS_KEY = "_attrs"  # read_summary's key for the root attributes


def _check_series_name(name) -> None:
    """Series names become HDF5 group names, so they must be usable as one path component."""
    if not isinstance(name, str) or not name or name in (".", _ATTRS_KEY) or "/" in name:
        raise ValueError(
            f"invalid series name {name!r}: need a non-empty string without '/', "
            f"other than '.' and {_ATTRS_KEY!r}"
        )


def _run_numbers(path: str, extra: tuple = (), expect: dict | None = None, read_for: str = ""):
    """(final test accuracy fraction, weights remaining fraction, [extra attrs]) of one run, after
    checking that the file records the identity ``expect`` (identity.check)."""
    try:
        attrs = metrics.read_attrs(path)
    except (OSError, KeyError) as e:  # missing file, not HDF5 at all
        raise ValueError(f"{path} is not a readable {metrics.SCHEMA} metrics file ({e})") from e
    identity.check(path, attrs, expect or {}, read_for)
    try:
        acc = float(attrs["final_test_accuracy"])
        remaining = float(attrs["weights_remaining_fraction"])
    except KeyError as e:
        raise ValueError(f"metrics file {path} lacks the root attribute {e}") from e
    if not np.isfinite(acc):
        raise ValueError(f"metrics file {path} has no final test accuracy (was it ever evaluated?)")
    return acc, remaining, [float(attrs.get(name, np.nan)) for name in extra]


def _attr_value(value):
    """HDF5 attributes cannot hold dicts or None: store those as JSON, like metrics files do."""
    if value is None or isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def summarise(entries: list[dict], out_path, attrs: dict | None = None, extra: tuple = ()) -> None:
    """Write the summary of ``entries`` (dicts with series, level, seed, path) to ``out_path``.

    ``extra`` names further numeric root attributes of the metrics files (e.g. the perturbations'
    ``effective_std``) to gather as ``/series/<name>/<attr>`` (levels x seeds, NaN where absent).

    Every file must record the seed and level of its entry, and what the entry's optional
    ``expect`` dict names (network, experiment, series, rewind_iteration: ``identity.from_path``).

    Raises ValueError for an invalid series name, a (series, level, seed) given twice (naming both
    files), a path that is not a metrics file with a final test accuracy (naming it), or a file
    that records another run than the entry it is read for (naming both).
    """
    if not entries:
        raise ValueError("summarise needs at least one entry")
    cells, expects = _cells(entries)
    seeds = sorted({seed for table in cells.values() for _, seed in table})
    out = {
        series: _series_table(series, table, seeds, extra, expects)
        for series, table in cells.items()
    }
    _write_summary(out_path, seeds, attrs or {}, out, extra)


def _cells(entries: list[dict]) -> tuple[dict[str, dict[tuple[int, int], str]], dict[str, dict]]:
    """{series: {(level, seed): path}} of the entries, in order of first appearance, and per path
    the identity its file must record (the entry's ``expect`` plus its seed and level)."""
    cells: dict[str, dict[tuple[int, int], str]] = {}
    expects: dict[str, dict] = {}
    for entry in entries:
        series, level, seed, path = entry["series"], entry["level"], entry["seed"], entry["path"]
        _check_series_name(series)
        key = (int(level), int(seed))
        table = cells.setdefault(series, {})
        if key in table:
            raise ValueError(
                f"series {series!r} level {key[0]} seed {key[1]} given twice: "
                f"{table[key]} and {path}"
            )
        table[key] = str(path)
        expects[str(path)] = {**entry.get("expect", {}), "seed": key[1], "level": key[0]}
    return cells, expects


def _series_table(
    series: str, table: dict[tuple[int, int], str], seeds: list[int], extra, expects: dict
) -> dict[str, np.ndarray]:
    """One series' levels x seeds table (``_FIELDS`` and the ``extra`` attributes), read from its
    metrics files."""
    column = {seed: j for j, seed in enumerate(seeds)}
    levels = sorted({level for level, _ in table})
    row = {level: i for i, level in enumerate(levels)}
    acc = np.full((len(levels), len(seeds)), np.nan)
    remaining = np.full_like(acc, np.nan)
    paths = np.full(acc.shape, "", dtype=object)
    gathered = {name: np.full_like(acc, np.nan) for name in extra}
    for (level, seed), path in table.items():
        read_for = f"series {series!r} level {level} seed {seed}"
        a, r, values = _run_numbers(path, tuple(extra), expects[path], read_for)
        i, j = row[level], column[seed]
        acc[i, j], remaining[i, j], paths[i, j] = 100.0 * a, 100.0 * r, path
        for name, value in zip(extra, values, strict=True):
            gathered[name][i, j] = value
    n = np.sum(~np.isnan(acc), axis=1).astype(np.int64)
    # Every row has at least one seed, so nanmean never sees an all-NaN row.
    mean = np.nanmean(acc, axis=1)
    # Sample std (ddof=1), the usual estimate from a few replicates; a single seed has no
    # spread to estimate, so it gets 0 (drawn as no band) rather than NaN.
    std = np.array([np.nanstd(r, ddof=1) if k > 1 else 0.0 for r, k in zip(acc, n, strict=True)])
    return {
        "level": np.asarray(levels, dtype=np.int64),
        "remaining_percent": np.nanmean(remaining, axis=1),
        "accuracy": acc,
        "mean": mean,
        "std": std,
        "n": n,
        "paths": paths,
        **gathered,
    }


def _write_summary(out_path, seeds: list[int], attrs: dict, out: dict, extra) -> None:
    """The summary file (module docstring), written atomically."""
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["seeds"] = np.asarray(seeds, dtype=np.int64)
            for key, value in attrs.items():
                if key in ("schema", "seeds"):
                    raise ValueError(f"attribute {key!r} is reserved in summary files")
                f.attrs[key] = _attr_value(value)
            root = f.create_group("series", track_order=True)
            for series, data in out.items():
                g = root.create_group(series)
                for name in (*_FIELDS, *extra):
                    if name == "paths":
                        g.create_dataset(name, data=data[name], dtype=h5py.string_dtype())
                    else:
                        g.create_dataset(name, data=data[name])


def read_summary(path) -> dict[str, dict[str, np.ndarray]]:
    """``{series: {level, remaining_percent, accuracy, mean, std, n, paths}}`` plus the root
    attributes under ``"_attrs"``. ``paths`` comes back as a str array."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an {SCHEMA} file")
        result: dict = {
            _ATTRS_KEY: {
                k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
            }
        }
        for series, g in f["series"].items():
            data = {name: g[name][()] for name in g if name != "paths"}
            data["paths"] = np.asarray(g["paths"].asstr()[()], dtype=str)
            result[series] = data
    return result


def series_names(summary: dict) -> list[str]:
    """The series of a ``read_summary`` result, in file order (without ``"_attrs"``)."""
    return [name for name in summary if name != _ATTRS_KEY]
