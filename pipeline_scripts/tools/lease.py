"""One GPU slot, used to its last minute: the GPU check, then ResNet-20 at the paper's scale
against Table A1, continued in the next slot where this one ends.

    python -m pipeline_scripts.tools.gpu lease --out-dir DIR [--data F] [--budget-s 840]
    python -m pipeline_scripts.tools.gpu lease --continue DIR [--budget-s 840]
    python -m pipeline_scripts.tools.gpu imp --data F      # Figure 1's headline (hours)

``lease`` (i) runs the GPU check (``gpu_check``) in a process of its own within
``--check-budget-s``, (ii) prepares the data in ``DIR/data/`` (torchvision's download, or the
image folder / ``.tar.gz`` / prepared ``.h5`` given with ``--data``), (iii) trains ``--network``
(ResNet-20) for its full schedule (160 epochs) for each of ``--seeds`` in the pipeline's
configuration (config.yaml's ``runtime``: precision, CUDA graphs, determinism; the seeds batched
in one process as ``runtime.runs_per_job`` batches them, ``--method single`` for one at a time),
evaluating on the test set after every epoch as the pipeline does, and (iv) ends with Table A1's
comparison (mean +- sample std over the seeds against the paper's) and the wall time per run.

It writes ``DIR/lease.json`` after each part and after every evaluation, and keeps its budget:
``--budget-s`` for the whole command, counted from its start. When the time left is the reserve
(``--reserve-s``), the training saves its resume state (``runs/seed<s>/resume/resume.pt``, about
1 MB a ResNet-20 run, also saved every ``--save-every-s``) and the command writes everything and
exits with status 3. A SIGTERM (the slot's end, as SLURM sends it) does the same. ``lease
--continue DIR`` in the next slot -- on this GPU or another -- reads the settings from
``DIR/lease.json``, re-runs the check only if it never finished, and continues the training from
its resume state: bit-identically on the same GPU model and software (``tests/cuda``'s SIGTERM
resume test; on another model the run goes on with other rounding, which its metrics record).
Exit status: 0 everything done (the check passed), 1 something failed, 3 stopped by the budget
or SIGTERM (continue with ``--continue``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline_scripts.earlyphase import config_check, data, device, paper, runs, train
from pipeline_scripts.tools import cost, gpu

FORMAT = "earlyphase-lease/1"
DEFAULT_BUDGET_S = 840.0  # 14 minutes: a 15-minute slot less the machine's start
DEFAULT_CHECK_BUDGET_S = 300.0
EXIT = {"ok": 0, "failed": 1, "stopped": 3}


class SlotEnded(Exception):  # noqa: N818
    """SIGTERM outside the training loop (which saves its state on SIGTERM by itself)."""


def add_arguments(s: argparse.ArgumentParser) -> None:
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--out-dir", help="a new lease folder (results, data, resume states)")
    where.add_argument("--continue", dest="resume", metavar="DIR", help="continue a lease's runs")
    s.add_argument(
        "--data",
        help="CIFAR-10 as an image folder, its .tar.gz or a prepared .h5 (default: torchvision's "
        "download into DIR/data/)",
    )
    s.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="the whole command")
    s.add_argument("--check-budget-s", type=float, default=DEFAULT_CHECK_BUDGET_S)
    s.add_argument("--skip-check", action="store_true", help="train without the check")
    s.add_argument(
        "--reserve-s", type=float, default=30.0, help="kept to save and write at the end"
    )
    s.add_argument("--save-every-s", type=float, default=60.0, help="resume-state saves")
    s.add_argument("--network", default="resnet20")
    s.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    s.add_argument("--method", choices=["grouped", "single"], default="grouped")
    s.add_argument(
        "--epochs", type=float, help="shorten the schedule (tests); default: the paper's"
    )
    s.add_argument(
        "--precision",
        choices=["fp32", "tf32", "bf16"],
        help="train in this precision instead of config.yaml's (bf16's effect on accuracy)",
    )
    s.add_argument("--quick", action="store_true", help="the check on tiny sizes (CPU tests)")


def add_imp_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, help="a prepared .h5")
    s.add_argument("--network", default="resnet20")
    s.add_argument("--epochs", type=float, help="override (tests); default: the paper's")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--rewinds", type=int, nargs="+", default=[0, 500])
    s.add_argument("--levels", type=int, default=8)
    s.add_argument("--out-dir", default="bench/out/gpu")


def main(args, clock: Callable[[], float] = time.monotonic) -> int:
    if args.cmd == "imp":
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        gpu.writer(out, "imp")(imp(args))
        return 0
    return Lease(args, clock).run()


class Lease:
    """One slot's work on a lease folder (module docstring)."""

    def __init__(self, args, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + args.budget_s - args.reserve_s  # training stops here
        self.args = args
        self.dir = Path(args.resume or args.out_dir)
        self.path = self.dir / "lease.json"
        if args.resume:
            if not self.path.exists():
                raise SystemExit(f"--continue {self.dir}: no lease.json there (not a lease folder)")
            self.state = json.loads(self.path.read_text())
        else:
            if self.path.exists():
                raise SystemExit(
                    f"{self.path} exists: continue that lease with --continue {self.dir}, or "
                    "give a new --out-dir"
                )
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state = {"format": FORMAT, "settings": self._settings(), "slots": []}
        self.settings = self.state["settings"]
        self.slot = {
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": args.budget_s,
        }
        self.state["slots"].append(self.slot)
        self.t0 = clock()

    def _settings(self) -> dict:
        """What the lease trains, fixed at its start so that every slot continues the same runs
        (config.yaml edited between slots changes nothing here)."""
        a = self.args
        config = cost.load_config([])
        hp = config_check.hparams(config, a.network)
        if a.epochs:
            hp = {
                **hp,
                "epochs": a.epochs,
                "milestones": [m for m in hp["milestones"] if m < a.epochs],
            }
        runtime = {**config["runtime"], "checkpoint_seconds": a.save_every_s}
        if a.precision:
            runtime["precision"] = a.precision
        return {
            "network": a.network,
            "seeds": list(a.seeds),
            "method": a.method,
            "hparams": hp,
            "runtime": runtime,
            "eval_every": config["evaluation"]["every_epochs"],
            "data_given": None if a.data is None else str(Path(a.data).resolve()),
            "skip_check": bool(a.skip_check),
            "quick": bool(a.quick),
        }

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.dir / "lease.log", "a") as f:
            f.write(line + "\n")

    def write(self) -> None:
        self.slot["seconds"] = round(self.clock() - self.t0, 1)
        gpu.writer(self.dir, "lease")(self.state)

    def left(self) -> float:
        return self.end - self.clock()

    # ---- the parts ------------------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, _slot_ended)
        try:
            self.slot["device"] = _device_name()
            self.log(f"lease {self.dir}: slot {len(self.state['slots'])} on {self.slot['device']}")
            self.write()
            self.check()
            self.data()
            self.train()
            self.summarise()
            status = (
                "ok"
                if self.state.get("check", {}).get("status") in ("ok", "skipped", None)
                else "failed"
            )
            self.slot["ended"] = "complete"
        except SlotEnded:
            status, self.slot["ended"] = "stopped", "SIGTERM"
            self.log("SIGTERM: the slot ends; continue with --continue " + str(self.dir))
        except Stopped as e:
            status, self.slot["ended"] = "stopped", str(e)
            self.log(
                f"stopped: {e}; continue with: python -m pipeline_scripts.tools.gpu lease --continue {self.dir}"
            )
        except Exception as e:  # noqa: BLE001 - recorded in the JSON, then raised
            self.slot["ended"] = f"error: {type(e).__name__}: {e}"[:500]
            self.write()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.write()
        return EXIT[status]

    def check(self) -> None:
        """(i) The GPU check in a process of its own, within its budget (and the slot's)."""
        s = self.settings
        done = self.state.get("check", {})
        if s["skip_check"] or done.get("status") in ("ok", "skipped", "failed"):
            return
        seconds = min(self.args.check_budget_s, self.left())
        if seconds < 30:
            raise Stopped("no time left for the check")
        cmd = [sys.executable, "-m", "pipeline_scripts.tools.gpu", "check"]
        cmd += ["--budget-s", f"{seconds:.0f}", "--out-dir", str(self.dir)]
        cmd += ["--quick"] if s["quick"] else []
        self.log(f"(i) the GPU check, {seconds:.0f} s: {' '.join(cmd[1:])}")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=gpu.ROOT)
        try:
            code = proc.wait(timeout=seconds + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result_file = self.dir / "check.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        self.state["check"] = {
            "exit_status": code,
            "status": result.get("status"),  # None: it did not finish
            "file": "check.json",
            "seconds": round(time.perf_counter() - t, 1),
        }
        self.log(f"(i) check: {result.get('status', 'did not finish')} (exit {code})")
        self.write()

    def data(self) -> None:
        """(ii) The data file: a given .h5 as it is, else prepared into DIR/data/ (once)."""
        s = self.settings
        if "data" in self.state:
            return
        given = s["data_given"]
        t = time.perf_counter()
        if given and given.endswith(".h5"):
            path = given
        else:
            path = str(self.dir / "data" / "cifar10.h5")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if given:
                self.log(f"(ii) preparing {path} from {given}")
                data.prepare(path, "imagefolder", path=given)
            else:
                self.log(f"(ii) preparing {path} from torchvision's CIFAR-10 download")
                data.prepare(path, "torchvision", root=str(self.dir / "data" / "torchvision"))
        self.state["data"] = {"file": path, "seconds": round(time.perf_counter() - t, 1)}
        self.write()

    def jobs(self) -> list[runs.Job]:
        s = self.settings
        out = []
        for seed in s["seeds"]:
            w = self.dir / "runs" / f"seed{seed}"
            out.append(
                runs.Job(
                    network=s["network"],
                    seed=seed,
                    data_path=self.state["data"]["file"],
                    hparams=s["hparams"],
                    runtime=s["runtime"],
                    eval_every=s["eval_every"],
                    workdir=str(w / "resume"),
                    out_final=str(w / "final.pt"),
                    out_metrics=str(w / "metrics.h5"),
                    threads=int(s["runtime"].get("threads", 2)),
                )
            )
        return out

    def train(self) -> None:
        """(iii) The runs not yet finished, batched or one at a time, until done or the budget
        says stop (their resume state saved)."""
        s = self.settings
        todo = [j for j in self.jobs() if not Path(j.out_metrics).exists()]
        batches = [todo] if s["method"] == "grouped" and todo else [[j] for j in todo]
        progress = self.state.setdefault("training", {"runs": {}})
        for batch in batches:
            if self.left() < 60:
                raise Stopped("too little time left to start training")
            seeds = [j.seed for j in batch]
            t = time.perf_counter()
            stop = {"sent": False}

            def on_step(it, stop=stop):
                if not stop["sent"] and self.clock() >= self.end:
                    stop["sent"] = True  # the loop saves its state and raises Interrupted
                    os.kill(os.getpid(), signal.SIGTERM)

            def on_evaluate(it, results, seeds=seeds, t=t):
                for seed, (loss, acc) in zip(seeds, results, strict=True):
                    progress["runs"][str(seed)] = {
                        "iteration": it,
                        "test_loss": loss,
                        "test_accuracy": acc,
                    }
                progress["seconds_this_slot"] = round(time.perf_counter() - t, 1)
                self.write()

            self.log(f"(iii) training {s['network']} seeds {seeds} ({s['method']})")
            try:  # (inside its loop, train_runs turns SIGTERM into "save, then stop")
                runs.run_group(
                    batch, method="grouped", log=self.log, on_step=on_step, on_evaluate=on_evaluate
                )
            except train.Interrupted as e:
                raise Stopped(f"training interrupted, its state saved ({e})") from e
            self.write()

    def summarise(self) -> None:
        """(iv) Table A1's comparison: mean +- sample std of the final test accuracies."""
        import h5py

        s = self.settings
        rows = []
        for j in self.jobs():
            with h5py.File(j.out_metrics) as f:
                a = f.attrs
                rows.append(
                    {
                        "seed": j.seed,
                        "accuracy": 100 * float(a["final_test_accuracy"]),
                        # this run's share of the training and evaluation wall time, over
                        # every slot it trained in (a batch's time is shared by its runs)
                        "wall_s": float(a["train_seconds"]) + float(a["eval_seconds"]),
                        "img_s": float(a["images_per_second"]),
                        "precision": str(a["precision"]),
                        "kernels": json.loads(a["kernels"]),
                    }
                )
        accs = [r["accuracy"] for r in rows]
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ref = paper.TABLE_A1.get(s["network"])
        epochs = s["hparams"]["epochs"]
        self.state["table_a1"] = {
            "network": s["network"],
            "epochs": epochs,
            "seeds": s["seeds"],
            "mean": mean,
            "std": std,
            "paper": None if ref is None else [ref[0], ref[1]],
            "runs": rows,
        }
        where = f"paper {ref[0]} +- {ref[1]}" if ref else "no Table A1 row"
        self.state["table_a1"]["wall_s_per_run"] = statistics.median(r["wall_s"] for r in rows)
        self.log(
            f"(iv) {s['network']}, {epochs:g} epochs, {len(rows)} seeds: test accuracy "
            f"{mean:.2f} +- {std:.2f} % ({where}); "
            f"{self.state['table_a1']['wall_s_per_run']:.0f} s of training per run"
        )
        self.state["complete"] = True


class Stopped(Exception):  # noqa: N818
    """The lease stopped itself for its budget; its state is saved."""


def _slot_ended(signum, frame):
    raise SlotEnded()


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


# ---- Figure 1's headline at paper scale (hours of a GPU) --------------------------------------


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


def imp(args, log=print) -> dict:
    """One seed of ResNet-20's IMP chains rewound to 0 and to 500, down to 16.8% of weights."""
    import tempfile

    config = copy.deepcopy(cost.load_config([]))
    hp = config_check.hparams(config, args.network)
    if args.epochs:
        ms = [m for m in hp["milestones"] if m < args.epochs]
        hp = {**hp, "epochs": args.epochs, "milestones": ms}
    rt = config["runtime"]
    dev = device.select_from(rt)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "chains": {}}
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
