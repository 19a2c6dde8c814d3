"""The GPU check: what must be true before anyone spends GPU-hours, within a time budget.

    python -m pipeline_scripts.tools.gpu check [--budget-s 360] [--data F] [--out-dir D]

Four parts into one JSON (``<out-dir>/check.json``, written after every part and every row):
(a) the CUDA-only tests (``tests/cuda``: determinism, CUDA vs CPU, CUDA graphs on/off, grouped
vs single, SIGTERM resume, pruned weights stay zero, rotation labels), their CPU legs on all the
node's cores; (b) kernel launches per training step of ResNet-20 with and without CUDA graphs and
masks (profiler); (c) img/s per network in the jobs' configuration first (config.yaml's precision
and CUDA-graph setting; ResNet-20 also N = 8 grouped and as 8 processes), then the comparisons
(graphs off, bf16), each with its fraction of the ``torch.mm`` peak measured on matrices that fill
the device (8192 x 8192 on CUDA); (d) a training job's start-up cost (imports, data, device,
first step; compiled with a cold and with a warm cache).

**The budget** (``--budget-s``, default 360 s: 6 minutes on an H100/H200) is kept: each part gets
a share of the time left (``WEIGHTS``; a part that finishes early leaves its time to the later
ones), an item that would not fit is not started, an item that overruns its part is cut off, and
the check writes complete JSON and exits with a status that says what happened (``EXIT``):
0 everything ran and passed, 1 something failed, 3 nothing failed but something was skipped for
the budget (listed under ``skipped`` with the reason). On a CPU (``--quick``, the test suite)
every part runs on tiny sizes and the CUDA-only tests are reported as skipped with their reason;
the figures mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline_scripts.earlyphase import data, device, train
from pipeline_scripts.tools import bench, gpu
from pipeline_scripts.tools.budget import Budget

ROOT = gpu.ROOT
# Shares of the budget. The tests weigh most: on the 2026-12-04 H200 they took 163 s, 106 of them
# the CUDA-graph test's two cold compiles.
WEIGHTS = {"tests": 0.4, "launches": 0.1, "grid": 0.4, "startup": 0.1}
DEFAULT_BUDGET_S = 360.0
EXIT = {"ok": 0, "failed": 1, "skipped": 3}
# The check's timing plan: ~5 s a configuration.
CHECK_PLAN = bench.Plan(warmup_steps=10, warmup_s=1.0, window_s=1.0, windows=3, max_other_cores=1e9)
# Expected seconds of a grid row: compiling (cold: 20-70 s a graph on the 2026-12-04 H200, the
# forward and backward only), tracing and capturing the whole step, eager; a row expected not to
# fit its part's time left is not started.
ROW_COST_S = {"compiled": 40.0, "graphs": 10.0, "eager": 6.0}


# ---- (a) the CUDA-only tests ------------------------------------------------------------------


def cuda_tests(out_dir: Path, seconds: float, log=print) -> dict:
    """Part (a): tests/cuda in a pytest process of its own that stops starting tests when
    ``seconds`` are up (tests/cuda/conftest.py) and is interrupted shortly after; per test its
    outcome (skipped ones say why; tests never reached are listed as not run)."""
    report = out_dir / "cuda-tests.jsonl"
    report.unlink(missing_ok=True)
    env = {
        **os.environ,
        "EARLYPHASE_TEST_DEADLINE": str(time.time() + seconds - 5),  # starts no test after
        "EARLYPHASE_TEST_REPORT": str(report),
    }
    cmd = [sys.executable, "-m", "pytest", "tests/cuda", "-p", "no:xdist", "-p", "no:cacheprovider"]
    cmd += ["-o", "addopts=", "-q", "-rs"]
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=max(1.0, seconds - 2))
    except subprocess.TimeoutExpired:  # a test still running when the time is up
        proc.send_signal(signal.SIGINT)  # pytest reports what ran and stops
        try:
            out, _ = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    collected, done = [], {}
    if report.exists():
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            if "collected" in entry:
                collected = entry["collected"]
            else:
                done[entry["test"]] = entry
    tests = [
        done.get(name, {"test": name, "outcome": "not run", "detail": ""}) for name in collected
    ]
    passed = sum(t_["outcome"] == "passed" for t_ in tests)
    log(f"(a) CUDA tests: {passed}/{len(tests)} passed, exit status {proc.returncode}")
    for t_ in tests:
        if t_["outcome"] != "passed":
            log(f"    {t_['test']}: {t_['outcome']} {t_['detail']}")
    result = {"exit_status": proc.returncode, "seconds": time.perf_counter() - t, "tests": tests}
    if proc.returncode not in (0, 1, 5) and not collected:  # pytest itself failed
        result["output"] = out.decode(errors="replace")[-2000:] if out else ""
    return result


# ---- (b) launches per step ------------------------------------------------------------------


def launches_per_step(
    net: str, ds, graphs: bool, masked: bool, steps: int = 6, compile: bool = False
) -> dict:
    """Part (b): device-kernel launches (CUDA: kernel and graph launch calls) or operators
    (CPU) per training step, from the profiler, after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    gpu._fresh_compiler()
    dev = ds.train_x.device
    hp = bench._hparams(net, None)
    model = bench._model(net, 1, dev)
    mask = bench.sparse_mask(model, net) if masked else None
    opts = train.RunOptions(seed=1, checkpoint_seconds=1e12, cuda_graphs=graphs, compile=compile)
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
    out["compiled"] = gpu.compiled_counts()
    return out


# ---- (d) start-up ---------------------------------------------------------------------------


def startup(args) -> int:
    """Part (d), child process: the phases of a training job's start, in seconds from the
    process start, printed as JSON (importing this module has already loaded torch)."""
    t0 = float(args.t0)
    marks = {"imports": time.time() - t0}
    runtime = gpu.configure()
    dev = device.select("auto")
    ds = data.load(args.data, dev)  # reads and sha256-checks the arrays, as every job does
    marks["data_loaded"] = time.time() - t0
    if dev.type == "cuda":
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
    marks["device_ready"] = time.time() - t0
    model = bench._model(args.network, 1, dev)
    opts = train.options_from_runtime(
        {**runtime, "cuda_graphs": args.graphs, "compile": args.compile},
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
    marks["first_step_done"] = steps[1]  # model built, first step traced/compiled/captured, run
    marks["steady_step"] = steps[3] - steps[2]
    print(json.dumps(marks), flush=True)
    return 0


def startup_cost(
    network: str, graphs: bool, compile: bool, data_path: str, cache: str, timeout: float
) -> dict:
    """Part (d): run ``startup`` in a fresh process (as a job starts) and return its phases;
    ``cache``: the compilers' cache directory (Inductor's and Triton's), as the workflow sets it
    per run directory."""
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
        "TRITON_CACHE_DIR": f"{cache}/triton",
    }
    argv = ["startup", "--network", network, "--data", data_path]
    argv += (["--graphs"] if graphs else []) + (["--compile"] if compile else [])
    code = (
        "import time; t0 = time.time(); import sys; "
        "from pipeline_scripts.tools import gpu; "
        f"sys.exit(gpu.main({argv!r} + ['--t0', repr(t0)]))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=max(1.0, timeout),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not start within {timeout:.0f} s (the part's time left)"}
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the check ------------------------------------------------------------------------------


def check_rows(quick: bool, runtime: dict) -> list[dict]:
    """Part (c)'s configurations, most needed first: every network in the jobs' configuration
    (``runtime``'s precision, CUDA-graph and compile switches: what sizes the jobs), ResNet-20's
    N = 8 batched and as 8 processes, then the comparisons: the step eager, compiled by Inductor
    (and captured), and ResNet-20 in bf16."""
    p, g, c = runtime["precision"], bool(runtime["cuda_graphs"]), bool(runtime["compile"])
    nets = ("resnet20", "resnet56", "vgg13", "wrn16_8")
    rows = [(net, 1, "single", p, g, c) for net in nets]
    rows += [("resnet20", 8, "grouped", p, g, c), ("resnet20", 8, "processes", p, False, False)]
    rows += [(net, 1, "single", p, False, False) for net in nets]
    rows += [(net, 1, "single", p, True, not c) for net in nets]
    rows += [("resnet20", 1, "single", "bf16", g, c)]
    if quick:  # CPU: the narrow test network stands in for all, N = 2 for 8
        rows = [("resnet8_w4", 1, "single", "fp32", False, cc) for cc in (False, True)]
        rows += [("resnet8_w4", 2, m, "fp32", False, False) for m in ("grouped", "processes")]
    keys = ("network", "n", "mode", "precision", "cuda_graphs", "compile")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _row_label(r: dict) -> str:
    return f"{r['network']} N={r['n']} {r['mode']} {r['precision']} {gpu.step_kind(r)}"


def check(args, write, log=print, clock=time.monotonic) -> dict:
    """The GPU check (module docstring): parts (a)-(d) into one JSON, written after each part
    and row, within ``args.budget_s``."""
    weights = {k: v for k, v in WEIGHTS.items() if not (k == "tests" and args.skip_tests)}
    budget = Budget(args.budget_s, weights, clock=clock)
    started = clock()
    dev = device.select("auto")
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "quick": bool(args.quick),
        "complete": False,
    }

    def save():
        result["budget"] = budget.to_dict()
        write(result)

    out_dir = Path(args.out_dir)
    if not args.skip_tests:
        with budget.part("tests", alarm=False) as part:  # a process of its own, stopped in time
            result["tests"] = cuda_tests(out_dir, part.seconds, log)
            for t in result["tests"]["tests"]:
                if t["outcome"] == "not run":
                    budget.skip("tests", t["test"], "not started: the part's time ran out")
        save()
    runtime = gpu.configure()
    net = "resnet8_w4" if args.quick else "resnet20"
    with tempfile.TemporaryDirectory() as tmp:
        ds = gpu._dataset(args.data, dev, args.quick, Path(tmp))
        result["launches"] = {}
        with budget.part("launches") as part:
            keys = [(g, m) for g in (False, True) for m in (False, True)]  # eager (cheap) first
            for graphs, masked in part.items(keys, label=lambda k: _launch_key(*k)):
                key = _launch_key(graphs, masked)
                try:
                    # (on a CPU, where CUDA graphs do nothing, the switch compiles instead)
                    compile = graphs and dev.type == "cpu"
                    result["launches"][key] = launches_per_step(
                        net, ds, graphs, masked, compile=compile
                    )
                except Exception as e:  # noqa: BLE001
                    result["launches"][key] = {"error": f"{type(e).__name__}: {e}"[:500]}
                log(
                    f"(b) {net} {key}: {result['launches'][key].get('per_step', 'failed')} per step"
                )
        save()
        result["grid"] = {"rows": []}
        with budget.part("grid") as part:
            sub = argparse.Namespace(**{**vars(args), "share_seconds": 1.0 if args.quick else 3.0})

            def each(rows):
                return part.items(rows, label=_row_label, cost_s=None if args.quick else _row_cost)

            gpu.grid(
                sub,
                plan=CHECK_PLAN,
                log=lambda s: log("(c) " + s),
                rows=check_rows(args.quick, runtime),
                write=lambda g: (result.__setitem__("grid", g), save()),
                each=each,
            )
        save()
        data_path = args.data
        if data_path is None:
            data_path = str(Path(tmp) / "startup.h5")
            data.prepare(data_path, "synthetic", synthetic={"n_train": 512, "n_test": 128}, seed=0)
        result["startup"] = {}
        with tempfile.TemporaryDirectory() as cache, budget.part("startup") as part:
            kinds = {  # (CUDA graphs, compile); the compiler caches are cold, then warm
                "eager": (False, False),
                "graphs": (True, False),
                "compiled_cold_cache": (True, True),
                "compiled_warm_cache": (True, True),
            }
            for kind in part.items(kinds):
                graphs, compile = kinds[kind]
                phases = startup_cost(net, graphs, compile, data_path, cache, part.remaining())
                result["startup"][kind] = phases
                log(
                    f"(d) start-up, {kind}: "
                    + ", ".join(f"{p} {s:.1f} s" for p, s in phases.items() if isinstance(s, float))
                )
    result["seconds"] = clock() - started
    result["complete"] = not budget.skipped
    result["status"] = status(result)
    save()
    log(
        f"check done in {result['seconds']:.0f} s of {budget.seconds:.0f}: {result['status']}"
        + (f", {len(budget.skipped)} item(s) skipped for the budget" if budget.skipped else "")
    )
    return result


def _launch_key(graphs: bool, masked: bool) -> str:
    return f"graphs_{'on' if graphs else 'off'}_mask_{'on' if masked else 'off'}"


def _row_cost(row: dict) -> float:
    kind = "compiled" if row.get("compile") else "graphs" if row["cuda_graphs"] else "eager"
    return ROW_COST_S[kind]


def status(result: dict) -> str:
    """ "failed" (a test failed or errored, a row, launch count or start-up failed), "skipped"
    (nothing failed, something was skipped for the budget) or "ok"."""
    tests = result.get("tests", {}).get("tests", [])
    failed = any(t["outcome"] in ("failed", "error") for t in tests)
    failed |= any(r.get("error") for r in result.get("grid", {}).get("rows", []))
    failed |= any("error" in v for v in result.get("launches", {}).values())
    failed |= any("error" in v for v in result.get("startup", {}).values())
    if failed:
        return "failed"
    return "skipped" if result.get("budget", {}).get("skipped") else "ok"


def main(args) -> int:
    """``gpu check``: the check into ``<out-dir>/check.json``; the exit status of ``EXIT``."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with gpu.mps_daemon(args.mps):
        result = check(args, gpu.writer(out_dir, "check"))
    return EXIT[result["status"]]
