"""Which run a per-run file stands for, from its path, and the check that it records that run.

Every file under a run directory (``results/{net}/seed{seed}/<run>/...``; the scheme is in the
Snakefile header) belongs to one run, and its metrics file records that run's identity (network,
seed, level, experiment, series, rewind_iteration; ``docs/results-schema.md``). A reader checks the
two against each other, so a file copied over another run's (seed 2's level 2 over seed 1's) or
left from another chain or variant is refused, naming the file, what it records and what it is
read for, instead of being summarised as that run.
"""

from __future__ import annotations

import re

_RUN = re.compile(r"(?:^|.*/)results/(?P<net>[a-z][a-z0-9_]*)/seed(?P<seed>\d+)/(?P<run>.+)/[^/]+$")
_KINDS = [
    (re.compile(r"dense"), lambda m: {"experiment": "dense", "series": "dense", "level": 0}),
    (
        re.compile(r"imp/rewind(?P<k>\d+)/level(?P<level>\d+)"),
        lambda m: {"experiment": "imp", "series": f"rewind{m['k']}",
                   "rewind_iteration": int(m["k"]), "level": int(m["level"])},
    ),
    (
        re.compile(r"imp/(?P<source>pretrain/[a-z][a-z0-9_]*/e[0-9.]+)/level(?P<level>\d+)"),
        lambda m: {"experiment": "imp", "series": m["source"], "level": int(m["level"])},
    ),
    (
        re.compile(r"perturb/rewind(?P<k>\d+)/level(?P<level>\d+)/(?P<variant>[^/]+)"),
        lambda m: {"experiment": "perturb", "series": m["variant"],
                   "rewind_iteration": int(m["k"]), "level": int(m["level"])},
    ),
    (
        re.compile(r"pretrain/(?P<task>[a-z][a-z0-9_]*/e[0-9.]+)"),
        lambda m: {"experiment": "pretrain", "series": m["task"], "level": 0},
    ),
    (
        re.compile(r"sparse/rewind\d+/level(?P<level>\d+)/(?P<kind>[a-z]+)/(?P<start>[a-z]+)"),
        lambda m: {"experiment": "sparse_pretrain", "series": f"{m['kind']}_{m['start']}",
                   "level": int(m["level"])},
    ),
    (  # instability analysis: one copy, and the interpolation between the two (stability.py)
        re.compile(r"stability/(?P<sub>dense|level(?P<level>\d+))/k(?P<k>\d+)(?:/(?P<copy>copy\d+))?"),
        lambda m: {"experiment": "stability",
                   "series": m["sub"] + (f"/{m['copy']}" if m["copy"] else ""),
                   "rewind_iteration": int(m["k"]), "level": int(m["level"] or 0)},
    ),
]  # fmt: skip


def from_path(path) -> dict:
    """The identity a file at ``path`` must record: network and seed for any file under a run
    directory, plus experiment, series, level and rewind_iteration where the path names them.
    ``{}`` for a path outside the scheme (files of other layouts are checked by their keys)."""
    m = _RUN.fullmatch(str(path).replace("\\", "/"))
    if not m:
        return {}
    out = {"network": m["net"], "seed": int(m["seed"])}
    for pattern, fields in _KINDS:
        k = pattern.fullmatch(m["run"])
        if k:
            out.update(fields(k))
            break
    return out


def _same(recorded, expected) -> bool:
    if isinstance(expected, int) and not isinstance(expected, bool):
        try:
            return int(recorded) == expected and float(recorded) == expected
        except (TypeError, ValueError):
            return False
    return str(recorded) == str(expected)


def check(path, recorded: dict, expected: dict, read_for: str = "") -> None:
    """Raise ValueError naming ``path``, every differing key with the recorded and the expected
    value, and what the file was read for, unless ``recorded`` agrees with ``expected``."""
    wrong = [
        f"{key} {recorded[key]!r} (expected {value!r})"
        if key in recorded
        else f"no {key} (expected {value!r})"
        for key, value in expected.items()
        if key not in recorded or not _same(recorded[key], value)
    ]
    if wrong:
        what = f" read for {read_for}" if read_for else ""
        raise ValueError(
            f"{path}{what} records {', '.join(wrong)}: it belongs to another run (copied or left "
            "over from one). Delete it and re-run the job that makes it."
        )


def describe(expected: dict) -> str:
    """``resnet20 seed 1 imp rewind500 level 2``: a run's identity in words, for messages."""
    parts = [
        expected.get("network"),
        f"seed {expected['seed']}" if "seed" in expected else None,
        expected.get("series"),
        f"level {expected['level']}" if "level" in expected else None,
    ]
    return " ".join(str(p) for p in parts if p is not None)
