"""Planning-time checks of a configuration: every mistake that can be seen before a job runs.

``rules/common.smk`` calls ``coerce`` (numbers given on the command line), then Snakemake's schema
validation (``config.schema.yaml``: types, ranges, unknown keys, uniqueItems, enums), then ``check``
(everything the schema cannot express). Each error names the config key, the offending value and
what to do, and stops ``snakemake -n`` before anything is planned.

``check`` covers: network names against the model registry (``models``) and
``training.per_network`` keys against it, each perturbation variant's parameters against its
kind's signature and accepted values (``perturb.REGISTRY``, by applying it to a two-weight toy
network), task names against ``tasks.REGISTRY``, empty lists that would leave a figure empty
(perturbation levels and rewind points, pre-training durations, sparse levels, IMP rewind points),
``perturb.figure8_level`` among the perturbed levels, every rewind point a checkpoint the dense
runs keep, the data (an image folder's ``data.path`` exists; ``data.n_train`` / ``n_test`` are at
most what the source holds: 50,000 / 10,000 for torchvision's CIFAR-10, the generator's settings
for synthetic data, an image folder's images counted by ``folder_count``), checkpoint iterations
and learning-rate milestones within each network's training length (``epochs * ceil(n_train /
batch_size)``; a milestone at or beyond it would never drop the learning rate), and pre-training
durations whose path spellings (``e{E:g}``) collide or do not fit the path scheme.

The registry checks import torch; Snakemake runs them in a child process (``isolate``), so the
planning process stays without torch, and remembers their success per (names, variants,
registries' code), so an unchanged planning skips them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from . import folder_count
from .data_types import SYNTHETIC_DEFAULTS
from .hparams import TrainingHparams

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000  # torchvision's CIFAR-10 splits
EPOCHS_SPELLING = re.compile(r"\d+(\.\d+)?")  # the {epochs} wildcard of rules/common.smk


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"config key {key}: {message}")
        self.key = key


# ---- numbers given as text (snakemake --config parses values with YAML's BaseLoader) -----------
_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _parse(text: str, types: list[str]):
    """``text`` as the YAML scalar it spells, if that has one of ``types``; else ``text``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if any(_TYPES[t](value) for t in types if t in _TYPES) else text


def coerce(config: dict, schema: dict) -> None:
    """Turn strings into the numbers, booleans or nulls the schema asks for, in place.

    ``snakemake --config seeds=[1]`` hands the workflow ``['1']`` (Snakemake reads --config values
    with YAML's BaseLoader, which keeps every scalar a string), which the schema then rejects;
    a string is converted only where the schema wants no string and the text spells exactly a
    value of a wanted type, so ``seeds=[one]`` still fails naming ``seeds``. Perturbation
    parameters are not typed by the schema and stay as given: a number typed as text there fails
    ``check`` naming the variant (give variants in a config file).
    """
    defs = schema.get("$defs", {})

    def resolve(s):
        while isinstance(s, dict) and "$ref" in s:
            s = defs[s["$ref"].rsplit("/", 1)[-1]]
        return s if isinstance(s, dict) else {}

    def walk(value, s):
        s = resolve(s)
        branches = [resolve(b) for b in s.get("oneOf", s.get("anyOf", []))]
        if branches:  # the branch for the value's shape (mapping, list or scalar)
            kind = (
                "object"
                if isinstance(value, dict)
                else "array"
                if isinstance(value, list)
                else None
            )
            fits = [b for b in branches if b.get("type") == kind] if kind else branches
            if kind is None:
                types = [
                    t
                    for b in fits
                    for t in ([b["type"]] if isinstance(b.get("type"), str) else b.get("type", []))
                ]
                s = {"type": types}
            elif fits:
                s = fits[0]
        if isinstance(value, dict):
            props, extra = s.get("properties", {}), s.get("additionalProperties")
            for key, sub in value.items():
                sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
                if sub_schema is not None:
                    value[key] = walk(sub, sub_schema)
            return value
        if isinstance(value, list):
            items = s.get("items")
            return [walk(v, items) for v in value] if isinstance(items, dict) else value
        types = s.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if isinstance(value, str) and types and "string" not in types and "enum" not in s:
            return _parse(value, types)
        return value

    walk(config, schema)


# ---- the data belongs to the run directory -----------------------------------------------------
def _same_source(a: dict, b: dict) -> bool:
    if a["source"] != b["source"]:
        return False
    if a["source"] != "imagefolder":
        return True
    return os.path.realpath(str(a.get("path"))) == os.path.realpath(str(b.get("path")))


def _describe(d: dict) -> str:
    return d["source"] + (f" from {d['path']}" if d["source"] == "imagefolder" else "")


def data_of_the_run(config: dict, data_file: str, command_line: dict | None) -> str | None:
    """Make the run directory's data the config's: once ``data_file`` exists, its recorded
    source (``source``, ``source_path``) replaces the config's ``data.source``/``data.path``
    from config.yaml and the preset's overlay, so every later command on the run directory
    (``-n``, ``--report``, ``--dag``, a target) plans with the data it was made with, without
    repeating ``--config data=...``. A command whose own ``--config`` (``command_line``) names
    other data is refused (ConfigError on ``data.source``). Returns a line to log when the
    record replaced a differing config value, else None. ``data.path`` is made absolute as
    prepare_data records it, so the two spell it alike (no re-run for a spelling)."""
    if config["data"].get("path"):
        config["data"]["path"] = str(Path(config["data"]["path"]).expanduser().absolute())
    if not os.path.exists(data_file):
        return None
    import h5py  # the planning process stays without torch; h5py is light

    with h5py.File(data_file, "r") as f:
        path = f.attrs.get("source_path")
        recorded = {"source": str(f.attrs["source"]), "path": str(path) if path else None}
    data = config["data"]
    asked = {"source": data["source"], "path": data.get("path")}
    if command_line and ("source" in command_line or "path" in command_line):
        if not _same_source(asked, recorded):
            raise ConfigError(
                "data.source",
                f"this run directory ({os.getcwd()}) was made with data {_describe(recorded)} "
                f"({data_file}); this command asks for {_describe(asked)}. A run directory keeps "
                "its data: drop the data choice from the command to use it, or give the new data "
                "its own run directory (--directory runs/<new name>), or delete this one's "
                "results/ to start it over.",
            )
        return None
    if _same_source(asked, recorded):
        return None
    data["source"], data["path"] = recorded["source"], recorded["path"]
    return (
        f"data: this run directory was made with {_describe(recorded)} ({data_file}); using it "
        f"(the config says {_describe(asked)})"
    )


# ---- the checks -------------------------------------------------------------------------------
DATA_FILE = "results/data/cifar10.h5"  # relative to the run directory (rules/common.smk)


def source_size(config: dict, data_file: str = DATA_FILE, cache_dir=None) -> dict | None:
    """{"train": n, "test": n}: the images ``data.source`` holds before any subset (``None`` if
    that cannot be known: an image folder that is missing or not in the layout, which
    ``_data_and_dense`` reports). An image folder is counted (``folder_count``), once per
    (path, size, modification time) when ``cache_dir`` is given; a run directory whose data file
    was made from this source reads the counts prepare_data recorded."""
    data = config["data"]
    if data["source"] == "synthetic":
        synthetic = {**SYNTHETIC_DEFAULTS, **(data.get("synthetic") or {})}
        return {"train": int(synthetic["n_train"]), "test": int(synthetic["n_test"])}
    if data["source"] == "torchvision":
        return {"train": CIFAR10_TRAIN, "test": CIFAR10_TEST}
    recorded = _recorded_size(data, data_file)
    if recorded is not None:
        return recorded
    path = Path(str(data["path"])).expanduser()
    if not path.exists():
        return None
    stamp = None
    if cache_dir is not None:
        st = path.stat()
        key = hashlib.sha256(f"{path.absolute()}|{st.st_size}|{st.st_mtime_ns}".encode())
        stamp = Path(cache_dir) / "earlyphase-config-check" / f"imagefolder-{key.hexdigest()}"
        if stamp.exists():
            return json.loads(stamp.read_text())
    counts = folder_count.count(path)
    if counts is not None and stamp is not None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps(counts))
        except OSError:  # a read-only directory only costs the next planning the count
            pass
    return counts


def _recorded_size(data: dict, data_file: str) -> dict | None:
    """The source's counts as prepare_data recorded them, if ``data_file`` was made from the
    image folder ``data.path`` (the run directory keeps its data: ``data_of_the_run``)."""
    if not os.path.exists(data_file):
        return None
    import h5py

    with h5py.File(data_file, "r") as f:
        a = f.attrs
        if str(a.get("source")) != "imagefolder" or "n_train_source" not in a:
            return None
        made_from = os.path.realpath(str(a.get("source_path")))
        if made_from != os.path.realpath(str(Path(str(data["path"])).expanduser())):
            return None
        return {"train": int(a["n_train_source"]), "test": int(a["n_test_source"])}


def n_train(config: dict, size: dict | None = None) -> int | None:
    """Training images each job will see, if known before prepare_data runs: ``data.n_train``,
    else the whole training split of the source (``size``, from ``source_size``)."""
    data = config["data"]
    if data.get("n_train") is not None:
        return int(data["n_train"])
    if data["source"] == "synthetic":
        return int({**SYNTHETIC_DEFAULTS, **(data.get("synthetic") or {})}["n_train"])
    if data["source"] == "torchvision":
        return CIFAR10_TRAIN
    return None if size is None else size["train"]


def hparams(config: dict, network: str) -> dict:
    training = config["training"]
    return {**training["defaults"], **training["per_network"].get(network, {})}


CACHE_DIR_VAR = "EARLYPHASE_CACHE_DIR"


def cache_dir() -> Path:
    """Where the planning remembers what it checked (``check``): ``$EARLYPHASE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/earlyphase-pipeline`` (``~/.cache/earlyphase-pipeline``), shared by every
    run directory of the user, so a new run directory or preset plans without the ~3 s registry
    check; ``.snakemake`` of the run directory where that cannot be written."""
    base = os.environ.get(CACHE_DIR_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "earlyphase-pipeline"
    )
    try:
        os.makedirs(base, exist_ok=True)
        if os.access(base, os.W_OK):
            return Path(base)
    except OSError:
        pass
    return Path(".snakemake")


def check(config: dict, cache_dir: str | Path | None = None, isolate: bool = False) -> None:
    """Raise ConfigError for the first mistake found (see module docstring).

    The registry checks import torch. ``isolate`` runs them in a child process (~2 s of CPU
    beside the planning), so the planning process never loads torch: with torch loaded in it,
    planning the full config peaked at 1,046 MB instead of 554 MB (measured). With ``cache_dir``
    (the workflow passes ``cache_dir()``) their success is remembered under a hash of what they
    read (the names and perturbation specs in ``config`` and the registries' source code), so a
    planning whose names, variants and registries did not change skips them; a failure is never
    remembered. An image folder's image count is cached there too (``source_size``)."""
    key = _registry_key(config)
    stamp = Path(cache_dir) / "earlyphase-config-check" / key if cache_dir else None
    if stamp is None or not stamp.exists():
        _registries_in_child(config) if isolate else _registries(config)
        if stamp is not None:
            try:
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.touch()
            except OSError:  # a read-only directory only costs the next planning the check
                pass
    _networks(config)
    _data_and_dense(config, cache_dir)
    _imp(config)
    _perturb(config)
    _pretrain(config)
    _beyond(config)


def _registries_in_child(config: dict) -> None:
    """``_registries`` in a fresh interpreter (see ``check``); its ConfigError is re-raised here."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    code = "from pipeline_scripts.earlyphase.config_check import _child; _child()"
    parts = {
        "networks": config["networks"],
        "training": config["training"],
        "perturb": config["perturb"],
        "pretrain": config["pretrain"],
        "runtime": config["runtime"],
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(parts, default=str),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return
    try:
        error = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"the registry checks of the config failed:\n{proc.stderr}") from None
    raise ConfigError(error["key"], error["message"])


def _child() -> None:
    try:
        _registries(json.load(sys.stdin))
    except ConfigError as e:
        print(json.dumps({"key": e.key, "message": str(e).removeprefix(f"config key {e.key}: ")}))
        sys.exit(1)


def _registry_key(config: dict) -> str:
    here = Path(__file__).resolve().parent
    read = {
        "networks": config["networks"],
        "per_network": sorted(config["training"]["per_network"]),
        "runtime_per_network": {k: sorted(v) for k, v in _per_network_runtime(config).items()},
        "variants": config["perturb"]["variants"],
        "tasks": [config["pretrain"]["tasks"], config["pretrain"]["sparse"]["task"]],
        "code": [
            hashlib.sha256((here / f).read_bytes()).hexdigest()
            for f in ("models.py", "perturb.py", "tasks.py", "config_check.py")
        ],
    }
    return hashlib.sha256(json.dumps(read, sort_keys=True, default=str).encode()).hexdigest()


def _registries(config: dict) -> None:
    """The checks against the model, perturbation and task registries (they import torch)."""
    from . import models, tasks

    for name in config["networks"]:
        try:
            models.check_name(name)
        except ValueError as e:
            raise ConfigError("networks", f"{e}") from e
    per_network = [("training.per_network", config["training"]["per_network"])]
    per_network += [(f"runtime.{k}", v) for k, v in _per_network_runtime(config).items()]
    for key, table in per_network:
        for name in table:
            if key.startswith("runtime.") and name == "default":
                continue
            try:
                models.check_name(name)
            except ValueError as e:
                raise ConfigError(
                    f"{key}.{name}",
                    f"{name!r} is not a network name (a misspelling?), so this setting would apply "
                    f"to no run; configured networks: {config['networks']} ({e})",
                ) from e
    for name, spec in config["perturb"]["variants"].items():
        _check_variant(name, spec)
    pre = config["pretrain"]
    for key, names in (
        ("pretrain.tasks", pre["tasks"]),
        ("pretrain.sparse.task", [pre["sparse"]["task"]]),
    ):
        for task in names:
            if task not in tasks.REGISTRY:
                raise ConfigError(key, f"unknown task {task!r}; known: {sorted(tasks.REGISTRY)}")


def _per_network_runtime(config: dict) -> dict:
    """The runtime settings given per network (runtime.runs_per_job may be one number)."""
    rt = config["runtime"]
    out = {"minutes_per_run": rt["minutes_per_run"], "packing_speedup": rt["packing_speedup"]}
    if isinstance(rt["runs_per_job"], dict):
        out["runs_per_job"] = rt["runs_per_job"]
    return out


def runs_per_job(config: dict) -> dict:
    """{network: runs trained together in one job} for the configured networks
    (``runtime.runs_per_job``: one number for all, or per network with a ``default``)."""
    n = config["runtime"]["runs_per_job"]
    if not isinstance(n, dict):
        return {net: int(n) for net in config["networks"]}
    return {net: int(n.get(net, n.get("default", 1))) for net in config["networks"]}


def _networks(config: dict) -> None:
    for name in config["networks"]:
        try:
            TrainingHparams.from_dict(hparams(config, name))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"training (network {name})", str(e)) from e


def _data_and_dense(config: dict, cache_dir=None) -> None:
    data = config["data"]
    if data["source"] == "imagefolder":
        _image_folder_exists(data)
    size = source_size(config, cache_dir=cache_dir)
    if size is not None:
        for split in ("train", "test"):
            asked = data.get(f"n_{split}")
            if asked is not None and asked > size[split]:
                where = data["path"] if data["source"] == "imagefolder" else data["source"]
                raise ConfigError(
                    f"data.n_{split}",
                    f"{asked:,} {split} images asked for, but the source ({where}) holds "
                    f"{size[split]:,}; ask for at most {size[split]:,}, or null for all of them",
                )
    n = n_train(config, size)
    if n is None:
        return
    for net in config["networks"]:
        hp = TrainingHparams.from_dict(hparams(config, net))
        total = hp.total_iterations(n)
        length = (
            f"{total} iterations (epochs {hp.epochs:g} x ceil({n} training images / batch size "
            f"{hp.batch_size}) = {hp.epochs:g} x {hp.iterations_per_epoch(n)})"
        )
        beyond = sorted(k for k in config["dense"]["checkpoint_iterations"] if k > total)
        if beyond:
            raise ConfigError(
                "dense.checkpoint_iterations",
                f"{beyond} lie beyond the training length of {net}: {length}; the dense run "
                "never reaches them. Lower them (and the rewind points that use them) or train "
                "longer.",
            )
        ipe = hp.iterations_per_epoch(n)
        never = [m for m in hp.milestones if round(m * ipe) >= total]
        if never:
            per_network = "milestones" in config["training"]["per_network"].get(net, {})
            key = f"training.per_network.{net}" if per_network else "training.defaults"
            raise ConfigError(
                f"{key}.milestones",
                f"learning-rate drops at epochs {never} lie at or beyond the training length of "
                f"{net} ({hp.epochs:g} epochs = {length}), so they never happen; drop them "
                "(milestones: [] trains at a constant learning rate) or train longer",
            )


def _image_folder_exists(data: dict) -> None:
    if not data.get("path"):
        raise ConfigError(
            "data.path", "data.source is imagefolder, so data.path must name a directory or .tar.gz"
        )
    path = Path(str(data["path"])).expanduser()
    if path.exists() or _recorded_size(data, DATA_FILE) is not None:
        return  # (a prepared run directory no longer needs its source)
    relative = "" if path.is_absolute() else f" (relative to the run directory {os.getcwd()})"
    raise ConfigError(
        "data.path",
        f"{data['path']} does not exist{relative} (data.source is imagefolder: data.path names "
        "a directory train/<class>/*, test/<class>/* of 32x32 images, or a .tar.gz of one); "
        "give the path of your CIFAR-10 copy, e.g. make laptop DATA=/path/to/cifar10-jpg.tar.gz",
    )


def _imp(config: dict) -> None:
    imp = config["imp"]
    rewinds = sorted(imp["rewind_iterations"])
    _kept_by_dense(
        config, "imp.rewind_iterations", rewinds, "the dense runs must keep those weights"
    )
    if imp["levels"] > 0 and not rewinds:
        raise ConfigError(
            "imp.rewind_iterations",
            "is empty, so Figure 1 would show no IMP chain; name at least one rewind point, or "
            "set imp.levels: 0 to run no IMP",
        )


def _beyond(config: dict) -> None:
    """stability and hessian (beyond the paper): their iterations are states the dense runs keep."""
    st, imp = config["stability"], config["imp"]
    rewinds = sorted(st["rewind_iterations"])
    _kept_by_dense(
        config,
        "stability.rewind_iterations",
        rewinds,
        "the copies start from the dense run's weights at k",
    )
    if rewinds and st["sparse_level"]:
        imp_rewinds = sorted(imp["rewind_iterations"])
        off = sorted(set(rewinds) - set(imp_rewinds))
        if off:
            raise ConfigError(
                "stability.rewind_iterations",
                f"{off} are not in imp.rewind_iterations {imp_rewinds}, so there is no IMP "
                "sub-network to analyse at stability.sparse_level; add them there or set "
                "stability.sparse_level: null (dense only)",
            )
        if st["sparse_level"] > imp["levels"]:
            raise ConfigError(
                "stability.sparse_level",
                f"{st['sparse_level']} lies above imp.levels ({imp['levels']}); pick a level the "
                "IMP chains reach, or null for the dense network only",
            )
    _kept_by_dense(
        config,
        "hessian.iterations",
        config["hessian"]["iterations"] or [],
        "the Hessian is measured at states the dense runs keep",
    )


def _kept_by_dense(config: dict, key: str, iterations, why: str) -> None:
    """Every iteration a config key names must be one of the dense runs' kept checkpoints."""
    ckpts = sorted(config["dense"]["checkpoint_iterations"])
    missing = sorted(set(iterations) - set(ckpts))
    if missing:
        raise ConfigError(
            key, f"{missing} are not in dense.checkpoint_iterations {ckpts}; add them there ({why})"
        )


def running_variants(config: dict) -> dict:
    """The variants that run (``perturb.run`` narrows the catalogue; null = all)."""
    p = config["perturb"]
    return {n: s for n, s in p["variants"].items() if p["run"] is None or n in p["run"]}


def _perturb(config: dict) -> None:
    p, imp = config["perturb"], config["imp"]
    unknown = sorted(set(p["run"] or []) - set(p["variants"]))
    if unknown:
        raise ConfigError(
            "perturb.run",
            f"{unknown} are not defined under perturb.variants ({sorted(p['variants'])})",
        )
    if not running_variants(config):
        return
    rewinds, levels = sorted(p["rewind_iterations"]), sorted(p["levels"])
    empty = "so Figures 4-8 would be empty; name at least one, or set perturb.run: [] to run none"
    if not rewinds:
        raise ConfigError("perturb.rewind_iterations", f"is empty, {empty}")
    if not levels:
        raise ConfigError("perturb.levels", f"is empty, {empty}")
    imp_rewinds = sorted(imp["rewind_iterations"])
    if sorted(set(rewinds) - set(imp_rewinds)):
        raise ConfigError(
            "perturb.rewind_iterations",
            f"{rewinds} must all be in imp.rewind_iterations {imp_rewinds} (a branch perturbs "
            "that IMP chain's sub-network)",
        )
    if max(levels) > imp["levels"]:
        raise ConfigError(
            "perturb.levels",
            f"{[lv for lv in levels if lv > imp['levels']]} lie above imp.levels ({imp['levels']})",
        )
    if p["figure8_level"] not in levels:
        raise ConfigError(
            "perturb.figure8_level",
            f"{p['figure8_level']} is not among perturb.levels {levels}, so Figure 8 would have "
            "no points (and r = nan); pick one of those levels",
        )
    if 0 not in config["dense"]["checkpoint_iterations"]:
        raise ConfigError(
            "dense.checkpoint_iterations",
            "must contain 0: perturbations take signs or magnitudes from iteration 0",
        )


def _check_variant(name: str, spec: dict) -> None:
    """Apply the variant to a toy sub-network: unknown, missing or invalid parameters fail here,
    with the perturbation's own message, instead of in its first job."""
    import torch

    from . import perturb

    key = f"perturb.variants.{name}"
    params = dict(spec)
    kind = params.pop("kind")
    if kind not in perturb.REGISTRY:
        raise ConfigError(
            f"{key}.kind", f"unknown kind {kind!r}; known: {sorted(perturb.REGISTRY)}"
        )
    g = torch.Generator().manual_seed(0)
    w = {
        "a.weight": torch.randn(2, 3, 1, 1, generator=g),
        "b.weight": torch.randn(3, 2, generator=g),
    }
    sources = perturb.Sources(
        weights_k=w,
        weights_0={n: -t for n, t in w.items()},
        fresh={n: 2 * t for n, t in w.items()},
        mask={n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()},
        init_std={n: 1.0 for n in w},
    )
    try:
        perturb.perturb(kind, sources, g, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, f"{e}") from e


def _pretrain(config: dict) -> None:
    pre, imp = config["pretrain"], config["imp"]
    imp_rewinds = sorted(imp["rewind_iterations"])
    spelled: dict[str, float] = {}
    for e in pre["epochs"]:
        s = f"{e:g}"
        if not EPOCHS_SPELLING.fullmatch(s) or not math.isfinite(e):
            raise ConfigError(
                "pretrain.epochs",
                f"{e!r} is spelled {s!r} in output paths (e{{E}}), which the path scheme cannot "
                "hold: use a plain decimal number with at most 6 significant digits",
            )
        if s in spelled:
            raise ConfigError(
                "pretrain.epochs",
                f"{spelled[s]!r} and {e!r} are both spelled e{s} in output paths, so their runs "
                "would share files; make them differ within 6 significant digits",
            )
        spelled[s] = e
    if pre["tasks"]:
        if not pre["epochs"]:
            raise ConfigError(
                "pretrain.epochs",
                "is empty, so Figure 9 would have no pre-trained chain; name at least one "
                "duration, or set pretrain.tasks: [] to pre-train on nothing",
            )
        missing = sorted(set(pre["reference_rewinds"]) - set(imp_rewinds))
        if missing:
            raise ConfigError(
                "pretrain.reference_rewinds",
                f"{missing} are not in imp.rewind_iterations {imp_rewinds}",
            )
    sparse = pre["sparse"]
    if not sparse["kinds"]:
        return
    if sparse["rewind_iteration"] not in imp_rewinds:
        raise ConfigError(
            "pretrain.sparse.rewind_iteration",
            f"{sparse['rewind_iteration']} is not in imp.rewind_iterations {imp_rewinds}",
        )
    if not sparse["levels"]:
        raise ConfigError(
            "pretrain.sparse.levels",
            "is empty, so Figure 10 would be empty; name at least one level, or set "
            "pretrain.sparse.kinds: [] to run no sparse pre-training",
        )
    above = sorted(lv for lv in sparse["levels"] if lv > imp["levels"])
    if above:
        raise ConfigError(
            "pretrain.sparse.levels", f"{above} lie above imp.levels ({imp['levels']})"
        )
