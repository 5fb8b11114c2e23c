"""Choose the Bayesian posterior grid by measurement: does halving a grid step move percentiles?

Simulates a patch (LSST 10-year errors, SNR > 5 in all bands) with its own Galaxy-model prior,
runs the estimator on grids of decreasing step (one or both steps halved each time) and
compares the 16/50/84 percentiles of M_r, [Fe/H], A_r and Q_r with those on the next finer grid.
Prints the maximum and the 99th percentile of the absolute change per parameter.

Usage: ``python validation/bayes_grid_study.py [--stars 2000] [--l 60 --b 45]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator
from photodist.locus import build_locus
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch

GRIDS = [(0.1, 0.2), (0.1, 0.1), (0.05, 0.1), (0.05, 0.05), (0.025, 0.025)]
PARAMS = ("Mr", "FeH", "Ar", "Qr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=2000)
    parser.add_argument("--l", type=float, default=60.0)
    parser.add_argument("--b", type=float, default=45.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cone = (args.l, args.b, 0.5)
    catalog = simulate_patch(cone=cone, seed=args.seed, r_max=25.5)
    errors = catalog[[f"{band}Err" for band in "ugrizy"]].to_numpy()
    catalog = catalog[(errors < 0.2171).all(axis=1)].sample(
        n=min(args.stars, len(catalog)), random_state=args.seed
    )
    prior = build_patch_priors(cone=cone, seed=args.seed + 1)
    phot = photometry_from_frame(catalog.reset_index(drop=True), "lsst")
    base = build_locus(feh_step=0.025, mr_step=0.02)
    results = {}
    for feh_step, mr_step in GRIDS:
        locus = base.resample(feh_step, mr_step)
        start = time.perf_counter()
        results[(feh_step, mr_step)] = BayesEstimator(locus, prior).predict(phot)
        elapsed = (time.perf_counter() - start) / len(phot) * 1e6
        print(
            f"grid {feh_step} dex x {mr_step} mag ({locus.colors[..., 0].size} points): "
            f"{elapsed:.0f} us/star"
        )
    print(f"\n{len(phot)} stars, l = {args.l}, b = {args.b}; change to the next finer grid")
    print("(max / 99th percentile of |change| over stars and the 16/50/84 percentiles)")
    for coarse, fine in zip(GRIDS[:-1], GRIDS[1:], strict=True):
        a, b = results[coarse], results[fine]
        cells = []
        for p in PARAMS:
            cols = [f"{p}_p16", f"{p}_p50", f"{p}_p84"]
            d = np.abs(a[cols].to_numpy() - b[cols].to_numpy())
            d = d[np.isfinite(d)]
            cells.append(f"{p} {d.max():.3f}/{np.percentile(d, 99):.3f}")
        print(f"{coarse} -> {fine}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
