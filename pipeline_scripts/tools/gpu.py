"""GPU measurements of issue 12, item 7, and the job sizes a profile needs (item 6).

One command produces every figure on a GPU node (README, Performance, "GPU figures")::

    python -m pipeline_scripts.tools.gpu all --data /path/to/cifar10.h5 --out-dir bench/out/gpu

and each part alone::

    python -m pipeline_scripts.tools.gpu grid      # img/s per network x N x precision x graphs
    python -m pipeline_scripts.tools.gpu sizes     # runtime.minutes_per_run + runs_per_job (YAML)
    python -m pipeline_scripts.tools.gpu accuracy --data F   # ResNet-20, 160 epochs, 2 seeds
    python -m pipeline_scripts.tools.gpu imp --data F        # Figure 1's headline at paper scale

``grid`` times ``train.train_runs`` itself (bench.StepClock: warm-up, then windows of whole steps,
the median reported) with N runs batched in one process (``multirun``: the plain model for N = 1,
``grouped`` or ``vmap`` above), and N one-run processes sharing the GPU (time-slicing, or CUDA
MPS when ``--mps`` starts its daemon), in each precision, with and without CUDA graphs
(``runtime.cuda_graphs``). Every row names the device; the fraction of peak is the achieved
training FLOP rate (3 x forward FLOPs per image x img/s) over the ``torch.mm`` rate measured in
the same precision on the same GPU. Its JSON has a bench.py-compatible ``networks`` section (the
best aggregate img/s per network), so ``python -m pipeline_scripts.tools.cost --bench`` projects
the protocol's GPU-hours from it.

Nothing here asserts anything about speed; on a CPU every part runs (tests use ``--quick``) but
the figures mean nothing for a GPU.
"""

from __future__ import annotations

import argparse
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

from pipeline_scripts.earlyphase import config_check, data, device, models, runs
from pipeline_scripts.tools import bench, cost

NETWORKS = models.PAPER_NETWORKS
ROOT = Path(__file__).resolve().parents[2]
PAPER_RESNET20 = (91.5, 0.2)  # Table A1: ResNet-20 test accuracy, mean +- std (%)
# A GPU plan: the GPU is the contended resource, so other processes' CPU use is not a reason to
# drop a window (the process-sharing measurement runs N processes on purpose).
GPU_PLAN = bench.Plan(warmup_steps=20, warmup_s=3.0, window_s=2.0, windows=5, max_other_cores=1e9)


def _dataset(path: str | None, dev: torch.device, quick: bool, tmp: Path) -> data.Dataset:
    return data.load(path, dev) if path else bench._synthetic(tmp, quick, dev)


def _peak(dev: torch.device, precision: str, plan: bench.Plan) -> float:
    """torch.mm GFLOP/s in ``precision`` (bf16 operands for bf16; TF32 switch for tf32)."""
    device.set_precision(device.effective_precision(precision, dev))
    if precision != "bf16":
        return bench.matmul_peak(dev, plan)["gflops"]
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


def in_process(net, ds, n, precision, graphs, method, plan) -> float:
    return bench.time_group(
        net, ds, n, method, plan, cuda_graphs=graphs, precision=precision
    ).median


def processes(net, data_path, n, precision, graphs, plan_s: float, quick: bool) -> float:
    """Aggregate img/s of ``n`` one-run processes sharing the device, timed together."""
    with tempfile.TemporaryDirectory(prefix="gpu-share-") as tmp:
        go = Path(tmp) / "go"
        cmd = [sys.executable, "-m", "pipeline_scripts.tools.gpu", "worker", "--network", net]
        cmd += ["--precision", precision, "--go", str(go), "--seconds", str(plan_s)]
        cmd += [*(["--data", data_path] if data_path else []), *(["--graphs"] if graphs else [])]
        cmd += ["--quick"] if quick else []
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(n)
        ]
        for p in procs:  # each prints "ready" once warmed up
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["img_s"] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a sharing worker failed: {[p.returncode for p in procs]}")
    return sum(rates)


def worker(args) -> int:
    dev = device.select("auto")
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(args.data, dev, args.quick, Path(tmp))
        warm = bench.Plan(
            warmup_steps=10, warmup_s=1.0, window_s=1.0, windows=1, max_other_cores=1e9
        )
        bench.time_group(
            args.network,
            ds,
            1,
            "grouped",
            warm.scaled(args.quick),
            cuda_graphs=args.graphs,
            precision=args.precision,
        )
        print("ready", flush=True)
        while not Path(args.go).exists():
            time.sleep(0.01)
        plan = bench.Plan(
            warmup_steps=2, warmup_s=0.0, window_s=args.seconds / 3, windows=3, max_other_cores=1e9
        ).scaled(args.quick)
        t = bench.time_group(
            args.network, ds, 1, "grouped", plan, cuda_graphs=args.graphs, precision=args.precision
        )
    print(json.dumps({"img_s": t.median}), flush=True)
    return 0


def grid(args, log=print) -> dict:
    dev = device.select("auto")
    plan = GPU_PLAN.scaled(args.quick)
    out = {"device": bench._machine(dev, torch.get_num_threads())["device"], "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(args.data, dev, args.quick, Path(tmp))
        peaks = {p: _peak(dev, p, plan) for p in args.precisions}
        out["matmul_gflops"] = peaks
        for net in args.networks:
            fwd = bench.forward_flops(net, dev, bench.BATCH_SIZE.get(net, 128))
            for precision in args.precisions:
                for graphs in args.graphs:
                    if graphs and dev.type != "cuda":
                        continue
                    for n in args.n:
                        for mode in ["grouped", *args.also]:
                            if mode == "processes" and (not args.processes or n == 1):
                                continue
                            if mode == "vmap" and n == 1:
                                continue
                            img_s = (
                                processes(
                                    net,
                                    args.data,
                                    n,
                                    precision,
                                    graphs,
                                    args.share_seconds,
                                    args.quick,
                                )
                                if mode == "processes"
                                else in_process(net, ds, n, precision, graphs, mode, plan)
                            )
                            row = {
                                "network": net,
                                "n": n,
                                "mode": mode if n > 1 else "single",
                                "precision": precision,
                                "cuda_graphs": graphs,
                                "img_s": img_s,
                                "fraction_of_peak": 3 * fwd * img_s / 1e9 / peaks[precision],
                            }
                            out["rows"].append(row)
                            log(_row(row, out["device"]))
    out["networks"] = _best(out["rows"])
    out["machine"] = {"device": out["device"]}
    return out


def _row(r: dict, dev: str) -> str:
    return (
        f"{dev}  {r['network']:<9} N={r['n']:<3} {r['mode']:<9} {r['precision']:<5} "
        f"graphs={'on ' if r['cuda_graphs'] else 'off'} {r['img_s']:>10.0f} img/s  "
        f"{100 * r['fraction_of_peak']:5.1f}% of mm peak"
    )


def _best(rows: list[dict]) -> dict:
    """bench.py-compatible ``networks``: the best aggregate img/s per network (cost.py)."""
    out = {}
    for r in rows:
        best = out.get(r["network"])
        if best is None or r["img_s"] > best["ours"]["img_s"]:
            out[r["network"]] = {"ours": {"img_s": r["img_s"]}, "setting": r}
    return out


def sizes(result: dict, n_train: int = 50_000, epochs: int = 160, margin: float = 1.3) -> dict:
    """runtime.minutes_per_run (one run alone, +30%) and runs_per_job (the smallest N within 10%
    of the best aggregate rate) per network, from a ``grid`` result."""
    minutes, per_job = {}, {}
    for net in {r["network"] for r in result["rows"]}:
        rows = [r for r in result["rows"] if r["network"] == net and r["mode"] != "processes"]
        single = max(r["img_s"] for r in rows if r["n"] == 1)
        minutes[net] = round(n_train * epochs / single / 60 * margin, 1)
        best = max(r["img_s"] for r in rows)
        per_job[net] = min(r["n"] for r in rows if r["img_s"] >= 0.9 * best)
    return {
        "minutes_per_run": {**minutes, "default": max(minutes.values())},
        "runs_per_job": {**per_job, "default": 1},
    }


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


def accuracy(args, log=print) -> dict:
    """ResNet-20 trained for the paper's 160 epochs, one seed at a time, default precision."""
    config = cost.load_config([])
    hp = _hparams(config, args)
    rt = {**config["runtime"], "deterministic": False}  # cudnn.benchmark: the fast kernels
    out = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "precision": rt["precision"],
        "paper_table_a1": PAPER_RESNET20,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            w = Path(tmp) / f"s{seed}"
            job = runs.Job(
                network=args.network,
                seed=seed,
                data_path=args.data,
                hparams=hp,
                runtime=rt,
                eval_every=16,
                workdir=str(w / "resume"),
                out_final=str(w / "final.pt"),
                out_metrics=str(w / "metrics.h5"),
                threads=os.cpu_count() or 1,
            )
            t = time.perf_counter()
            runs.run(job, log=log)
            wall = time.perf_counter() - t
            import h5py

            with h5py.File(job.out_metrics) as f:
                acc = float(f["eval/accuracy"][-1])
            out["runs"].append({"seed": seed, "accuracy": acc, "wall_s": wall})
    accs = [100 * r["accuracy"] for r in out["runs"]]
    out["mean"], out["std"] = statistics.mean(accs), statistics.pstdev(accs)
    log(
        f"{args.network} {hp['epochs']:g} epochs on {out['device']} ({rt['precision']}): "
        f"{out['mean']:.2f} +- {out['std']:.2f}% (paper 91.5 +- 0.2), "
        f"{statistics.median(r['wall_s'] for r in out['runs']):.0f} s per run"
    )
    return out


def imp(args, log=print) -> dict:
    """One seed of ResNet-20's IMP chains rewound to 0 and to 500, down to 16.8% of weights."""
    config = copy.deepcopy(cost.load_config([]))
    hp = _hparams(config, args)
    rt = {**config["runtime"], "deterministic": False}
    out = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "chains": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def job(name, **kw):
            w = root / name
            return runs.Job(
                network=args.network,
                seed=args.seed,
                data_path=args.data,
                hparams=hp,
                runtime=rt,
                eval_every=160,
                workdir=str(w / "resume"),
                out_final=str(w / "final.pt"),
                out_metrics=str(w / "metrics.h5"),
                threads=os.cpu_count() or 1,
                **kw,
            )

        snaps = {k: str(root / f"dense_iter{k}.pt") for k in args.rewinds}
        dense = job("dense", snapshots=snaps)
        out["dense"] = runs.run(dense, log=log) and _final_acc(dense)
        for k in args.rewinds:
            prev_final, prev_mask, accs = dense.out_final, None, []
            for level in range(1, args.levels + 1):
                j = job(
                    f"k{k}/level{level}",
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


def _final_acc(job) -> float:
    import h5py

    with h5py.File(job.out_metrics) as f:
        return float(f["eval/accuracy"][-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline_scripts.tools.gpu", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("grid", "sizes", "all"):
        s = sub.add_parser(name)
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
        s.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
        s.add_argument("--with-imp", action="store_true", help="all: also the IMP chains (hours)")
        s.add_argument("--network", default="resnet20", help="all: the accuracy/IMP network")
        s.add_argument("--epochs", type=float, help="all: shorten accuracy/IMP runs (tests)")
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
    args = p.parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)

    def write(name, result):
        (outdir / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")

    if args.cmd == "sizes":  # only what a job runs: the config's precision and graphs switch
        rt = cost.load_config([])["runtime"]
        args.precisions, args.graphs, args.also = [rt["precision"]], [rt["cuda_graphs"]], []
    if args.cmd in ("grid", "sizes", "all"):
        if args.mps and shutil.which("nvidia-cuda-mps-control"):
            subprocess.run(["nvidia-cuda-mps-control", "-d"], check=False)
        result = grid(args)
        write("grid", result)
        sz = sizes(result)
        write("sizes", sz)
        print("# config runtime: measured on " + result["device"])
        print(json.dumps(sz, indent=1))
        if args.cmd == "all":
            est = cost.estimate(cost.load_config([]), cost.dag([]), result)
            write("cost", est)
            print(cost.report(est, result["device"]))
            if args.data:
                write("accuracy", accuracy(args))
                if args.with_imp:
                    args.seed, args.rewinds, args.levels = args.seeds[0], [0, 500], 8
                    write("imp", imp(args))
    elif args.cmd == "accuracy":
        write("accuracy", accuracy(args))
    elif args.cmd == "imp":
        write("imp", imp(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
