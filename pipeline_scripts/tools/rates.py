"""Training rates from a measurement file: img/s of one run and of N runs in one process per
network (``throughput``), and the rate of a job of any N (``rate``). ``tools.cost`` costs jobs with
them; ``tools.gpu sizes`` sizes jobs with them."""

from __future__ import annotations


def throughput(bench: dict, runtime: dict | None = None) -> dict[str, dict]:
    """network -> {"train": one run's img/s, "eval": img/s or None, "packed": {N: img/s of N runs
    in one process, in all}} from a measurement file: ``tools.bench``'s JSON (CPUs; one run at a
    time), or ``tools.gpu grid`` / ``check``'s (their rows; a check's grid is its ``grid``).

    Of a GPU file's rows only those of the configuration jobs run in are used: the config's
    ``runtime.precision``, ``cuda_graphs`` and ``compile`` (``runtime``; None = the file's rows),
    one process (single, or runs batched in-process as ``runtime.multirun_method`` does; never N
    processes sharing the device), no failed row. A network without such a row has no figure."""
    if "grid" in bench and "rows" not in bench:  # a tools.gpu check file
        bench = bench["grid"]
    if "rows" not in bench:
        out = {}
        for key, e in bench.get("networks", {}).items():
            if e.get("sparsity"):
                continue
            ev = e.get("eval") or {}
            ev_ips = next(iter(ev.values()))["img_s"] if ev else None
            out[e.get("network", key)] = {"train": e["ours"]["img_s"], "eval": ev_ips, "packed": {}}
        return out
    rows = [r for r in bench["rows"] if r.get("img_s") and r["mode"] != "processes"]
    if runtime is not None:
        method = runtime.get("multirun_method", "grouped")
        rows = [
            r
            for r in rows
            if r["precision"] == runtime.get("precision", "tf32")
            and bool(r["cuda_graphs"]) == bool(runtime.get("cuda_graphs", True))
            # (a row from before the whole-step graph has no "compile": it counts for either)
            and bool(r.get("compile", runtime.get("compile", False)))
            == bool(runtime.get("compile", False))
            and r["mode"] in ("single", method)
        ]
    out = {}
    for net in dict.fromkeys(r["network"] for r in rows):
        mine = [r for r in rows if r["network"] == net]
        singles = [r["img_s"] for r in mine if r["n"] == 1]
        if not singles:
            continue
        packed: dict[int, float] = {}
        for r in mine:
            if r["n"] > 1:
                packed[r["n"]] = max(packed.get(r["n"], 0.0), r["img_s"])
        out[net] = {"train": max(singles), "eval": None, "packed": dict(sorted(packed.items()))}
    return out


def rate(r: dict, n: int) -> float:
    """Aggregate training img/s of a job of ``n`` runs of a network with ``throughput`` entry
    ``r``: measured where N = n was measured; between two measured N, linear in N; beyond the
    largest measured N, that N's rate (no further gain assumed); one run at a time where nothing
    batched was measured (CPU benchmarks)."""
    points = {1: r["train"], **{int(k): v for k, v in r.get("packed", {}).items()}}
    if n in points:
        return points[n]
    below = max(k for k in points if k < n)
    above = [k for k in points if k > n]
    if not above:
        return points[below]
    hi = min(above)
    return points[below] + (points[hi] - points[below]) * (n - below) / (hi - below)
