"""Effective standard deviation of every configured perturbation variant for one weight state.

    python -m pipeline_scripts.earlyphase.effective_std --network resnet20 \\
        --start runs/timeline/results/resnet20/seed1/dense/checkpoints/iter500.pt \\
        --init0 runs/timeline/results/resnet20/seed1/dense/checkpoints/iter0.pt [--mask M.pt]

Prints mean and std of (w_perturbed - w_k) over the kept prunable weights (Section 5's
"effective standard deviation", Figure 8's x-axis) for each variant in config.yaml, without
training anything; without --mask every prunable weight is kept (the dense network).
"""

from __future__ import annotations

import argparse

import yaml

from . import checkpoint, models, perturb, prune, rng

PAPER_K500 = {  # Section 5 / Figure 8 values quoted for ResNet-20 at k = 500
    "signs_k_mags_0": 0.042,
    "signs_0_mags_k": 0.033,
    "shuffle_filter": 0.092,
    "shuffle_layer": 0.143,
    "shuffle_network": 0.144,
    "samesign_shuffle_filter": 0.049,
    "init_signs_shuffle_layer": 0.087,
}


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--network", required=True)
    ap.add_argument("--start", required=True, help="checkpoint at iteration k")
    ap.add_argument("--init0", required=True, help="checkpoint at iteration 0")
    ap.add_argument("--mask", help="IMP mask file (default: keep every weight)")
    ap.add_argument("--config", default="config.yaml")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        variants = yaml.safe_load(f)["perturb"]["variants"]
    mask = prune.load(args.mask) if args.mask else None
    result = effective_stds(args.network, args.start, args.init0, variants, mask)
    print(f"{'variant':<28}{'mean':>10}{'std':>10}{'paper (k=500)':>16}")
    for name, (mean, std) in result.items():
        paper = PAPER_K500.get(name)
        print(f"{name:<28}{mean:>10.4f}{std:>10.4f}{'' if paper is None else paper:>16}")


if __name__ == "__main__":
    main()
