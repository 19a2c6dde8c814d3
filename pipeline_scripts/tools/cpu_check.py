"""Does this CPU train every network correctly? One forward + backward per network, per batch
kind and per thread count, under an instruction-set cap, each case watched for a crash, a hang
and wrong gradients.

    python -m pipeline_scripts.tools.cpu_check                     # this CPU's own kernels
    python -m pipeline_scripts.tools.cpu_check --isa avx2          # capped to AVX2 (any x86 CPU)
    python -m pipeline_scripts.tools.cpu_check --isa avx2 --networks resnet8_w4 --threads 1 2

Why: oneDNN and ATen pick their kernels by the CPU's instruction set, so a kernel bug can exist
on an AVX2 machine and not on the AVX-512 one the tests ran on (docs/onednn-1x1-bug.md). Both
libraries can be capped to a lower set (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``), so any
x86 machine can run the AVX2 kernels.

Each case builds the network with the paper's initialisation, runs it exactly as training does
(``multirun.make``: the plain channels_last model for one run, the grouped or vmapped batch for
two; the layout rule of ``layout.py``), takes one forward + backward on 8 random images in
training mode and compares every weight gradient with the same computation in float64 (NCHW,
ATen's reference kernels): a relative error above ``TOLERANCE`` of the tensor's largest gradient
is "wrong". The cases of one thread count run in one child process that announces each case
before it starts; a child that dies (a signal) or falls silent for ``--timeout`` seconds (a
hang) fails the case it was in, and a fresh child takes the remaining ones. Exit status 1 when
any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from pipeline_scripts.earlyphase import device

# The paper's networks and the scaled test networks the suite and the presets train.
NETWORKS = (
    "resnet20",
    "resnet56",
    "resnet18",
    "vgg13",
    "wrn16_8",
    "resnet8_w4",
    "resnet8_w8",
    "resnet18_w8",
    "vgg13_w8",
    "wrn10_1",
)
# Batch kinds: one run (every network), two runs grouped / vmapped (the narrow test networks;
# the wide paper networks would only repeat the one-run kernels at twice the cost).
BATCHED = ("resnet8_w4", "resnet8_w8", "resnet18_w8", "wrn10_1")
# single / grouped / vmap: one training step of one run, two runs grouped, two runs vmapped;
# hvp: a Hessian-vector product (double backward) as the Hessian jobs compute it.
METHODS = ("single", "grouped", "vmap", "hvp")
ISA_ENV = device.ISA_ENV  # --isa NAME -> the environment that caps the kernels
BATCH = 4  # images per case: small for the float64 reference, enough for 2 threads; oneDNN's
# strided 1x1 bug crashes at batch 4 already (docs/onednn-1x1-bug.md)
TOLERANCE = 1e-3  # float32 vs float64 gradients measure ~1e-6; the oneDNN bug gives 0.1 - 1


@dataclass
class Case:
    network: str
    method: str
    threads: int
    status: str = "not run"  # ok | wrong | crashed | hung | error
    max_rel_error: float | None = None
    seconds: float | None = None
    detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.network}/{self.method}/{self.threads}t"


def cases(networks=NETWORKS, threads=(1, 2), methods=METHODS) -> list[Case]:
    out = []
    for t in threads:
        for net in networks:
            for method in methods:
                if method in ("single", "hvp") or net in BATCHED:
                    out.append(Case(net, method, t))
    return out


# ----------------------------------------------------------------------------------------------
# The child: runs cases, announcing each


def _layer_errors(network: str, method: str) -> float | None:
    """The largest relative error of any layer's output, weight gradients and input gradient in
    one training step of the float32 training path, against float64 on the same tensors (inf:
    a non-finite gradient). vmap: None -- module hooks cannot see inside vmap, so its case
    checks for a crash, a hang and finite gradients only."""
    import torch
    import torch.nn.functional as F

    from pipeline_scripts.earlyphase.hparams import TrainingHparams

    if method == "hvp":
        return _hvp(network)
    group, xs, ys = _training_batch(network, method)
    layers = [] if method == "vmap" else _layers_with_parameters(group, method)
    seen, capturing = _capture(layers)
    out = group.logits(xs, group.normaliser(TrainingHparams(), torch.device("cpu")))
    F.cross_entropy(out.reshape(-1, out.shape[-1]), ys.reshape(-1)).backward()
    capturing[0] = False
    worst = 0.0
    for name, m in layers:
        for e in _errors(m, seen[name]):
            worst = max(worst, e)
    grads = [p.grad for p in group.parameters()]
    if not all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads):
        return float("inf")
    return None if method == "vmap" else worst


def _training_batch(network: str, method: str):
    """The batch of one case as training runs it (``multirun.make``: one plain model, or two
    grouped / vmapped), in training mode, and its random uint8 images and labels."""
    import torch

    from pipeline_scripts.earlyphase import models, multirun, rng

    n = 1 if method == "single" else 2
    nets = []
    for seed in range(1, n + 1):
        m = models.build(network)
        models.initialise(m, rng.generator(seed, "init"))
        nets.append(m.train())
    g = rng.generator(0, "cpu_check")
    xs = [torch.randint(0, 256, (BATCH, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in nets]
    ys = torch.stack([torch.randint(0, 10, (BATCH,), generator=g) for _ in nets])
    group = multirun.make(method if n > 1 else "grouped", nets, torch.device("cpu"))
    group.train(True)
    return group, xs, ys


def _layers_with_parameters(group, method: str) -> list:
    """(name, module) of every module with parameters of its own."""
    net = group.model if method == "single" else group.net
    return [
        (name, m)
        for name, m in net.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]


def _capture(layers: list) -> tuple[dict, list[bool]]:
    """Hooks recording each layer's input, output and gradients, as computed, into the returned
    dict while the returned switch is on (the float64 twin later runs the same modules)."""
    seen, capturing = {}, [True]

    def forward_hook(m, args, out, name):
        if capturing[0]:
            seen[name] = {"x": args[0].detach().requires_grad_(), "out": out.detach()}

    def backward_hook(m, grad_in, grad_out, name):
        if capturing[0]:
            seen[name]["grad_x"], seen[name]["grad_out"] = grad_in[0], grad_out[0].detach()

    for name, m in layers:
        m.register_forward_hook(lambda m, a, o, name=name: forward_hook(m, a, o, name))
        m.register_full_backward_hook(lambda m, gi, go, name=name: backward_hook(m, gi, go, name))
    return seen, capturing


def _float64(m, x, grad_out, sign) -> list:
    """Output, parameter gradients and input gradient of ``m`` in float64; with ``sign`` = abs,
    of |inputs| (for a linear layer: each result's sum of absolute terms)."""
    from torch.func import functional_call

    params = {k: sign(p.detach().double()).requires_grad_() for k, p in m.named_parameters()}
    buffers = {k: b.double() if b.is_floating_point() else b.clone() for k, b in m.named_buffers()}
    x = sign(x.detach().double()).requires_grad_()
    out = functional_call(m, {**params, **buffers}, (x,))
    out.backward(sign(grad_out.double()))
    return [out.detach(), *(params[k].grad for k, _ in m.named_parameters()), x.grad]


def _errors(m, s: dict):
    """Relative error of each of one layer's recorded results (``_capture``) against float64."""
    import torch

    from pipeline_scripts.earlyphase import multirun

    got = [s["out"], *(p.grad for _, p in m.named_parameters()), s["grad_x"]]
    want = _float64(m, s["x"], s["grad_out"], lambda t: t)
    # A float sum is accurate relative to the sum of its terms' absolute values, not to its
    # result: a convolution's bias before a BatchNorm has a gradient that cancels to ~0.
    linear = isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, multirun.GroupedLinear))
    bound = _float64(m, s["x"], s["grad_out"], torch.abs) if linear else want
    for a, b, c in zip(got, want, bound, strict=True):
        if a is None or b is None:  # the network's input needs no gradient
            continue
        yield float((a.double() - b).abs().max() / c.abs().max().clamp_min(1e-30))


def _sabotage(name: str) -> None:
    """Tests of the parent only: CPU_CHECK_SABOTAGE="net/method=segv,..." crashes or hangs."""
    for item in filter(None, os.environ.get("CPU_CHECK_SABOTAGE", "").split(",")):
        case, what = item.split("=")
        if name.startswith(case + "/"):
            if what == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(3600)


def _hvp(network: str) -> float | None:
    """One Hessian-vector product of the Hessian jobs' loss (hessian.py): crash, hang and
    finiteness only (double backward has no per-layer float64 twin to compare with here)."""
    import torch
    import torch.nn.functional as F

    from pipeline_scripts.earlyphase import augment, hessian, models, rng
    from pipeline_scripts.earlyphase.hparams import TrainingHparams

    cpu = torch.device("cpu")
    model = hessian.network_model(network, cpu)
    models.initialise(model, rng.generator(1, "init"))
    hp = TrainingHparams()
    normalise = augment.Normalise(hp.mean, hp.std, cpu)
    g = rng.generator(0, "cpu_check")
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    params = list(model.parameters())

    def loss(m, xb, yb):
        return F.cross_entropy(m(normalise(xb)), yb)

    hvp = hessian.hvp_function(model, params, [(x, y)], loss)
    v = torch.randn(sum(p.numel() for p in params), generator=g)
    return None if bool(torch.isfinite(hvp(v)).all()) else float("inf")


def child(case_names: list[str], threads: int) -> int:
    import warnings

    device.configure(threads)
    # the first layer's input needs no gradient; its backward hook still reports its outputs'
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    for name in case_names:
        network, method, _ = name.split("/")
        print(json.dumps({"start": name}), flush=True)
        _sabotage(name)
        t = time.perf_counter()
        try:
            err = _layer_errors(network, method)
            status = "ok" if err is None or err <= TOLERANCE else "wrong"
            result = {"status": status, "max_rel_error": err}
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            result = {"status": "error", "detail": f"{type(e).__name__}: {e}"}
        print(json.dumps({"done": name, "seconds": time.perf_counter() - t, **result}), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: one child per thread count, restarted after a crash or a hang


def _spawn(names: list[str], threads: int, env: dict, stderr) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline_scripts.tools.cpu_check", "--child", str(threads)]
    return subprocess.Popen(
        [*cmd, *names], stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True
    )


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class _Silent(Exception):
    """The child wrote nothing before its deadline."""


def _messages(proc: subprocess.Popen, deadline):
    """The child's JSON lines as they come (unbuffered: a line read is never held back in a
    buffer the selector cannot see); raises _Silent when ``deadline()`` passes first."""
    fd, pending = proc.stdout.fileno(), b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while True:
            if not sel.select(timeout=max(0.0, deadline() - time.monotonic())):
                raise _Silent
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield json.loads(line)
    finally:
        sel.close()


def _run_child(names: list[str], threads: int, env: dict, timeout: float, by_name, log) -> list:
    """Run ``names`` in one child until it finishes or fails a case; returns the names left."""
    left = list(names)
    current = None
    deadline = [time.monotonic() + timeout + 60]  # + the child's imports
    with tempfile.TemporaryFile() as err:
        proc = _spawn(left, threads, env, err)
        try:
            for msg in _messages(proc, lambda: deadline[0]):
                if "start" in msg:
                    current, deadline[0] = msg["start"], time.monotonic() + timeout
                elif "done" in msg:
                    c = by_name[msg["done"]]
                    c.status, c.seconds = msg["status"], msg["seconds"]
                    c.max_rel_error, c.detail = msg.get("max_rel_error"), msg.get("detail", "")
                    left.remove(c.name)
                    current = None
                    error = "" if c.max_rel_error is None else f", error {c.max_rel_error:.1e}"
                    log(f"{c.name}: {c.status.upper()} ({c.seconds:.1f} s{error}) {c.detail}")
            rc = proc.wait()
            why = _describe_exit(rc)
            status = "crashed"
        except _Silent:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why, status = f"no result after {timeout:.0f} s (killed)", "hung"
        finally:
            proc.stdout.close()
        err.seek(0)
        tail = err.read()[-600:].decode(errors="replace").strip().replace("\n", " | ")
    if not left:
        return []
    if current is None:  # died or hung outside any case: nothing more to learn from a retry
        for name in left:
            by_name[name].status, by_name[name].detail = "error", f"the check's child: {why}"
        log(f"threads={threads}: the check's child failed outside a case: {why} {tail}")
        return []
    c = by_name[current]
    c.status, c.detail = status, f"{why}; {tail}" if tail else why
    log(f"{c.name}: {status.upper()} ({why})")
    left.remove(current)
    return left


def run(
    isa: str = "native",
    networks=NETWORKS,
    threads=(1, 2),
    methods=METHODS,
    timeout: float = 120.0,
    log=print,
) -> dict:
    """Run every case (see the module docstring); returns the report (``report["ok"]``)."""
    env = {**os.environ, **ISA_ENV[isa]}
    todo = cases(networks, threads, methods)
    by_name = {c.name: c for c in todo}
    for t in threads:
        left = [c.name for c in todo if c.threads == t]
        while left:
            left = _run_child(left, t, env, timeout, by_name, log)
    capability = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    report = {
        "isa": isa,
        "env": ISA_ENV[isa],
        "aten_cpu_capability": capability,
        "tolerance": TOLERANCE,
        "cases": [asdict(c) for c in todo],
        "ok": all(c.status == "ok" for c in todo),
    }
    bad = [c.name for c in todo if c.status != "ok"]
    log(
        f"{len(todo) - len(bad)}/{len(todo)} cases ok under isa={isa} ({capability})"
        + (f"; failed: {', '.join(bad)}" if bad else "")
    )
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[2:], int(argv[1]))
    p = argparse.ArgumentParser(
        prog="python -m pipeline_scripts.tools.cpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--isa", choices=sorted(ISA_ENV), default="native")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    report = run(args.isa, args.networks, args.threads, args.methods, args.timeout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
