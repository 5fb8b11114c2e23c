"""How many degrees of freedom does the best-fit chi2 keep? The POOR_FIT threshold's study.

Simulates patches whose stars the model describes exactly (the package's locus and Galaxy
model; SDSS single-epoch and LSST 10-year errors, SNR > 5 in all bands), takes each star's
best-fit chi2 (``BayesEstimator.best_fit``: M_r, [Fe/H] and A_r adjusted, no prior) and
prints its 50/99/99.9 % points and the fraction of stars beyond the 99.9 % point of chi2
with n, n - 1 and n - 2 degrees of freedom (n colours). A flag meant to catch 0.1 % of
well-described stars should see about that fraction, not far fewer.

Usage: ``python validation/poor_fit_dof.py [--stars 30000] [--seed 11]``
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import chi2

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator
from photodist.evaluate import max_error_for_snr
from photodist.locus import build_locus
from photodist.simulate import simulate_patch

# (band set, error model, Galactic cone l, b, radius in degrees, faint limit in true r)
PATCHES = [
    ("sdss", "sdss", (60.0, 45.0, 2.0), 21.5),
    ("lsst", "lsst10", (60.0, 45.0, 1.0), 24.0),
    ("lsst", "lsst10", (120.0, 8.0, 0.5), 24.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=30000, help="most stars per patch")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    locus = build_locus().resample(0.05, 0.1)
    print("bands, cone (l, b, radius), floor: stars; chi2 50/99/99.9 %; beyond 99.9 % of n/n-1/n-2")
    for bands, errors, cone, r_max in PATCHES:
        catalog = simulate_patch(
            cone=cone,
            r_max=r_max,
            band_set=bands,
            errors=errors,
            seed=args.seed,
            n_max=args.stars,
        )
        photometry = photometry_from_frame(catalog, bands)
        band_errors = catalog[[f"{band}Err" for band in photometry.band_set.bands]]
        bright = (band_errors.to_numpy() < max_error_for_snr(5.0)).all(axis=1)
        n = photometry.colors.shape[1]
        for floor in (0.0, 0.02):
            chi, _ = BayesEstimator(locus, None, BayesConfig(error_floor=floor)).best_fit(
                photometry
            )
            x = chi[np.isfinite(chi) & bright]
            points = np.quantile(x, [0.5, 0.99, 0.999])
            beyond = [np.mean(x > chi2.ppf(0.999, dof)) for dof in (n, n - 1, n - 2)]
            print(
                f"{bands} {cone} {floor:.2f}: {len(x)}; "
                + " / ".join(f"{v:.2f}" for v in points)
                + "; "
                + " / ".join(f"{100 * v:.3f} %" for v in beyond)
            )


if __name__ == "__main__":
    main()
