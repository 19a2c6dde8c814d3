"""GPU measurements: the check before spending GPU-hours, the job sizes a profile needs, and the
paper-scale figures (docs/gpu.md).

    python -m pipeline_scripts.tools.gpu check [--data F]   # <= 8 min on one H100/H200: see below
    python -m pipeline_scripts.tools.gpu grid      # img/s per network x N x precision x graphs
    python -m pipeline_scripts.tools.gpu sizes     # runtime.minutes_per_run + runs_per_job (YAML)
    python -m pipeline_scripts.tools.gpu accuracy --data F   # ResNet-20, 160 epochs, 2 seeds
    python -m pipeline_scripts.tools.gpu imp --data F        # Figure 1's headline at paper scale
    python -m pipeline_scripts.tools.gpu all --data F        # grid, sizes, cost, accuracy [, imp]

``check`` answers what must be true before anyone spends GPU-hours, in one JSON
(``<out-dir>/check.json``): (a) the CUDA-only tests (``tests/cuda``: determinism, CUDA vs CPU,
CUDA graphs on/off, grouped vs single, SIGTERM resume, pruned weights stay zero); (b) kernel
launches per training step of ResNet-20 with and without CUDA graphs and masks (profiler); (c)
img/s of ResNet-20 at N = 1 (graphs off/on, tf32/bf16), N = 8 grouped and 8 processes, and of
ResNet-56, VGG-13 and WRN-16-8 at N = 1 in tf32 with graphs off/on, each with its fraction of the
``torch.mm`` peak; (d) a training job's start-up cost (imports, data load and hash, device
set-up, first step, compilation). On a CPU (``--quick``, the test suite) every part runs on tiny
sizes, the CUDA-only tests are reported as skipped with their reason, and the figures mean
nothing.

Every measurement configures the device exactly as a training job does (``device.configure_from``
with the config's ``runtime``), resets Dynamo before each configuration (the networks share one
``forward``, so one process would otherwise hit Dynamo's recompile limit and silently run eager),
records per row whether compiled graphs and CUDA graphs really ran (Dynamo's and Inductor's
counters), records a row that fails (out of memory, a compile error) and goes on, writes its JSON
after every row, and stops what it started (the MPS daemon, worker processes).

``grid`` times ``train.train_runs`` itself (bench.StepClock: warm-up, then windows of whole steps,
the median reported) with N runs batched in one process (``multirun``: the plain model for N = 1,
``grouped`` or ``vmap`` above), and N one-run processes sharing the GPU (time-slicing, or CUDA MPS
with ``--mps``), in each precision, with and without CUDA graphs (on a CPU: ``torch.compile``'s
default mode instead, so the compile path is exercised). Its JSON has a bench.py-compatible
``networks`` section, so ``python -m pipeline_scripts.tools.cost --bench`` projects GPU-hours.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline_scripts.earlyphase import config_check, data, device, models, runs, train
from pipeline_scripts.tools import bench, cost

NETWORKS = models.PAPER_NETWORKS
ROOT = Path(__file__).resolve().parents[2]
PAPER_RESNET20 = (91.5, 0.2)  # Table A1: ResNet-20 test accuracy, mean +- std (%)
# A GPU plan: the GPU is the contended resource, so other processes' CPU use is not a reason to
# drop a window (the process-sharing measurement runs N processes on purpose).
GPU_PLAN = bench.Plan(warmup_steps=20, warmup_s=3.0, window_s=2.0, windows=5, max_other_cores=1e9)
# The check's shorter plan: ~5 s a configuration, so the whole check fits 8 minutes (estimated:
# (a) ~3 min with one cold compile of ResNet-20, (b) ~0.5, (c) 10 rows ~1 plus three cold
# compiles ~2, (d) ~1).
CHECK_PLAN = bench.Plan(warmup_steps=10, warmup_s=1.0, window_s=1.0, windows=3, max_other_cores=1e9)


def configure(threads: int | None = None) -> dict:
    """The device configuration of a training job (config.yaml's ``runtime``); returns it."""
    runtime = cost.load_config([])["runtime"]
    device.configure_from(runtime, threads or int(runtime.get("threads", 2)))
    return runtime


def _dataset(path: str | None, dev: torch.device, quick: bool, tmp: Path) -> data.Dataset:
    return data.load(path, dev) if path else bench._synthetic(tmp, quick, dev)


def _peak(dev: torch.device, precision: str, plan: bench.Plan) -> float:
    """torch.mm GFLOP/s in ``precision`` (bf16 operands for bf16; TF32 switch for tf32)."""
    device.set_precision(device.effective_precision(precision, dev))
    if precision != "bf16":
        return bench.matmul_peak(dev, plan, n=512 if plan.window_s < 1 else 2048)["gflops"]
    n = 4096 if dev.type == "cuda" else 512
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
    """What Dynamo and Inductor did since the last ``torch._dynamo.reset()``."""
    from torch._dynamo.utils import counters

    return {
        "frames_compiled": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
    }


def _fresh_compiler() -> None:
    """Each configuration compiles from scratch: no cached frames, counters at zero."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def in_process(net, ds, n, precision, graphs, method, plan) -> float:
    return bench.time_group(
        net, ds, n, method, plan, cuda_graphs=graphs, compile=graphs, precision=precision
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
        kw = {"cuda_graphs": args.graphs, "compile": args.graphs, "precision": args.precision}
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
    """Time one configuration; a failure is recorded in the row, not raised."""
    _fresh_compiler()
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
            img_s = in_process(
                row["network"], ds, row["n"], row["precision"], row["cuda_graphs"], method, plan
            )
        row.update(img_s=img_s, fraction_of_peak=3 * fwd * img_s / 1e9 / peaks[row["precision"]])
    except Exception as e:  # noqa: BLE001 - out of memory, compile errors: record, go on
        row.update(img_s=None, fraction_of_peak=None, error=f"{type(e).__name__}: {e}"[:500])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["seconds"] = time.perf_counter() - t
    if row["mode"] != "processes":  # the workers' compilers are their own
        counts = compiled_counts()
        row["compiled"] = counts
        # CUDA graphs ran when graphs were compiled and none was skipped; on a CPU the switch
        # compiles in Inductor's default mode (no CUDA graphs exist there)
        row["graphs_ran"] = bool(
            row["cuda_graphs"]
            and ds.train_x.device.type == "cuda"
            and counts["graphs"] > 0
            and counts["cudagraph_skips"] == 0
        )
    return row


def grid_rows(args) -> list[dict]:
    rows = []
    for net in args.networks:
        for precision in args.precisions:
            for graphs in args.graphs:
                for n in args.n:
                    for mode in ["grouped", *args.also]:
                        if mode == "processes" and (not args.processes or n == 1):
                            continue
                        if mode == "vmap" and (n == 1 or graphs):  # refused: see config_check
                            continue
                        rows.append(
                            {
                                "network": net,
                                "n": n,
                                "mode": mode if n > 1 else "single",
                                "precision": precision,
                                "cuda_graphs": graphs,
                            }
                        )
    return rows


def grid(args, log=print, write=lambda result: None, rows=None, plan=GPU_PLAN) -> dict:
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
        for row in rows:
            net = row["network"]
            if net not in fwd:
                fwd[net] = bench.forward_flops(net, dev, bench.BATCH_SIZE.get(net, 128))
            out["rows"].append(measure_row(row, ds, args.data, plan, peaks, fwd[net], args))
            log(_row(row, out["device"]))
            write(out)
    out["complete"] = True
    out["networks"] = _best(out["rows"])
    out["machine"] = {"device": out["device"]}
    write(out)
    return out


def _row(r: dict, dev: str) -> str:
    head = (
        f"{dev}  {r['network']:<9} N={r['n']:<3} {r['mode']:<9} {r['precision']:<5} "
        f"graphs={'on ' if r['cuda_graphs'] else 'off'} "
    )
    if r.get("error"):
        return head + f"FAILED: {r['error']}"
    ran = "" if "graphs_ran" not in r else f"  (graphs ran: {'yes' if r['graphs_ran'] else 'no'})"
    return head + f"{r['img_s']:>10.0f} img/s  {100 * r['fraction_of_peak']:5.1f}% of mm peak" + ran


def _best(rows: list[dict]) -> dict:
    """bench.py-compatible ``networks``: the best aggregate img/s per network (cost.py)."""
    out = {}
    for r in rows:
        if r.get("img_s") is None:
            continue
        best = out.get(r["network"])
        if best is None or r["img_s"] > best["ours"]["img_s"]:
            out[r["network"]] = {"ours": {"img_s": r["img_s"]}, "setting": r}
    return out


def sizes(result: dict, n_train: int = 50_000, epochs: int = 160, margin: float = 1.3) -> dict:
    """runtime.minutes_per_run (one run alone, +30%) and runs_per_job (the smallest N within 10%
    of the best aggregate rate) per network, from a ``grid`` result's successful rows."""
    minutes, per_job = {}, {}
    ok = [r for r in result["rows"] if r.get("img_s")]
    for net in sorted({r["network"] for r in ok}):
        rows = [r for r in ok if r["network"] == net and r["mode"] != "processes"]
        singles = [r["img_s"] for r in rows if r["n"] == 1]
        if not singles:
            continue
        minutes[net] = round(n_train * epochs / max(singles) / 60 * margin, 1)
        best = max(r["img_s"] for r in rows)
        per_job[net] = min(r["n"] for r in rows if r["img_s"] >= 0.9 * best)
    if not minutes:
        raise RuntimeError("no grid row succeeded: nothing to size jobs from")
    return {
        "minutes_per_run": {**minutes, "default": max(minutes.values())},
        "runs_per_job": {**per_job, "default": 1},
    }


# ----------------------------------------------------------------------------------------------
# check: (a) CUDA-only tests, (b) launches per step, (c) img/s, (d) start-up cost


def cuda_tests(out_dir: Path, log=print) -> dict:
    """Part (a): tests/cuda in a pytest process; per test its outcome (skipped ones say why)."""
    xml = out_dir / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/cuda", "-p", "no:xdist", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=", "-q", "-rs", f"--junitxml={xml}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    import xml.etree.ElementTree as ET

    tests = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (el.get("message") or "")[:300]
        tests.append({"test": case.get("name"), "outcome": outcome, "detail": detail})
    passed = sum(t["outcome"] == "passed" for t in tests)
    log(f"(a) CUDA tests: {passed}/{len(tests)} passed, exit status {proc.returncode}")
    for t_ in tests:
        if t_["outcome"] != "passed":
            log(f"    {t_['test']}: {t_['outcome']} {t_['detail']}")
    return {"exit_status": proc.returncode, "seconds": time.perf_counter() - t, "tests": tests}


def launches_per_step(net: str, ds, graphs: bool, masked: bool, steps: int = 6) -> dict:
    """Part (b): device-kernel launches (CUDA: kernel and graph launch calls) or operators
    (CPU) per training step, from the profiler, after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    _fresh_compiler()
    dev = ds.train_x.device
    hp = bench._hparams(net, None)
    model = bench._model(net, 1, dev)
    mask = bench.sparse_mask(model, net) if masked else None
    opts = train.RunOptions(seed=1, checkpoint_seconds=1e12, cuda_graphs=graphs, compile=graphs)
    warm = 3
    counted = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    prof = profile(activities=activities)

    def on_step(it):
        bench._sync_for(dev)()
        if it == warm:
            prof.start()
        if it == warm + steps:
            prof.stop()
            raise bench._Enough

    bench.train_until_stopped(model, ds, hp, opts, on_step, network=net, mask=mask)
    events = prof.key_averages()
    if dev.type == "cuda":
        names = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuLaunchKernelEx")
        counted = {e.key: e.count for e in events if e.key in names}
        total = sum(counted.values())
    else:
        total = sum(e.count for e in events if e.key.startswith("aten::"))
    out = {"per_step": total / steps, "by_kind": {k: v / steps for k, v in counted.items()}}
    out["compiled"] = compiled_counts()
    return out


def startup(args) -> int:
    """Part (d), child process: the phases of a training job's start, in seconds from the
    process start, printed as JSON (importing this module has already loaded torch)."""
    t0 = float(args.t0)
    marks = {"imports": time.time() - t0}
    runtime = configure()
    dev = device.select("auto")
    ds = data.load(args.data, dev)  # reads and sha256-checks the arrays, as every job does
    marks["data_loaded"] = time.time() - t0
    if dev.type == "cuda":
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
    marks["device_ready"] = time.time() - t0
    model = bench._model(args.network, 1, dev)
    opts = train.options_from_runtime(
        {**runtime, "cuda_graphs": args.graphs, "compile": args.graphs},
        seed=1,
        checkpoint_seconds=1e12,
    )
    steps = []

    def on_step(it):
        bench._sync_for(dev)()
        steps.append(time.time() - t0)
        if len(steps) == 4:
            raise bench._Enough

    hp = bench._hparams(args.network, None)
    bench.train_until_stopped(model, ds, hp, opts, on_step, network=args.network)
    marks["first_step_done"] = steps[1]  # model built, first step compiled (graphs) and run
    marks["steady_step"] = steps[3] - steps[2]
    print(json.dumps(marks), flush=True)
    return 0


def startup_cost(
    network: str, graphs: bool, data_path: str | None, cache: str | None = None
) -> dict:
    """Part (d): run ``startup`` in a fresh process (as a job starts) and return its phases;
    without ``data_path`` on a small synthetic data file made beforehand; ``cache``: the
    compilers' cache directory (Inductor's and Triton's), as the workflow sets it per run."""
    env = {**os.environ}
    if cache:
        env |= {
            "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
            "TRITON_CACHE_DIR": f"{cache}/triton",
        }
    with tempfile.TemporaryDirectory() as tmp:
        if data_path is None:
            data_path = str(Path(tmp) / "synthetic.h5")
            data.prepare(data_path, "synthetic", synthetic={"n_train": 512, "n_test": 128}, seed=0)
        argv = ["startup", "--network", network, "--data", data_path] + (
            ["--graphs"] if graphs else []
        )
        code = (
            "import time; t0 = time.time(); import sys; "
            "from pipeline_scripts.tools import gpu; "
            f"sys.exit(gpu.main({argv!r} + ['--t0', repr(t0)]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env
        )
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_rows(quick: bool) -> list[dict]:
    """Part (c)'s configurations (a fixed list sized to fit the 8-minute budget)."""
    r20 = [("resnet20", 1, "single", p, g) for p in ("tf32", "bf16") for g in (False, True)] + [
        ("resnet20", 8, "grouped", "tf32", True),
        ("resnet20", 8, "processes", "tf32", False),
    ]
    big = [
        (net, 1, "single", "tf32", g)
        for net in ("resnet56", "vgg13", "wrn16_8")
        for g in (False, True)
    ]
    if quick:  # CPU: the narrow test network stands in for all, N = 2 for 8
        r20 = [("resnet8_w4", 1, "single", "fp32", g) for g in (False, True)]
        r20 += [
            ("resnet8_w4", 2, "grouped", "fp32", False),
            ("resnet8_w4", 2, "processes", "fp32", False),
        ]
        big = []
    keys = ("network", "n", "mode", "precision", "cuda_graphs")
    return [dict(zip(keys, r, strict=True)) for r in r20 + big]


def check(args, write, log=print) -> dict:
    """The GPU check (module docstring): parts (a)-(d) into one JSON, written after each part."""
    started = time.perf_counter()
    dev = device.select("auto")
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "quick": bool(args.quick),
        "complete": False,
    }
    if not args.skip_tests:
        result["tests"] = cuda_tests(Path(args.out_dir), log)
        write(result)
    configure()
    net = "resnet8_w4" if args.quick else "resnet20"
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(args.data, dev, args.quick, Path(tmp))
        result["launches"] = {}
        for graphs in (False, True):
            for masked in (False, True):
                key = f"graphs_{'on' if graphs else 'off'}_mask_{'on' if masked else 'off'}"
                try:
                    result["launches"][key] = launches_per_step(net, ds, graphs, masked)
                except Exception as e:  # noqa: BLE001
                    result["launches"][key] = {"error": f"{type(e).__name__}: {e}"[:500]}
                log(
                    f"(b) {net} {key}: {result['launches'][key].get('per_step', 'failed')} per step"
                )
        write(result)
    sub = argparse.Namespace(**{**vars(args), "share_seconds": 1.0 if args.quick else 3.0})
    result["grid"] = grid(
        sub,
        plan=CHECK_PLAN,
        log=lambda s: log("(c) " + s),
        rows=check_rows(args.quick),
        write=lambda g: (result.__setitem__("grid", g), write(result)),
    )
    with tempfile.TemporaryDirectory() as cache:  # compiled twice: a cold, then a warm cache
        result["startup"] = {
            "graphs_off": startup_cost(net, False, args.data, cache),
            "graphs_on_cold_cache": startup_cost(net, True, args.data, cache),
            "graphs_on_warm_cache": startup_cost(net, True, args.data, cache),
        }
    for k, v in result["startup"].items():
        log(
            f"(d) start-up, {k}: "
            + ", ".join(f"{p} {s:.1f} s" for p, s in v.items() if isinstance(s, float))
        )
    result["seconds"] = time.perf_counter() - started
    result["complete"] = True
    write(result)
    log(f"check done in {result['seconds']:.0f} s")
    return result


# ----------------------------------------------------------------------------------------------
# paper-scale figures


def _hparams(config: dict, args) -> dict:
    """The network's Table A1 hyperparameters from config.yaml; --epochs shortens (tests only)."""
    hp = config_check.hparams(config, args.network)
    if not args.epochs:
        return hp
    return {
        **hp,
        "epochs": args.epochs,
        "milestones": [m for m in hp["milestones"] if m < args.epochs],
    }


def _job(root: Path, name: str, network, seed, data_path, hp, rt, eval_every, **kw) -> runs.Job:
    w = root / name
    return runs.Job(
        network=network,
        seed=seed,
        data_path=data_path,
        hparams=hp,
        runtime=rt,
        eval_every=eval_every,
        workdir=str(w / "resume"),
        out_final=str(w / "final.pt"),
        out_metrics=str(w / "metrics.h5"),
        threads=int(rt.get("threads", 2)),
        **kw,
    )


def _final_acc(job) -> float:
    import h5py

    with h5py.File(job.out_metrics) as f:
        return float(f["eval/accuracy"][-1])


def accuracy(args, log=print) -> dict:
    """ResNet-20 trained for the paper's 160 epochs, one seed at a time, as a job runs it (the
    config's runtime: default precision, deterministic kernels)."""
    config = cost.load_config([])
    hp = _hparams(config, args)
    rt = config["runtime"]
    dev = device.select_from(rt)
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": device.effective_precision(rt["precision"], dev),
        "paper_table_a1": PAPER_RESNET20,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            job = _job(Path(tmp), f"s{seed}", args.network, seed, args.data, hp, rt, 16)
            t = time.perf_counter()
            runs.run(job, log=log)
            out["runs"].append(
                {"seed": seed, "accuracy": _final_acc(job), "wall_s": time.perf_counter() - t}
            )
    accs = [100 * r["accuracy"] for r in out["runs"]]
    out["mean"], out["std"] = statistics.mean(accs), statistics.pstdev(accs)
    log(
        f"{args.network} {hp['epochs']:g} epochs on {out['device']} ({out['precision']}): "
        f"{out['mean']:.2f} +- {out['std']:.2f}% (paper 91.5 +- 0.2), "
        f"{statistics.median(r['wall_s'] for r in out['runs']):.0f} s per run"
    )
    return out


def imp(args, log=print) -> dict:
    """One seed of ResNet-20's IMP chains rewound to 0 and to 500, down to 16.8% of weights."""
    config = copy.deepcopy(cost.load_config([]))
    hp = _hparams(config, args)
    rt = config["runtime"]
    out = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "chains": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        snaps = {k: str(root / f"dense_iter{k}.pt") for k in args.rewinds}
        dense = _job(
            root, "dense", args.network, args.seed, args.data, hp, rt, 160, snapshots=snaps
        )
        runs.run(dense, log=log)
        out["dense"] = _final_acc(dense)
        for k in args.rewinds:
            prev_final, prev_mask, accs = dense.out_final, None, []
            for level in range(1, args.levels + 1):
                j = _job(
                    root,
                    f"k{k}/level{level}",
                    args.network,
                    args.seed,
                    args.data,
                    hp,
                    rt,
                    160,
                    init=snaps[k],
                    level=level,
                    prune_from=(prev_final, prev_mask),
                    out_mask=str(root / f"k{k}_m{level}.pt"),
                    start_iteration=k if config["rewinding"]["schedule"] == "framework" else 0,
                )
                runs.run(j, log=log)
                accs.append(_final_acc(j))
                prev_final, prev_mask = j.out_final, j.out_mask
            out["chains"][k] = {"accuracy_by_level": accs, "remaining": 0.8**args.levels}
    return out


# ----------------------------------------------------------------------------------------------


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
    s.add_argument("--also", nargs="*", default=["processes"], help="vmap, processes")
    s.add_argument("--processes", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--share-seconds", type=float, default=6.0)
    s.add_argument("--mps", action="store_true", help="start the CUDA MPS daemon first")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--out-dir", default="bench/out/gpu")


def _parser() -> argparse.ArgumentParser:
    """The subcommands (module docstring) and their arguments."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("grid", "sizes", "all"):
        s = sub.add_parser(name)
        _grid_args(s)
        s.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
        s.add_argument("--with-imp", action="store_true", help="all: also the IMP chains (hours)")
        s.add_argument("--network", default="resnet20", help="all: the accuracy/IMP network")
        s.add_argument("--epochs", type=float, help="all: shorten accuracy/IMP runs (tests)")
    s = sub.add_parser("check", help="the GPU check: CUDA tests, launches, img/s, start-up")
    _grid_args(s)
    s.add_argument("--skip-tests", action="store_true", help="leave out part (a)")
    s = sub.add_parser("accuracy")
    s.add_argument("--data", required=True)
    s.add_argument("--network", default="resnet20")
    s.add_argument("--epochs", type=float, help="override (tests); default: the paper's")
    s.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    s.add_argument("--out-dir", default="bench/out/gpu")
    s = sub.add_parser("imp")
    s.add_argument("--data", required=True)
    s.add_argument("--network", default="resnet20")
    s.add_argument("--epochs", type=float, help="override (tests); default: the paper's")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--rewinds", type=int, nargs="+", default=[0, 500])
    s.add_argument("--levels", type=int, default=8)
    s.add_argument("--out-dir", default="bench/out/gpu")
    s = sub.add_parser("worker")
    for flag in ("--network", "--precision", "--go", "--data"):
        s.add_argument(flag)
    s.add_argument("--graphs", action="store_true")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--seconds", type=float, default=6.0)
    s = sub.add_parser("startup")
    s.add_argument("--t0", required=True)
    s.add_argument("--network", default="resnet20")
    s.add_argument("--data", required=True)
    s.add_argument("--graphs", action="store_true")
    return p


def _writer(outdir: Path, name: str):
    """A function writing a result to ``<outdir>/<name>.json`` (atomically, by a rename)."""

    def to_file(result):
        tmp = outdir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(outdir / f"{name}.json")

    return to_file


def _grid_and_sizes(args, outdir: Path) -> None:
    """``grid``, ``sizes`` and ``all``: the grid, the job sizes from it, and for ``all`` the cost
    projection and (with ``--data``) the accuracy [and IMP] runs."""
    if args.cmd == "sizes":  # only what a job runs: the config's precision and graphs switch
        rt = cost.load_config([])["runtime"]
        args.precisions, args.graphs, args.also = [rt["precision"]], [rt["cuda_graphs"]], []
    with mps_daemon(args.mps):
        result = grid(args, write=_writer(outdir, "grid"))
    sz = sizes(result)
    _writer(outdir, "sizes")(sz)
    print("# config runtime: measured on " + result["device"])
    print(json.dumps(sz, indent=1))
    if args.cmd != "all":
        return
    est = cost.estimate(cost.load_config([]), cost.dag([]), result)
    _writer(outdir, "cost")(est)
    print(cost.report(est, result["device"]))
    if args.data:
        _writer(outdir, "accuracy")(accuracy(args))
        if args.with_imp:
            args.seed, args.rewinds, args.levels = args.seeds[0], [0, 500], 8
            _writer(outdir, "imp")(imp(args))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    if args.cmd == "startup":
        return startup(args)
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    if args.cmd == "check":
        with mps_daemon(args.mps):
            result = check(args, _writer(outdir, "check"))
        return 0 if _check_passed(result) else 1
    if args.cmd in ("grid", "sizes", "all"):
        _grid_and_sizes(args, outdir)
    elif args.cmd == "accuracy":
        _writer(outdir, "accuracy")(accuracy(args))
    elif args.cmd == "imp":
        _writer(outdir, "imp")(imp(args))
    return 0


def _check_passed(result: dict) -> bool:
    tests = result.get("tests", {}).get("tests", [])
    bad_tests = [t for t in tests if t["outcome"] in ("failed", "error")]
    bad_rows = [r for r in result.get("grid", {}).get("rows", []) if r.get("error")]
    return not bad_tests and not bad_rows and result.get("complete", False)


if __name__ == "__main__":
    sys.exit(main())
