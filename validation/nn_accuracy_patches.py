"""Network-vs-Bayes accuracy of the hybrid pipeline on several simulated patches.

The pipeline benchmark measures one patch; this script checks that the network targets hold
elsewhere on the sky and shows how they depend on the training length. For each patch (a cone
of radius 1.5 deg, LSST 10-year errors, r < 25.5, Galaxy-model prior) and each epoch limit it
runs the default hybrid pipeline, re-estimates 4,000 network rows with SNR > 5 in every band by
the Bayesian method, and prints sigma_G of NN - Bayes and the ratio of the network's to the
Bayesian sigma_G against the truth (targets: <= 0.06 / 0.024 / 0.055 and <= 1.05), with the
training time, the spread of the dust-map A_r over the held-out stars (5-95 %) and the
correlation of the networks' A_r - Bayes with it (the networks do not see the map value, while
the Bayesian A_r prior depends on it).

``--nn-dust-input`` gives the networks the dust-map A_r as one more input.
``--dust-prior profile`` runs the pipeline with the learned A_r prior
(:mod:`photodist.dust_profile`); the Bayesian reference then uses the run's fitted profile.

Usage: ``python validation/nn_accuracy_patches.py [--epochs 256 512] [--patches 100,35 200,-30]
[--dust-prior profile] [--nn-dust-input]``
"""

from __future__ import annotations

import argparse

import numpy as np

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesEstimator
from photodist.evaluate import robust_stats, snr_mask
from photodist.locus import build_locus
from photodist.pipeline import (
    PipelineConfig,
    posterior_grid,
    run_patch,
    used_dust_profile,
    used_error_floor,
)
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch

TARGET_NN_BAYES = {"Mr": 0.06, "Ar": 0.024, "FeH": 0.055}
TARGET_RATIO = 1.05
TRUTH = {"Mr": "Mr_true", "Ar": "Ar_true", "FeH": "FeH_true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--patches", nargs="+", default=["100,35", "200,-30", "60,60"])
    parser.add_argument("--radius", type=float, default=1.5)
    parser.add_argument("--held-out", type=int, default=4000)
    parser.add_argument("--error-floor", default=0.02, help="floor in mag, or auto")
    parser.add_argument("--dust-prior", choices=["flat", "profile"], default="flat")
    parser.add_argument("--nn-dust-input", action="store_true", help="map A_r as an input")
    args = parser.parse_args()
    locus = build_locus()
    for patch in args.patches:
        lon, lat = (float(v) for v in patch.split(","))
        cone = (lon, lat, args.radius)
        catalog = simulate_patch(cone=cone, seed=11, r_max=25.5)
        prior = build_patch_priors(cone=cone, seed=12)
        print(f"\npatch l = {lon:g}, b = {lat:g}: {len(catalog):,} stars")
        reference = rows = None
        for epochs in args.epochs:
            config = PipelineConfig(
                nn_max_epochs=epochs,
                seed=3,
                error_floor=args.error_floor,
                dust_prior=args.dust_prior,
                nn_dust_input=args.nn_dust_input,
            )
            result, timings, _ = run_patch(catalog, prior, locus, config)
            if reference is None:  # the same held-out stars for every epoch limit
                is_nn = (result["method"] == "nn").to_numpy()
                pool = np.flatnonzero(snr_mask(catalog, "lsst") & is_nn)
                rng = np.random.default_rng(5)
                rows = np.sort(rng.choice(pool, min(args.held_out, pool.size), replace=False))
                info = result.attrs["photodist_pipeline"]
                estimator = BayesEstimator(
                    posterior_grid(locus, config),
                    prior,
                    config.bayes_config(used_error_floor(info)),
                    dust_profile=used_dust_profile(info),
                )
                reference = estimator.predict(photometry_from_frame(catalog.iloc[rows], "lsst"))
            cells, passed = [], True
            for p, truth_column in TRUTH.items():
                nn = result[f"{p}_mean"].to_numpy()[rows]
                bayes = reference[f"{p}_mean"].to_numpy()
                truth = catalog[truth_column].to_numpy()[rows]
                nn_bayes = robust_stats(nn - bayes)[1]
                ratio = robust_stats(nn - truth)[1] / robust_stats(bayes - truth)[1]
                passed &= nn_bayes <= TARGET_NN_BAYES[p] and ratio <= TARGET_RATIO
                cells.append(f"{p} {nn_bayes:.4f} / {ratio:.3f}")
            a_map = catalog["Ar"].to_numpy()[rows]
            a_diff = result["Ar_mean"].to_numpy()[rows] - reference["Ar_mean"].to_numpy()
            spread = np.percentile(a_map, [5, 95])
            corr = np.corrcoef(a_diff, a_map)[0, 1] if np.ptp(a_map) > 0 else np.nan
            print(
                f"  {epochs:5d} epochs: train {timings['train']:5.1f} s | "
                + " | ".join(cells)
                + f" | {'pass' if passed else 'FAIL'} | map A_r {spread[0]:.3f}-{spread[1]:.3f},"
                f" corr(NN - Bayes A_r, map) {corr:+.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
