"""GPU measurements: the check before spending GPU-hours, one command for a short GPU slot, the
job sizes a profile needs, and the table of a measurement (docs/gpu.md).

    python -m pipeline_scripts.tools.gpu check [--budget-s 360]  # tools/gpu_check.py
    python -m pipeline_scripts.tools.gpu efficiency [--budget-s 480]   # tools/gpu_efficiency.py
    python -m pipeline_scripts.tools.gpu lease --out-dir D [--data F] [--budget-s 840]
    python -m pipeline_scripts.tools.gpu lease --continue D      # tools/lease.py
    python -m pipeline_scripts.tools.gpu grid      # img/s per network x N x precision x graphs
    python -m pipeline_scripts.tools.gpu sizes [--from F]   # runtime job sizes for config.yaml
    python -m pipeline_scripts.tools.gpu all       # grid, sizes and the protocol's GPU-hours
    python -m pipeline_scripts.tools.gpu imp --data F        # Figure 1's headline at paper scale
    python -m pipeline_scripts.tools.gpu table F   # a check's or grid's img/s as a Markdown table

``grid`` times ``train.train_runs`` itself (bench.StepClock: warm-up, then windows of whole steps,
the median reported) with N runs batched in one process (``multirun``: the plain model for N = 1,
``grouped`` or ``vmap`` above), and N one-run processes sharing the GPU (time-slicing, or CUDA MPS
with ``--mps``), in each precision, with and without CUDA graphs (on a CPU: ``torch.compile``'s
default mode instead, so the compile path is exercised). Every measurement configures the device
exactly as a training job does (``device.configure_from`` with the config's ``runtime``), resets
Dynamo before each configuration (the networks share one ``forward``, so one process would
otherwise hit Dynamo's recompile limit and silently run eager), records per row whether compiled
graphs and CUDA graphs really ran (Dynamo's and Inductor's counters), records a row that fails
(out of memory, a compile error) and goes on, writes its JSON after every row, and stops what it
started (the MPS daemon, worker processes). ``python -m pipeline_scripts.tools.cost --bench``
projects GPU-hours from its rows (or from a check's).

``sizes`` turns the rows in the jobs' configuration (config.yaml's precision and CUDA-graph
switch) into ``runtime.minutes_per_run``, ``runs_per_job`` and ``packing_speedup``; with
``--from F`` it reads them from a grid or check file instead of measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline_scripts.earlyphase import data, device, models, wholestep
from pipeline_scripts.tools import bench, cost

NETWORKS = models.PAPER_NETWORKS
ROOT = Path(__file__).resolve().parents[2]
# A GPU plan: the GPU is the contended resource, so other processes' CPU use is not a reason to
# drop a window (the process-sharing measurement runs N processes on purpose).
GPU_PLAN = bench.Plan(warmup_steps=20, warmup_s=3.0, window_s=2.0, windows=5, max_other_cores=1e9)


def configure(threads: int | None = None) -> dict:
    """The device configuration of a training job (config.yaml's ``runtime``); returns it."""
    runtime = cost.load_config([])["runtime"]
    device.configure_from(runtime, threads or int(runtime.get("threads", 2)))
    return runtime


def _dataset(path: str | None, dev: torch.device, quick: bool, tmp: Path) -> data.Dataset:
    return data.load(path, dev) if path else bench._synthetic(tmp, quick, dev)


def _peak(dev: torch.device, precision: str, plan: bench.Plan) -> float:
    """torch.mm GFLOP/s in ``precision`` (bf16 operands for bf16; the TF32 switch for tf32), on
    matrices that fill the device: 8192 x 8192 on CUDA (an H200 reaches well under its TF32 peak
    on 2048 x 2048), 512 x 512 on a CPU."""
    device.set_precision(device.effective_precision(precision, dev))
    n = 8192 if dev.type == "cuda" else 512
    if precision != "bf16":
        return bench.matmul_peak(dev, plan, n=n, windows=3)["gflops"]
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    sync = bench._sync_for(dev)
    torch.mm(a, a)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        torch.mm(a, a)
    sync()
    return 2 * n**3 * 10 / (time.perf_counter() - t) / 1e9


def compiled_counts() -> dict:
    """What Dynamo, Inductor and the whole-step graphs (``wholestep.built``) did since the last
    ``_fresh_compiler``."""
    from torch._dynamo.utils import counters

    return {
        "frames_compiled": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
        **{f"whole_steps_{k}": v for k, v in wholestep.built.items()},
    }


def _fresh_compiler() -> None:
    """Each configuration compiles from scratch: no cached frames, counters at zero."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for k in wholestep.built:
        wholestep.built[k] = 0


def in_process(net, ds, n, precision, graphs, method, plan, compile=False) -> float:
    return bench.time_group(
        net, ds, n, method, plan, cuda_graphs=graphs, compile=compile, precision=precision
    ).median


@contextlib.contextmanager
def _workers(cmds: list[list[str]]):
    """Start the processes; whatever happens, none outlives the block."""
    procs = []
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def processes(net, data_path, n, precision, graphs, plan_s: float, quick: bool) -> float:
    """Aggregate img/s of ``n`` one-run processes sharing the device, timed together."""
    with tempfile.TemporaryDirectory(prefix="gpu-share-") as tmp:
        go = Path(tmp) / "go"
        cmd = [sys.executable, "-m", "pipeline_scripts.tools.gpu", "worker", "--network", net]
        cmd += ["--precision", precision, "--go", str(go), "--seconds", str(plan_s)]
        cmd += [*(["--data", data_path] if data_path else []), *(["--graphs"] if graphs else [])]
        cmd += ["--quick"] if quick else []
        with _workers([cmd] * n) as procs:
            for p in procs:  # each prints "ready" once warmed up
                line = p.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"a sharing worker failed to start (said {line!r})")
            go.touch()
            outs = [p.communicate()[0] for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"a sharing worker failed: {[p.returncode for p in procs]}")
        return sum(json.loads(o.strip().splitlines()[-1])["img_s"] for o in outs)


def worker(args) -> int:
    configure()
    dev = device.select("auto")
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(args.data, dev, args.quick, Path(tmp))
        warm = bench.Plan(
            warmup_steps=10, warmup_s=1.0, window_s=1.0, windows=1, max_other_cores=1e9
        )
        kw = {"cuda_graphs": args.graphs, "compile": args.compile, "precision": args.precision}
        bench.time_group(args.network, ds, 1, "grouped", warm.scaled(args.quick), **kw)
        print("ready", flush=True)
        while not Path(args.go).exists():
            time.sleep(0.01)
        plan = bench.Plan(
            warmup_steps=2, warmup_s=0.0, window_s=args.seconds / 3, windows=3, max_other_cores=1e9
        ).scaled(args.quick)
        t = bench.time_group(args.network, ds, 1, "grouped", plan, **kw)
    print(json.dumps({"img_s": t.median}), flush=True)
    return 0


def measure_row(row: dict, ds, data_path, plan, peaks, fwd, args) -> dict:
    """Time one configuration; a failure is recorded in the row, not raised. On CUDA the row
    also records the most device memory its process held (``max_memory_mb``: what a job of that
    configuration needs, data set included)."""
    _fresh_compiler()
    cuda = ds.train_x.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        if row["mode"] == "processes":
            img_s = processes(
                row["network"],
                data_path,
                row["n"],
                row["precision"],
                row["cuda_graphs"],
                args.share_seconds,
                args.quick,
            )
        else:
            method = "grouped" if row["mode"] == "single" else row["mode"]
            if "deterministic" in row:  # this row's kernels; the jobs' again afterwards
                device.configure(torch.get_num_threads(), row["deterministic"])
            img_s = in_process(
                row["network"],
                ds,
                row["n"],
                row["precision"],
                row["cuda_graphs"],
                method,
                plan,
                compile=row.get("compile", False),
            )
        row.update(img_s=img_s, fraction_of_peak=3 * fwd * img_s / 1e9 / peaks[row["precision"]])
    except Exception as e:  # noqa: BLE001 - out of memory, compile errors: record, go on
        row.update(img_s=None, fraction_of_peak=None, error=f"{type(e).__name__}: {e}"[:500])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    finally:
        if "deterministic" in row:
            configure(torch.get_num_threads())
    row["seconds"] = time.perf_counter() - t
    if cuda and row["mode"] != "processes":
        row["max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if row["mode"] != "processes":  # the workers' compilers are their own
        counts = compiled_counts()
        row["compiled"] = counts
        # the whole step captured in a CUDA graph (wholestep; CUDA only)
        row["graphs_ran"] = counts["whole_steps_captured"] > 0
    return row


def grid_rows(args) -> list[dict]:
    rows = []
    for net in args.networks:
        for precision in args.precisions:
            for graphs in args.graphs:
                for compile in args.compile:
                    for n in args.n:
                        for mode in ["grouped", *args.also]:
                            if mode == "processes" and (not args.processes or n == 1 or compile):
                                continue
                            if mode == "vmap" and (n == 1 or graphs or compile):  # never whole
                                continue
                            rows.append(
                                {
                                    "network": net,
                                    "n": n,
                                    "mode": mode if n > 1 else "single",
                                    "precision": precision,
                                    "cuda_graphs": graphs,
                                    "compile": compile,
                                }
                            )
    return rows


def grid(args, log=print, write=lambda result: None, rows=None, plan=GPU_PLAN, each=iter) -> dict:
    """Time ``rows`` (default: ``grid_rows(args)``) one after another, writing the result after
    every row; ``each`` hands out the rows (``budget.Part.items``: only while time lasts)."""
    runtime = configure()
    dev = device.select("auto")
    plan = plan.scaled(args.quick)
    out = {
        "device": bench._machine(dev, torch.get_num_threads())["device"],
        "runtime": {k: runtime.get(k) for k in ("deterministic", "threads", "precision")},
        "complete": False,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(args.data, dev, args.quick, Path(tmp))
        rows = grid_rows(args) if rows is None else rows
        precisions = sorted({r["precision"] for r in rows})
        out["matmul_gflops"] = peaks = {p: _peak(dev, p, plan) for p in precisions}
        fwd = {}
        for row in each(rows):
            net = row["network"]
            if net not in fwd:
                fwd[net] = bench.forward_flops(net, dev, bench.BATCH_SIZE.get(net, 128))
            out["rows"].append(measure_row(row, ds, args.data, plan, peaks, fwd[net], args))
            log(_row(row, out["device"]))
            write(out)
    out["complete"] = len(out["rows"]) == len(rows)
    out["machine"] = {"device": out["device"]}
    write(out)
    return out


def step_kind(r: dict) -> str:
    """How a row's step ran: rows measured before the whole-step graph (no ``compile`` key) had
    their forward and backward compiled into CUDA graphs when ``cuda_graphs`` was on; kernels
    chosen without determinism (cuDNN autotuning) say so."""
    if "compile" not in r:
        kind = "fwd+bwd Inductor, CUDA graphs" if r["cuda_graphs"] else "eager"
    else:
        parts = [
            p for p, on in (("Inductor", r["compile"]), ("CUDA graph", r["cuda_graphs"])) if on
        ]
        kind = "whole step: " + ", ".join(parts) if parts else "eager"
    return kind + (", autotuned" if r.get("deterministic") is False else "")


def _row(r: dict, dev: str) -> str:
    head = (
        f"{dev}  {r['network']:<9} N={r['n']:<3} {r['mode']:<9} {r['precision']:<5} "
        f"{step_kind(r):<30} "
    )
    if r.get("error"):
        return head + f"FAILED: {r['error']}"
    ran = "" if "graphs_ran" not in r else f"  (graphs ran: {'yes' if r['graphs_ran'] else 'no'})"
    return head + f"{r['img_s']:>10.0f} img/s  {100 * r['fraction_of_peak']:5.1f}% of mm peak" + ran


def sizes(
    result: dict,
    runtime: dict,
    max_runs: int | None = None,
    n_train: int = 50_000,
    epochs: int = 160,
    margin: float = 1.3,
) -> dict:
    """Job sizes per network from a ``grid`` (or ``check``) result's rows in the configuration
    jobs run in (``runtime``'s precision and CUDA-graph setting; ``cost.throughput``):
    ``minutes_per_run`` (one 160-epoch run alone, +30 %), ``runs_per_job`` (the smallest measured
    N within 10 % of the best aggregate rate, at most ``max_runs``: a seed group holds at most
    the config's seeds), ``packing_speedup`` (that N's aggregate rate over one run's; ``rate``
    interpolates an N that was not measured) and ``variants_per_job`` (the rest of that N as
    perturbation variants: the smallest over the networks)."""
    rates = cost.throughput(result, runtime)
    if not rates:
        raise RuntimeError(
            f"no successful row in the jobs' configuration (precision {runtime.get('precision')}, "
            f"cuda_graphs {runtime.get('cuda_graphs')}): nothing to size jobs from"
        )
    minutes, per_job, speedup, variants = {}, {}, {}, []
    for net, r in sorted(rates.items()):
        minutes[net] = round(n_train * epochs / r["train"] / 60 * margin, 1)
        points = {1: r["train"], **r["packed"]}
        best = max(points.values())
        wanted = min(k for k, v in points.items() if v >= 0.9 * best)
        n = min(wanted, max_runs) if max_runs else wanted
        per_job[net] = n
        speedup[net] = round(cost.rate(r, n) / r["train"], 2)
        variants.append(max(1, wanted // n))  # the rest of the packing: perturbation variants
    return {
        "minutes_per_run": {**minutes, "default": max(minutes.values())},
        "runs_per_job": {**per_job, "default": 1},
        "packing_speedup": {**speedup, "default": 1},
        # one number for all networks (the smallest): a perturbation job trains runs_per_job
        # seeds x this many variants (its time limit is not scaled by packing_speedup)
        "variants_per_job": min(variants),
    }


@contextlib.contextmanager
def mps_daemon(start: bool, log=print):
    """The CUDA MPS control daemon for the block, when asked and available; stopped after."""
    control = shutil.which("nvidia-cuda-mps-control")
    if not (start and control):
        if start:
            log("--mps: nvidia-cuda-mps-control not found; processes share the GPU by time-slicing")
        yield False
        return
    subprocess.run([control, "-d"], check=True)
    try:
        yield True
    finally:
        subprocess.run([control], input="quit\n", text=True, check=False)


def _grid_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", help="prepared HDF5 (default: synthetic images for throughput)")
    s.add_argument("--networks", nargs="+", default=list(NETWORKS))
    s.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    s.add_argument("--precisions", nargs="+", default=["tf32", "bf16", "fp32"])
    s.add_argument(
        "--graphs", type=lambda v: v == "on", nargs="+", default=[False, True], help="on / off"
    )
    s.add_argument(
        "--compile", type=lambda v: v == "on", nargs="+", default=[False], help="on / off"
    )
    s.add_argument("--also", nargs="*", default=["processes"], help="vmap, processes")
    s.add_argument("--processes", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--share-seconds", type=float, default=6.0)
    s.add_argument("--mps", action="store_true", help="start the CUDA MPS daemon first")
    s.add_argument(
        "--quick", action="store_true", help="tiny sizes (CPU tests; figures mean nothing)"
    )
    s.add_argument("--out-dir", default="bench/out/gpu")


def _parser() -> argparse.ArgumentParser:
    """The subcommands (module docstring) and their arguments."""
    from pipeline_scripts.tools import gpu_check, gpu_efficiency, lease

    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("grid", "sizes", "all"):
        s = sub.add_parser(name)
        _grid_args(s)
        if name == "sizes":
            s.add_argument("--from", dest="source", help="a grid or check JSON: read, not measure")
    s = sub.add_parser("check", help="the GPU check within a time budget (tools/gpu_check.py)")
    _grid_args(s)
    s.add_argument(
        "--budget-s",
        type=float,
        default=gpu_check.DEFAULT_BUDGET_S,
        help="seconds the whole check may take (it stops itself in time; exit 3: parts skipped)",
    )
    s.add_argument("--skip-tests", action="store_true", help="leave out part (a)")
    s = sub.add_parser("efficiency", help="launches, one run, packing, kernel settings")
    _grid_args(s)
    s.add_argument("--budget-s", type=float, default=gpu_efficiency.DEFAULT_BUDGET_S)
    s.add_argument("--cost", action="store_true", help="the protocol's GPU-hours (Snakemake)")
    lease.add_arguments(sub.add_parser("lease", help="one GPU slot: check, then Table A1's runs"))
    lease.add_imp_arguments(sub.add_parser("imp", help="Figure 1's headline at paper scale"))
    s = sub.add_parser("table", help="a check's or grid's img/s rows as a Markdown table")
    s.add_argument("file")
    s = sub.add_parser("worker")
    for flag in ("--network", "--precision", "--go", "--data"):
        s.add_argument(flag)
    s.add_argument("--graphs", action="store_true")
    s.add_argument("--compile", action="store_true")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--seconds", type=float, default=6.0)
    s = sub.add_parser("startup")
    s.add_argument("--t0", required=True)
    s.add_argument("--network", default="resnet20")
    s.add_argument("--data", required=True)
    s.add_argument("--graphs", action="store_true")
    s.add_argument("--compile", action="store_true")
    return p


def writer(outdir: Path, name: str):
    """A function writing a result to ``<outdir>/<name>.json`` (atomically, by a rename)."""

    def to_file(result):
        tmp = outdir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(outdir / f"{name}.json")

    return to_file


def sizes_yaml(sz: dict, where: str) -> str:
    """``sizes`` as the lines of config.yaml's ``runtime`` block."""
    lines = [f"  # measured: {where}"]
    for key in ("minutes_per_run", "runs_per_job", "packing_speedup"):
        lines.append(f"  {key}: {{" + ", ".join(f"{k}: {v}" for k, v in sz[key].items()) + "}")
    lines.append(f"  variants_per_job: {sz['variants_per_job']}")
    return "\n".join(lines)


def _grid_and_sizes(args, outdir: Path) -> None:
    """``grid``, ``sizes`` and ``all``: the grid (or, for ``sizes --from``, a file's rows), the
    job sizes from it, and for ``all`` the protocol's GPU-hours projected from it."""
    config = cost.load_config([])
    rt = config["runtime"]
    if args.cmd == "sizes" and args.source:
        result = json.loads(Path(args.source).read_text())
        where = f"{args.source} ({result.get('device', '?')})"
    else:
        if args.cmd == "sizes":  # only what a job runs: the config's precision and graphs switch
            args.precisions, args.graphs, args.also = [rt["precision"]], [rt["cuda_graphs"]], []
        with mps_daemon(args.mps):
            result = grid(args, write=writer(outdir, "grid"))
        where = result["device"]
    try:
        sz = sizes(result, rt, max_runs=len(config["seeds"]))
    except RuntimeError as e:
        print(f"no job sizes: {e}")
        return
    writer(outdir, "sizes")(sz)
    print(
        f"# config.yaml runtime for {len(config['seeds'])} seeds, precision {rt['precision']}, "
        f"cuda_graphs {str(rt['cuda_graphs']).lower()}:"
    )
    print(sizes_yaml(sz, where))
    if args.cmd == "all":
        est = cost.estimate(config, cost.dag([]), result)
        writer(outdir, "cost")(est)
        print(cost.report(est, result["device"]))


def table(result: dict) -> str:
    """A check's or grid's rows as a Markdown table: img/s per configuration."""
    grid_ = result.get("grid", result)
    lines = [
        "| network | N | mode | precision | step | img/s | graphs ran |",
        "| --- | ---: | --- | --- | --- | ---: | --- |",
    ]
    for r in grid_["rows"]:
        img = "failed" if r.get("error") else f"{r['img_s']:,.0f}"
        ran = {True: "yes", False: "no", None: "–"}[r.get("graphs_ran")]
        lines.append(
            f"| {r['network']} | {r['n']} | {r['mode']} | {r['precision']} | {step_kind(r)} | "
            f"{img} | {ran} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    if args.cmd == "startup":
        from pipeline_scripts.tools import gpu_check

        return gpu_check.startup(args)
    if args.cmd == "table":
        print(table(json.loads(Path(args.file).read_text())))
        return 0
    if args.cmd == "check":
        from pipeline_scripts.tools import gpu_check

        return gpu_check.main(args)
    if args.cmd == "efficiency":
        from pipeline_scripts.tools import gpu_efficiency

        return gpu_efficiency.main(args)
    if args.cmd in ("lease", "imp"):
        from pipeline_scripts.tools import lease

        return lease.main(args)
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    _grid_and_sizes(args, outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
