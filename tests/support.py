"""Helpers of the test suite's conftest files: generated image folders, and the runs the whole
suite shares (the smoke preset's run, the paper's planned DAG), each made once per session of
pytest, whatever the number of xdist workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_VAR = "EARLYPHASE_TEST_SHARED_DIR"  # set by the controller, inherited by the workers


def image_folder(root: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """A CIFAR-10-shaped image folder (train/<class>/*.png, test/<class>/*.png, 32x32, 10
    classes) of random pictures: what a user gives with `make laptop DATA=...`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def shared_dir() -> Path:
    return Path(os.environ[SHARED_DIR_VAR])


class SharedRun:
    """A command run once for the whole test session, in the background: the first worker whose
    collected tests need it starts it (``start``: whoever creates ``<name>.started`` first), so
    it runs while the workers run the other tests; a test that needs it waits for its result
    (``result``), which the starting worker writes to ``<name>.json`` when the command ends."""

    def __init__(
        self,
        name: str,
        command: Callable[[Path], list[str]],
        prepare: Callable[[Path], None] | None = None,
        env: Callable[[], dict] | None = None,
        when: Callable[[], bool] | None = None,
    ):
        """``command(base)`` and ``prepare(base)`` get the shared directory; ``env()`` the
        command's environment (default: this process's); ``when()`` False: not started at
        collection (a test that needs it then finds out why, e.g. no SLURM cluster)."""
        self.name, self.command, self.prepare = name, command, prepare
        self.env, self.when = env, when
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.when is not None and not self.when():
            return
        base = shared_dir()
        try:
            fd = os.open(base / f"{self.name}.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another worker started it
        os.close(fd)
        if self.prepare is not None:
            self.prepare(base)
        started = time.monotonic()
        cmd = self.command(base)
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=None if self.env is None else self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def finish(proc=self.proc):
            stdout, stderr = proc.communicate()
            result = {
                "args": cmd,
                "returncode": proc.returncode,
                "stdout": stdout,
                "stderr": stderr,
                "seconds": time.monotonic() - started,
            }
            tmp = base / f".{self.name}.json.tmp"
            tmp.write_text(json.dumps(result))
            tmp.replace(base / f"{self.name}.json")

        self.thread = threading.Thread(target=finish, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float]:
        """(the finished command, its wall seconds); starts it here if nobody did."""
        self.when = None  # asked for: run it whatever ``when`` says
        self.start()
        path = shared_dir() / f"{self.name}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shared run {self.name!r} did not finish in {timeout} s")
            time.sleep(0.5)
        r = json.loads(path.read_text())
        proc = subprocess.CompletedProcess(r["args"], r["returncode"], r["stdout"], r["stderr"])
        return proc, r["seconds"]

    def close(self, wait: bool) -> None:
        """At the end of the starting worker's session: let the command finish and its result be
        written (another worker may still wait for it), or, with ``wait`` False (the session was
        interrupted), end it."""
        if self.proc is None:
            return
        if not wait and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join()


# ---- the suite's shared runs ---------------------------------------------------------------
SMOKE_DATA = "smoke_data_"  # under the shared directory (a trailing "_" is reST markup: the
# report must still print the path as it is)


def _smoke_data(base: Path) -> None:
    image_folder(base / SMOKE_DATA)


def _smoke_command(base: Path) -> list[str]:
    """The smoke preset, made with an explicit data choice (an image folder instead of the
    preset's generated data) as a user's first command would be: every later command of the
    tests on it names no data, so they rely on the run directory keeping its data."""
    data = f'data={{"source": "imagefolder", "path": "{base / SMOKE_DATA}"}}'
    return [sys.executable, "-m", "snakemake", "--profile", "profiles/smoke"] + [
        "--directory", str(base / "smoke-session"), "--config", data,
    ]  # fmt: skip


def _paper_command(base: Path) -> list[str]:
    from pipeline_scripts.tools import cost

    return cost.dag_command([ROOT / "config.yaml"], base / "paper-plan")


# fixture -> the run it waits for
SHARED = {
    "smoke_session": SharedRun("smoke", _smoke_command, prepare=_smoke_data),
    "paper_dag": SharedRun("paper", _paper_command),
}


# ---- a run directory of any size, for tools.status ----------------------------------------------
SNAKEMAKE_JOB = """[Fri Dec  4 10:00:00 2026]
rule {rule}:
    input: results/data/cifar10.h5
    output: {outputs}
    log: {log}
    jobid: {jobid}
    reason: Missing output files: {first}
    resources: tmpdir=/tmp, runtime=60, gpu=1, mem_mb=6000
"""


def synthetic_run(run_dir: Path, jobs: list[dict], done: float, running: int, failed: int) -> None:
    """A run directory as Snakemake leaves it part-way through ``jobs`` (a plan's job list): the
    first ``done`` fraction of the jobs finished (empty output files, their logs, "Finished" in
    Snakemake's log), the next ``running`` started (incomplete marks with SLURM job ids), the next
    ``failed`` failed ("Error in rule" with their logs), the rest to run."""
    import base64

    real = [j for j in jobs if j["outputs"]]
    n_done = int(done * len(real))
    log = []
    for i, job in enumerate(real[: n_done + running + failed]):
        outs = job["outputs"]
        log.append(SNAKEMAKE_JOB.format(rule=job["rule"], outputs=", ".join(outs), first=outs[0],
                                        log=", ".join(job["log"]), jobid=i))  # fmt: skip
        if i < n_done:
            for out in outs:
                (run_dir / out).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / out).touch()
            log.append(f"[Fri Dec  4 10:00:00 2026]\nFinished jobid: {i} (Rule: {job['rule']})\n")
        elif i < n_done + running:
            for out in outs:
                b64 = base64.urlsafe_b64encode(out.encode()).decode()
                parts = [b64[k : k + 254] for k in range(0, len(b64), 254)]  # Snakemake's split
                mark = run_dir.joinpath(".snakemake", "incomplete",
                                        *("@" + p for p in parts[:-1]), parts[-1])  # fmt: skip
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.write_text(f'{{"external_jobid": "{1000 + i}"}}')
        else:
            log.append(
                f"[Fri Dec  4 11:00:00 2026]\nError in rule {job['rule']}:\n    jobid: {i}\n"
                f"    output: {', '.join(outs)}\n    log: {', '.join(job['log'])} (check log "
                "file(s) for error details)\n"
            )
        for path in job["log"]:
            (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / path).write_text("done\n")
    (run_dir / ".snakemake" / "log").mkdir(parents=True, exist_ok=True)
    (run_dir / ".snakemake" / "log" / "2026-12-04T100000.0.snakemake.log").write_text("".join(log))
