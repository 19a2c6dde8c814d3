"""The whole training step as one graph: batch selection, crop and flip, normalisation, forward,
loss, backward, the masked SGD update with weight decay and momentum, and the running loss sums.

``train.train_runs`` takes a step in pieces (``_Loop.next_batch`` and ``_Loop.step``): a few
hundred operators a step, each a kernel launch on a GPU, where a ResNet-20 step at batch 128 does
too little work to fill the device (docs/gpu.md). Here the step is one function of tensors only:

* every input lives on the device: the data set, the epoch's draws (data order, crop offsets,
  flips; ``augment.draw_epoch``, copied into fixed buffers when an epoch starts), the iteration
  and the position in the epoch as device counters the step advances itself, and the learning
  rate looked up from the iteration in a table of the schedule's values (``lr_schedule``), so no
  value crosses from the host during a step and the schedule does not recompile anything;
* ``torch.fx.experimental.proxy_tensor.make_fx`` traces it -- through autograd -- into one FX
  graph of ATen operators (``trace``): forward, backward and update in one graph, the BatchNorm
  running statistics and the optimizer state updated in place;
* that graph runs compiled by Inductor (``runtime.compile``) or as traced, and on CUDA is
  captured whole in one CUDA graph (``runtime.cuda_graphs``): one launch a step (``WholeStep``).

The arithmetic is the eager step's: the same operators in the same order (a traced graph replayed
as traced equals the eager step bit for bit on the CPU: tests/unit/test_wholestep.py), except the
SGD update, which Inductor cannot take as PyTorch's fused kernel (no meta kernel) and computes as
the same element-wise formula (``sgd_update``). A compiled graph fuses operators, so it agrees
with the eager step to float rounding, like any other change of kernels.

Evaluation runs the same way, one graph a batch (``eval_function``, ``WholeStep.evaluate``).

What the graph does not take (``unsupported``): a pre-training task's batch transform (its random
draws come per step from CPU generators), telemetry (it reads gradients inside the step) and
vmapped runs. Those steps run in pieces: eagerly, or with the forward and backward compiled
(``runtime.compile``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from . import augment
from . import device as devices

# What this process has built (the measuring tools read and reset it): graphs (steps and
# evaluation batches) traced, compiled by Inductor, captured in CUDA graphs.
built = {"traced": 0, "compiled": 0, "captured": 0}


def unsupported(runs: Sequence, method: str) -> str | None:
    """Why the runs of a batch cannot take their step as one graph, or None."""
    if any(r.opts.batch_fn is not None for r in runs):
        return "a pre-training task's batch transform draws per step on the CPU"
    if any(r.recorder is not None for r in runs):
        return "telemetry reads the gradients inside the step"
    if method == "vmap" and len(runs) > 1:
        return "vmapped runs"
    return None


def lr_schedule(hp, n_train: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(milestone iterations, learning rate after 0, 1, ... milestones) as device tensors: the
    step looks its learning rate up at ``(it >= milestones).sum()`` in the table, the value of
    ``hp.lr_at`` (a float32 of the same double)."""
    ipe = hp.iterations_per_epoch(n_train)
    marks = sorted(round(m * ipe) for m in hp.milestones)
    table = [hp.lr * hp.gamma**k for k in range(len(marks) + 1)]
    return (
        torch.tensor(marks, dtype=torch.int64, device=device),
        torch.tensor(table, dtype=torch.float32, device=device),
    )


def losses(out: torch.Tensor, ys: list) -> torch.Tensor:
    """Each run's mean cross-entropy, (N,); for one run exactly ``F.cross_entropy(out, y)``."""
    if len(ys) == 1:
        return F.cross_entropy(out[0], ys[0]).unsqueeze(0)
    y = torch.stack(ys)
    per = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
    return per.view(len(ys), -1).mean(1)


def sgd_update(params, grads, momenta, lr, *, momentum: float, weight_decay: float, fused: bool):
    """The paper's SGD step on lists of tensors, ``lr`` a device scalar: PyTorch's fused kernel
    (``fused``, for a graph replayed as traced: the eager step's very kernel) or its element-wise
    formula -- d = g + wd p; buf = m buf + d; p -= lr buf -- for Inductor."""
    if fused:
        torch._fused_sgd_(
            params,
            grads,
            momenta if momentum else [],
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=False,  # the buffers start at zero: m * 0 + d == d
        )
        return
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else list(grads)
    if momentum:
        torch._foreach_mul_(momenta, momentum)
        torch._foreach_add_(momenta, d)
        d = momenta
    torch._foreach_sub_(params, torch._foreach_mul(d, lr))


def step_function(loop, b: int, fused: bool) -> Callable:
    """The step of ``loop``'s batch for batch size ``b`` as a function of tensors only, which
    updates them in place: parameters, buffers, momentum buffers, masks, the iteration ``it``, the
    position ``j`` in the epoch, the loss sums, the epoch's draws, the data and the schedule
    (``WholeStep.inputs``). The same operators as ``train._Loop.next_batch`` and ``step``."""
    group, hp, normalise = loop.group, loop.hp, loop.normalise
    named = list(group.module.named_parameters())
    names = [n for n, _ in named]
    buffer_names = [n for n, _ in group.module.named_buffers()]
    masked = {id(p): i for i, p in enumerate(loop.mparams)}
    where = [i for i, (_, p) in enumerate(named) if id(p) in masked]  # the masked parameters
    mask_of = [masked[id(named[i][1])] for i in where]  # ... and their masks
    batch, n_runs, pad = hp.batch_size, loop.n_runs, hp.crop_padding
    momentum, weight_decay = loop.optimizer.momentum, loop.optimizer.weight_decay

    def step(params, buffers, momenta, masks, it, j, loss_acc, draws, data, schedule):
        order, dy, dx, flip = draws
        pos = j * batch + torch.arange(b, device=j.device)
        xs, ys = [], []
        for r in range(n_runs):
            train_x, train_y = data[r]
            idx = order[r].index_select(0, pos)
            xs.append(
                augment.gather_crop_flip(train_x[idx], dy[r][pos], dx[r][pos], flip[r][pos], pad)
            )
            ys.append(train_y[idx])
        state = dict(zip(names, params, strict=True))
        state.update(zip(buffer_names, buffers, strict=True))

        def call(module, x):
            return torch.func.functional_call(module, state, (x,))

        with devices.autocast(loop.device, loop.precision):  # as the eager step (bf16)
            per_run = losses(group.logits(xs, normalise, call=call), ys)
        grads = list(torch.autograd.grad(per_run[0] if n_runs == 1 else per_run.sum(), params))
        with torch.no_grad():
            # each gradient in its parameter's strides, as .backward()'s AccumulateGrad leaves
            # it (the fused SGD kernel pairs elements by memory position)
            grads = [
                g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
                for g, p in zip(grads, params, strict=True)
            ]
            if where:
                torch._foreach_mul_([grads[i] for i in where], [masks[m] for m in mask_of])
            marks, table = schedule
            lr = table.index_select(0, (it >= marks).sum().view(1)).squeeze(0)
            sgd_update(
                list(params),
                grads,
                list(momenta),
                lr,
                momentum=momentum,
                weight_decay=weight_decay,
                fused=fused,
            )
            if where:
                torch._foreach_mul_([params[i] for i in where], [masks[m] for m in mask_of])
            loss_acc.add_(per_run.detach().float())
            it.add_(1)
            j.add_(1)

    return step


def eval_function(loop, b: int, batch: int) -> Callable:
    """One evaluation batch of size ``b`` (at position ``k`` of batches of ``batch``) of every
    run on its test set, added to the loss sums and correct counts: the operators of
    ``train.evaluate`` (one run) and ``train._evaluate_many`` (runs batched)."""
    group, normalise, n_runs = loop.group, loop.normalise, loop.n_runs
    names = [n for n, _ in group.module.named_parameters()]
    buffer_names = [n for n, _ in group.module.named_buffers()]

    def evaluate(params, buffers, k, loss, correct, tests):
        pos = k * batch + torch.arange(b, device=k.device)
        xs = [x.index_select(0, pos) for x, _ in tests]
        state = dict(zip(names, params, strict=True))
        state.update(zip(buffer_names, buffers, strict=True))

        def call(module, x):
            return torch.func.functional_call(module, state, (x,))

        with devices.autocast(loop.device, loop.precision):
            out = group.logits(xs, normalise, call=call).float()
        if n_runs == 1:
            y = tests[0][1].index_select(0, pos)
            loss.add_(F.cross_entropy(out[0], y, reduction="sum"))
            correct.add_((out[0].argmax(1) == y).sum())
        else:
            y = torch.stack([t[1].index_select(0, pos) for t in tests])
            ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
            loss.add_(ce.view(n_runs, -1).sum(1))
            correct.add_((out.argmax(-1) == y).sum(1))
        k.add_(1)

    return evaluate


class WholeStep:
    """A batch's training step as one graph per batch size (module docstring); ``loop`` is the
    ``train._Loop`` whose state (parameters, buffers, optimizer, masks, loss sums) it updates in
    place. ``compile``: run the graph compiled by Inductor; ``capture``: capture it in one CUDA
    graph (CUDA only)."""

    def __init__(self, loop, *, compile: bool, capture: bool):
        self.loop, self.compile, self.capture = loop, compile, capture
        dev = loop.device
        opt = loop.optimizer
        module = loop.group.module
        # detached aliases: plain tensors sharing the parameters' memory, updated in place
        self.params = [p.detach() for _, p in module.named_parameters()]
        self.buffers = [b for _, b in module.named_buffers()]
        if opt.momentum:  # the optimizer's buffers, so that its state_dict saves the graph's
            opt.momentum_buffers = [
                torch.zeros_like(p) if m is None else m
                for p, m in zip(opt.params, opt.momentum_buffers, strict=True)
            ]
        self.momenta = list(opt.momentum_buffers) if opt.momentum else []
        self.masks = list(loop.mmasks)
        self.it = torch.tensor(loop.it, dtype=torch.int64, device=dev)
        self.j = torch.zeros((), dtype=torch.int64, device=dev)
        n, runs = loop.sched.n, loop.runs
        self.draws = (
            torch.zeros(len(runs), n, dtype=torch.int64, device=dev),
            torch.zeros(len(runs), n, dtype=torch.int64, device=dev),
            torch.zeros(len(runs), n, dtype=torch.int64, device=dev),
            torch.zeros(len(runs), n, dtype=torch.bool, device=dev),
        )
        self.data = [(r.data.train_x, r.data.train_y) for r in runs]
        self.schedule = lr_schedule(loop.hp, n, dev)
        self.graphs: dict = {}  # batch size -> one step; (test sets, batch size) -> evaluation
        self.sums: dict = {}  # test sets -> their evaluation's position, loss and correct sums

    def inputs(self) -> tuple:
        loop = self.loop
        return (
            self.params,
            self.buffers,
            self.momenta,
            self.masks,
            self.it,
            self.j,
            loop.loss_acc,
            self.draws,
            self.data,
            self.schedule,
        )

    def trace(self, b: int, fused: bool) -> torch.fx.GraphModule:
        """The step for batch size ``b`` as one FX graph, traced on copies of the state (tracing
        runs the step once)."""
        from torch.fx.experimental.proxy_tensor import make_fx

        copies = self._copies(self.inputs())
        for p in copies[0]:
            p.requires_grad_(True)  # (the traced autograd differentiates by them)
        return make_fx(step_function(self.loop, b, fused))(*copies)

    def _build(self, b: int) -> Callable[[], None]:
        """The callable taking one step of batch size ``b`` with the loop's state."""
        return self._runner(self.trace(b, fused=not self.compile), self.inputs(), self._copies)

    def _runner(self, gm, args: tuple, copies: Callable) -> Callable[[], None]:
        """``gm(*args)`` as this batch runs its graphs: compiled by Inductor first (on copies of
        the state, so compiling takes no step of the runs), captured in a CUDA graph."""
        built["traced"] += 1
        run = gm
        if self.compile:
            from . import multirun

            run = multirun._compiled(gm, None)
            run(*copies(args))
            built["compiled"] += 1
        if self.capture:
            replay = _captured(run, args, copies)
            built["captured"] += 1
            return replay
        return lambda: run(*args)

    @staticmethod
    def _copies(args: tuple) -> tuple:
        """Copies of the state a step changes (the rest is read only): for tracing and warming
        up without touching the runs."""
        params, buffers, momenta, masks, it, j, loss_acc, draws, data, schedule = args
        return (
            [p.clone() for p in params],
            [x.clone() for x in buffers],
            [x.clone() for x in momenta],
            masks,
            it.clone(),
            j.clone(),
            loss_acc.clone(),
            draws,
            data,
            schedule,
        )

    def begin_epoch(self, draws: Sequence, j: int) -> None:
        """The epoch's draws of every run (``augment.draw_epoch``) into the graph's buffers, and
        the position in it."""
        for buf, part in zip(
            self.draws,
            zip(*[(d.order, d.dy, d.dx, d.flip) for d in draws], strict=True),
            strict=True,
        ):
            buf.copy_(torch.stack(part))
        self.j.fill_(j)

    def step(self, b: int) -> None:
        graph = self.graphs.get(b)
        if graph is None:
            graph = self.graphs[b] = self._build(b)
        graph()

    def evaluate(self, tests: list[tuple], batch: int) -> list[tuple]:
        """Per run (mean cross-entropy, accuracy) on its test set ``tests[i]``, as
        ``train._evaluate_batch`` computes them, one graph a batch (captured with the step's
        CUDA graphs); one host sync."""
        n = tests[0][0].shape[0]
        key = (tuple(id(x) for x, _ in tests), batch)
        if key not in self.sums:
            dev, shape = self.loop.device, () if self.loop.n_runs == 1 else (self.loop.n_runs,)
            self.sums[key] = (
                torch.zeros((), dtype=torch.int64, device=dev),  # the batch's position
                torch.zeros(shape, dtype=torch.float64, device=dev),  # summed cross-entropy
                torch.zeros(shape, dtype=torch.int64, device=dev),  # correct predictions
            )
        sums = self.sums[key]
        for t in sums:
            t.zero_()
        for b in [batch] * (n // batch) + ([n % batch] if n % batch else []):
            graph = self.graphs.get((key, b))
            if graph is None:
                graph = self.graphs[(key, b)] = self._build_eval(tests, batch, b, sums)
            graph()
        _, loss, correct = sums
        both = torch.stack([loss.reshape(-1), correct.reshape(-1).double()]).tolist()  # one sync
        return [(lo / n, c / n) for lo, c in zip(*both, strict=True)]

    def _build_eval(self, tests, batch: int, b: int, sums: tuple) -> Callable[[], None]:
        """One evaluation batch of size ``b`` as a graph, traced with the networks in evaluation
        mode (BatchNorm's running statistics), run as the training step's is."""
        from torch.fx.experimental.proxy_tensor import make_fx

        group = self.loop.group
        args = (self.params, self.buffers, *sums, tests)

        def copies(a):
            return (a[0], a[1], *(t.clone() for t in a[2:5]), a[5])

        group.train(False)
        try:
            gm = make_fx(eval_function(self.loop, b, batch))(*copies(args))
        finally:
            group.train(True)
        return self._runner(gm, args, copies)


def _captured(run, args, copies, cuda=torch.cuda) -> Callable[[], None]:
    """``run(*args)`` captured in one CUDA graph, after warming it up on copies of the state on a
    side stream (lazy initialisations, cuDNN/cuBLAS workspaces): capturing runs nothing, so the
    runs' state is as it was until the first replay, and each replay takes one step on it."""
    stream = cuda.Stream()
    stream.wait_stream(cuda.current_stream())
    with cuda.stream(stream):
        for _ in range(3):  # fresh copies each time: the step advances its position in the epoch
            run(*copies(args))
    cuda.current_stream().wait_stream(stream)
    graph = cuda.CUDAGraph()
    with cuda.graph(graph):
        run(*args)
    return graph.replay


def epoch_draws(loop) -> list[augment.EpochDraw]:
    """Each run's draws of the loop's current epoch (``augment.draw_epoch``): its own data order,
    crops and flips, keyed by its seed and data stream."""
    hp, sched = loop.hp, loop.sched
    epoch = loop.it // sched.ipe
    return [
        augment.draw_epoch(
            sched.n, r.opts.seed, epoch, hp.crop_padding, hp.flip, loop.device, r.opts.data_stream
        )
        for r in loop.runs
    ]
