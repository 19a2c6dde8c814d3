"""Training hyperparameters as a frozen dataclass (house habit 6).

Defaults are the paper's protocol (Appendix A, Table A1); ``config.yaml`` repeats them explicitly and
Snakemake passes them to each job as ``params`` so that changing one re-runs exactly the affected jobs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TrainingHparams:
    batch_size: int = 128  # examples per SGD step (Table A1; VGG-13 uses 64)
    lr: float = 0.1  # initial learning rate (Table A1)
    momentum: float = 0.9  # SGD momentum (Table A1)
    weight_decay: float = 1e-4  # L2 coefficient, applied to every parameter (Appendix A)
    epochs: float = 160  # length of training in epochs (Appendix A); fractional allowed
    milestones: tuple[float, ...] = (80, 120)  # epochs at which lr is multiplied by gamma (App. A)
    gamma: float = 0.1  # lr decay factor at each milestone (Appendix A)
    crop_padding: int = 4  # zero padding (pixels) for the random crop; 0 disables cropping (App. A)
    flip: bool = True  # random horizontal flips (Appendix A)
    mean: tuple[float, ...] = (
        0.485,
        0.456,
        0.406,
    )  # per-channel normalisation mean (framework facts)
    std: tuple[float, ...] = (
        0.229,
        0.224,
        0.225,
    )  # per-channel normalisation std (framework facts)

    @classmethod
    def from_dict(cls, d: dict) -> TrainingHparams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown training hyperparameter(s) {unknown}; known: {sorted(known)}"
            )
        d = dict(d)
        for key in ("milestones", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def iterations_per_epoch(self, n_train: int) -> int:
        """Steps per epoch; the last partial batch is kept (391 for CIFAR-10 at batch 128)."""
        return math.ceil(n_train / self.batch_size)

    def total_iterations(self, n_train: int) -> int:
        return round(self.epochs * self.iterations_per_epoch(n_train))

    def lr_at(self, iteration: int, n_train: int) -> float:
        """Step schedule: lr * gamma^(number of milestones reached), milestones in epochs."""
        ipe = self.iterations_per_epoch(n_train)
        drops = sum(iteration >= round(m * ipe) for m in self.milestones)
        return self.lr * self.gamma**drops
