"""A time budget a GPU command keeps: a deadline for the whole command, a share of it per part,
and what was skipped because time ran out.

GPU time often comes in short slots (an interactive allocation, a pre-emptible node, a lease of
a few minutes), so a command that measures on a GPU must stop itself in time to write what it
has. ``Budget`` splits the time left between the parts still to run by their weights, so a part
that finishes early leaves its time to the later ones. Inside a part, ``Part.items`` hands out
the part's items while its time lasts and records the rest as skipped; a part that overruns its
time (one item that takes too long: a compile, a hung test) is cut off by an alarm
(``PartTimeout``, raised in the main thread by SIGALRM) and the command moves on to the next
part. Cutting an item off in the middle may leave the process's device state unusable, so a
command that must go on training afterwards runs the measuring in a process of its own
(``tools.lease`` does).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterable, Iterator


class PartTimeout(BaseException):  # noqa: N818 - BaseException: no `except Exception` swallows it
    """A part's time ran out while one of its items ran (SIGALRM)."""


class Budget:
    """``seconds`` in all, shared by the parts named in ``weights`` (in the order they run)."""

    def __init__(
        self,
        seconds: float,
        weights: dict[str, float],
        clock: Callable[[], float] = time.monotonic,
        reserve_s: float = 2.0,
    ):
        self.clock = clock
        self.seconds = float(seconds)
        self.end = clock() + self.seconds - reserve_s  # keep time to write the results
        self.weights = dict(weights)
        self.skipped: list[dict] = []  # {"part", "item", "why"}
        self.parts: dict[str, dict] = {}  # name -> {"allotted_s", "seconds", "cut_off"}

    def remaining(self) -> float:
        return self.end - self.clock()

    def allotment(self, name: str) -> float:
        """The seconds part ``name`` gets now: the time left, shared by the weights of this part
        and of the parts after it."""
        names = list(self.weights)
        later = names[names.index(name) :]
        return max(0.0, self.remaining() * self.weights[name] / sum(self.weights[n] for n in later))

    def skip(self, part: str, item: str, why: str) -> None:
        self.skipped.append({"part": part, "item": item, "why": why})

    @contextlib.contextmanager
    def part(self, name: str, alarm: bool = True) -> Iterator[Part]:
        """Run part ``name`` within its allotment: ``Part.items`` stops handing out items when
        the time is up; with ``alarm``, an item still running then is cut off (PartTimeout,
        caught here: the part ends, the command goes on)."""
        part = Part(self, name, self.allotment(name))
        self.parts[name] = {"allotted_s": round(part.seconds, 1), "cut_off": False}
        started = self.clock()
        previous = None
        if alarm and part.seconds > 0:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, part.seconds)
        try:
            yield part
        except PartTimeout:
            self.parts[name]["cut_off"] = True
            if part.current is not None:
                self.skip(name, part.current, f"cut off: the part's {part.seconds:.0f} s ran out")
            for item in part.pending:
                self.skip(name, item, "not started: the part's time ran out")
        finally:
            if previous is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            self.parts[name]["seconds"] = round(self.clock() - started, 1)

    def to_dict(self) -> dict:
        return {"budget_s": self.seconds, "parts": self.parts, "skipped": self.skipped}


class Part:
    """One part of a budgeted command (``Budget.part``)."""

    def __init__(self, budget: Budget, name: str, seconds: float):
        self.budget, self.name, self.seconds = budget, name, seconds
        self.end = budget.clock() + seconds
        self.current: str | None = None  # the item running now
        self.pending: list[str] = []  # items not yet started

    def remaining(self) -> float:
        return self.end - self.budget.clock()

    def items(self, items: Iterable, label: Callable = str, cost_s: Callable | None = None):
        """Yield ``items`` while the part has time: an item whose expected cost (``cost_s``,
        seconds; default: any time at all) exceeds the time left is skipped and recorded, and
        so is every item after the part's time is up."""
        todo = list(items)
        self.pending = [label(i) for i in todo]
        for item in todo:
            name = self.pending.pop(0)
            left = self.remaining()
            need = cost_s(item) if cost_s else 0.0
            if left <= 0 or need > left:
                why = (
                    "not started: the part's time ran out"
                    if left <= 0
                    else f"not started: expected {need:.0f} s, {left:.0f} s of the part left"
                )
                self.budget.skip(self.name, name, why)
                continue
            self.current = name
            yield item
            self.current = None


def _raise_timeout(signum, frame):
    raise PartTimeout()
