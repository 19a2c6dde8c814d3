"""Effective standard deviation of every configured perturbation variant for one weight state.

    python -m pipeline_scripts.tools.effective_std --network resnet20 --k 500 \\
        --dense runs/timeline/results/resnet20/seed{1,2,3}/dense \\
        (--mask-dir RUN/imp/rewind500/level6 | --standin-iteration 2000 --standin-keep 0.262)

Prints, per variant in config.yaml, the mean over the given dense runs (± std over them) of the
std of (w_perturbed - w_k) over the kept prunable weights (Section 5's "effective standard
deviation", Figure 8's x-axis), without training anything. The paper measured it on the IMP
sub-network it perturbs (level 6: 26.2% of weights remaining): ``--mask-dir`` names the directory
of that IMP level's ``mask.pt`` under each run (``{seed}`` is replaced by the run's seed). Without
a trained IMP chain, ``--standin-iteration T --standin-keep f`` uses a STAND-IN: a global
magnitude mask keeping the fraction f of the run's iteration-T weights -- which selects large
weights and so inflates the shuffles' values (a permutation within a group moves w by
E[(w_pi - w)^2] = 2 Var(group)); the output says which mask was used. Without either, every
prunable weight is kept.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import yaml

from pipeline_scripts.earlyphase import checkpoint, models, paper, perturb, prune, rng

# Section 5's values for ResNet-20 at k = 500, by the config's variant names (paper.py)
PAPER_K500 = {name: value for name, _, value, _, _ in paper.EFFECTIVE_STD}


def effective_stds(network, start, init0, variants: dict, mask=None, seed: int = 1) -> dict:
    model = models.build(network)
    init_std = models.initialise(model, rng.generator(seed, "init"))
    names = models.prunable(model, network)
    w_k = checkpoint.load(start)["state_dict"]
    mask = mask or prune.full_mask(w_k, names)
    fresh = models.build(network)
    models.initialise(fresh, rng.generator(seed, "fresh_init"))

    def masked(state):
        return {n: state[n] * mask[n] for n in mask}

    sources = perturb.Sources(
        weights_k=masked(w_k),
        weights_0=masked(checkpoint.load(init0)["state_dict"]),
        fresh=masked(fresh.state_dict()),
        mask=mask,
        init_std={n: init_std[n] for n in mask},
    )
    out = {}
    for name, spec in variants.items():
        spec = dict(spec)
        kind = spec.pop("kind")
        new = perturb.perturb(kind, sources, rng.generator(seed, "perturb", name), **spec)
        out[name] = perturb.effective_change(new, sources.weights_k, mask)
    return out


def _seed_of(run_dir: Path) -> int:
    m = re.search(r"seed(\d+)", str(run_dir))
    if not m:
        raise ValueError(f"{run_dir}: cannot tell the seed (expected .../seed<N>/dense)")
    return int(m[1])


def run_mask(run_dir: Path, network: str, args) -> tuple[dict | None, str]:
    """The mask for one dense run and a label saying what it is."""
    seed = _seed_of(run_dir)
    if args.mask_dir:
        path = Path(args.mask_dir.replace("{seed}", str(seed))) / "mask.pt"
        mask = prune.load(path)
        return mask, f"IMP mask {path} ({prune.remaining_fraction(mask):.3f} kept)"
    if args.standin_iteration is not None:
        ck = run_dir / "checkpoints" / f"iter{args.standin_iteration}.pt"
        weights = checkpoint.load(ck)["state_dict"]
        model = models.build(network)
        full = prune.full_mask(weights, models.prunable(model, network))
        mask = prune.global_magnitude(weights, full, 1.0 - args.standin_keep)
        return mask, (
            f"STAND-IN mask: global magnitude of {ck.name}, "
            f"{prune.remaining_fraction(mask):.3f} kept (no trained IMP mask)"
        )
    return None, "no mask (every prunable weight kept)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--network", required=True)
    ap.add_argument(
        "--k", type=int, required=True, help="rewind iteration whose weights to perturb"
    )
    ap.add_argument(
        "--dense",
        nargs="+",
        required=True,
        type=Path,
        help="dense run directories (.../seed<N>/dense) with checkpoints/iter<k>.pt",
    )
    ap.add_argument("--mask-dir", help="IMP level directory holding mask.pt ({seed} substituted)")
    ap.add_argument("--standin-iteration", type=int, help="stand-in mask from these weights")
    ap.add_argument("--standin-keep", type=float, default=0.262, help="stand-in: fraction kept")
    ap.add_argument("--config", default="config.yaml")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        variants = yaml.safe_load(f)["perturb"]["variants"]
    per_run = []
    for run_dir in args.dense:
        mask, label = run_mask(run_dir, args.network, args)
        ck = run_dir / "checkpoints"
        per_run.append(
            effective_stds(
                args.network,
                ck / f"iter{args.k}.pt",
                ck / "iter0.pt",
                variants,
                mask,
                seed=_seed_of(run_dir),
            )
        )
        print(f"{run_dir}: {label}")
    paper_values = PAPER_K500 if args.k == paper.EFFECTIVE_STD_K else {}
    print(
        f"\n{'variant':<28}{'effective std':>14}{'± over runs':>13}{'mean':>10}"
        f"{'paper (k=500)':>15}"
    )
    for name in variants:
        stds = np.array([r[name][1] for r in per_run])
        means = np.array([r[name][0] for r in per_run])
        spread = stds.std(ddof=1) if len(stds) > 1 else 0.0
        ref = paper_values.get(name)
        print(
            f"{name:<28}{stds.mean():>14.4f}{spread:>13.4f}{means.mean():>10.4f}"
            f"{'' if ref is None else ref:>15}"
        )


if __name__ == "__main__":
    main()
