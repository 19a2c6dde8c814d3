"""How much of a GPU the training uses, and what that does to the protocol's GPU-hours.

    python -m pipeline_scripts.tools.gpu efficiency --out-dir D [--budget-s 480] [--mps]

One prepared command for a few minutes of a GPU (``--quick`` runs it on a CPU in the test suite,
where its figures mean nothing). Within ``--budget-s`` (``budget.Budget``), most needed first,
writing ``<out-dir>/efficiency.json`` after every row:

(a) kernel launches per ResNet-20 training step: the whole step captured in a CUDA graph
    (config.yaml's configuration) and eager (``gpu_check.launches_per_step``);
(b) img/s of one run of each network in the jobs' configuration;
(c) packing: N = 8, 16, 32, 64 runs of each network batched in one process (``multirun``
    grouped), until the rate stops growing (less than 5 % more than the last N) or memory ends;
(d) kernel settings on ResNet-20: the step compiled by Inductor, eager, non-deterministic kernels
    (cuDNN autotuning), bf16 autocast (one run and 32 batched), and 8 one-run processes sharing the
    GPU (time-sliced, or under CUDA MPS with ``--mps``).

It ends with the targets (one ResNet-20 run >= 50,000 img/s; packed ResNet-20 >= 250,000 img/s;
every other network's best packing >= 2x its 2026-12-04 one-run rate), the job sizes for
config.yaml (``gpu.sizes``) and, with ``--cost`` (Snakemake installed: it plans the paper's DAG),
the protocol's GPU-hours at these rates against the 2026-12-04 projection (``tools.cost``); it
prints the command that computes them from the JSON anywhere else. Exit status as the check's: 0 all ran, 1 a row failed, 3 skipped
for the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline_scripts.tools import cost, gpu, gpu_check
from pipeline_scripts.tools.budget import Budget

DEFAULT_BUDGET_S = 480.0
WEIGHTS = {"launches": 0.1, "rows": 0.9}
PACKING = (8, 16, 32, 64)
NETWORKS = ("resnet20", "resnet56", "vgg13", "wrn16_8", "resnet18")
BASELINE = Path(__file__).resolve().parents[2] / "docs/measurements/2026-12-04-h200-gpu-check.json"
BASELINE_HOURS = 2359  # docs/cost.md: the protocol at the 2026-12-04 rates
TARGETS = {"resnet20_single": 50_000, "resnet20_packed": 250_000, "packed_over_baseline": 2.0}


def rows_for(quick: bool, runtime: dict) -> list[dict]:
    """The measured configurations, most needed first (module docstring)."""
    p, g, c = runtime["precision"], bool(runtime["cuda_graphs"]), bool(runtime["compile"])
    nets, packing, ref = NETWORKS, PACKING, "resnet20"
    if quick:  # CPU: the narrow test network, N up to 4
        nets, packing, ref, p = ("resnet8_w4",), (2, 4), "resnet8_w4", "fp32"

    def row(net, n, mode, precision=p, graphs=g, compile=c, **extra):
        mode = "single" if n == 1 and mode == "grouped" else mode
        return {"network": net, "n": n, "mode": mode, "precision": precision,
                "cuda_graphs": graphs, "compile": compile, **extra}  # fmt: skip

    rows = [row(net, 1, "single") for net in nets]
    rows += [row(net, n, "grouped") for net in nets for n in packing]
    rows += [
        row(ref, 1, "single", compile=not c),
        row(ref, 1, "single", graphs=False, compile=False),
        row(ref, 1, "single", deterministic=False),
        row(ref, 1, "single", precision="bf16"),
        row(ref, packing[-2] if len(packing) > 2 else packing[-1], "grouped", precision="bf16"),
        row(ref, packing[0], "processes", compile=False),
    ]
    return rows


def _stops_growing(rows_done: list[dict], row: dict) -> str | None:
    """Why a packing row is not worth timing: the previous N of its network (same settings)
    failed (memory) or gained less than 5 % over the N before it."""
    if row["mode"] != "grouped" or row["n"] <= 1:
        return None
    key = lambda r: (r["network"], r["precision"], r["cuda_graphs"], r["compile"])  # noqa: E731
    same = [r for r in rows_done if key(r) == key(row) and r["mode"] in ("single", "grouped")]
    same.sort(key=lambda r: r["n"])
    if same and same[-1].get("error"):
        return f"N = {same[-1]['n']} failed"
    if len(same) >= 2 and same[-1].get("img_s") and same[-2].get("img_s"):
        if same[-1]["img_s"] < 1.05 * same[-2]["img_s"]:
            return f"N = {same[-1]['n']} gained < 5 % over N = {same[-2]['n']}"
    return None


def summary(result: dict, runtime: dict) -> dict:
    """The targets, one entry each: measured img/s (None: not measured, e.g. skipped for the
    budget), target, met (None when not measured)."""
    rates = cost.throughput(result, runtime)
    base = cost.throughput(json.loads(BASELINE.read_text()), runtime)

    def best(r):
        return None if r is None else max([r["train"], *r["packed"].values()])

    r20 = rates.get("resnet20")
    out = {
        "resnet20_single": _target(r20 and r20["train"], TARGETS["resnet20_single"]),
        "resnet20_packed": _target(best(r20), TARGETS["resnet20_packed"]),
    }
    for net in base:
        if net != "resnet20":
            want = TARGETS["packed_over_baseline"] * base[net]["train"]
            out[f"{net}_packed"] = _target(best(rates.get(net)), want)
    return out


def _target(value: float | None, target: float) -> dict:
    if value is None:
        return {"img_s": None, "target": round(target), "met": None}
    return {"img_s": round(value), "target": round(target), "met": value >= target}


def run(args, log=print) -> dict:
    runtime = gpu.configure()
    budget = Budget(args.budget_s, WEIGHTS)
    write = gpu.writer(Path(args.out_dir), "efficiency")
    result: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save():
        result["budget"] = budget.to_dict()
        write(result)

    import tempfile

    import torch

    from pipeline_scripts.earlyphase import device

    dev = device.select("auto")
    result["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    net = "resnet8_w4" if args.quick else "resnet20"
    with tempfile.TemporaryDirectory() as tmp:
        ds = gpu._dataset(args.data, dev, args.quick, Path(tmp))
        result["launches"] = {}
        with budget.part("launches") as part:
            kinds = {"whole step": (True, bool(runtime["compile"])), "eager": (False, False)}
            for kind in part.items(kinds):
                graphs, compile = kinds[kind]
                compile = compile or (graphs and dev.type == "cpu")  # (CPU: no CUDA graphs)
                try:
                    counted = gpu_check.launches_per_step(net, ds, graphs, False, compile=compile)
                except Exception as e:  # noqa: BLE001 - recorded, the measuring goes on
                    counted = {"error": f"{type(e).__name__}: {e}"[:500]}
                result["launches"][kind] = counted
                log(f"(a) {net} {kind}: {counted.get('per_step', 'failed')} launches per step")
        save()
        with budget.part("rows") as part:
            done: list[dict] = []
            sub = argparse.Namespace(**{**vars(args), "share_seconds": 1.0 if args.quick else 4.0})

            def each(rows):
                for row in part.items(rows, label=gpu_check._row_label):
                    why = _stops_growing(done, row)
                    if why:  # by design, not for the budget
                        result.setdefault("not_timed", []).append(
                            {"row": gpu_check._row_label(row), "why": why}
                        )
                        continue
                    yield row
                    done.append(row)

            gpu.grid(
                sub,
                plan=gpu_check.CHECK_PLAN,
                log=lambda s: log("(b-d) " + s),
                rows=rows_for(args.quick, runtime),
                write=lambda g: (result.__setitem__("grid", g), save()),
                each=each,
            )
    measured = {**runtime, "precision": "fp32"} if args.quick else runtime  # the rows' own
    result["targets"] = summary(result["grid"], measured)
    config = cost.load_config([])
    try:
        result["sizes"] = gpu.sizes(result["grid"], measured, max_runs=len(config["seeds"]))
    except RuntimeError as e:
        result["sizes"] = {"error": str(e)}
    result["status"] = gpu_check.status(result)
    if args.cost:  # plans the paper's DAG with Snakemake: about a minute of CPU
        est = cost.estimate(config, cost.dag([]), result["grid"], {"resnet18": "wrn16_8"})
        result["protocol_device_hours"] = est["device_hours"]
        result["baseline_device_hours"] = BASELINE_HOURS
    save()
    for name, t in result["targets"].items():
        if t["met"] is None:
            log(f"target {name} ({t['target']:,} img/s): not measured")
        else:
            met = "met" if t["met"] else "not met"
            log(f"target {name}: {t['img_s']:,} img/s (target {t['target']:,}): {met}")
    hours = result.get("protocol_device_hours")
    log(
        (f"the protocol: {hours:,.0f} device-hours" if hours else "the protocol's device-hours")
        + f" (2026-12-04 projection {BASELINE_HOURS:,}): python -m pipeline_scripts.tools.cost "
        f"--config config.yaml --bench {Path(args.out_dir) / 'efficiency.json'} "
        "--assume resnet18=wrn16_8"
    )
    return result


def main(args) -> int:
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with gpu.mps_daemon(args.mps):
        result = run(args)
    return gpu_check.EXIT[result["status"]]
