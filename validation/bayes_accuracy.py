"""Accuracy and calibration of the Bayesian estimator on simulated patches with truth.

For a high-latitude and a low-latitude patch (LSST 10-year errors unless ``--survey sdss``, SNR
> 5 in all bands, priors from the same Galaxy model), prints Table-1-style statistics of
estimate - truth (median and σ_G = 0.7413 IQR) for M_r, A_r and [Fe/H], the calibration σ_G of
(estimate - truth) / σ, the fraction of stars whose truth lies inside the 16-84 % interval, and
the calibration with half that interval's width in place of σ (insensitive to a posterior's far
tails).

The colour-error floor is the default 0.02 mag unless given; ``--error-floor auto`` fits it per
patch as ``photodist bayes`` does (``photodist.error_floor``, the catalogue's scatter alone;
``--grid-term`` adds the grid's quantisation error, as the hybrid pipeline does).
``--a-min-fraction F --a-max-scale S --a-max-offset O`` set the flat A_r prior to
[F A_map, S A_map + O] (default [0, 1.3 A_map + 0.1]).

``--dust-from-truth`` puts each star's true A_r in the dust-map column, so that with
``--a-min-fraction 0.98 --a-max-scale 1.02 --a-max-offset 0`` the A_r prior pins A_r near its
true value (isolates what the colours and the ([Fe/H], M_r) prior do).

``--survey sdss`` simulates single-epoch SDSS photometry (ugriz, r < 22.5, 1-deg cones)
instead of LSST 10-year coadds.

``--independent-colors`` ignores the covariance of adjacent colours (the paper's chi2); by
default the estimator uses it, as the colours come from magnitudes with independent noise.

``--by-magnitude`` adds, per r range, the calibration with σ_G of the residuals and the median
posterior σ (which of the two makes a calibration miss).

``--by-truth`` adds, per range of true M_r, the M_r and [Fe/H] coverage, σ_G and median
error (which stars' intervals are too wide or too narrow).

``--patch L,B`` (repeatable) replaces the two default patches.

``--grid FEHxMR`` sets the posterior grid's steps (default 0.05x0.1 dex x mag) and
``--r-bin-half-width H`` the prior's r bins (centres every H mag, each ±H; default 0.5): both
test whether the grid or the prior's binning widens the posteriors.

Usage: ``python validation/bayes_accuracy.py [--stars 5000] [--error-floor auto|MAG]
[--by-magnitude] [--by-truth] [--dust-profile] [--patch L,B ...] [--grid FEHxMR]
[--r-bin-half-width H]``
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from photodist.bands import photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator
from photodist.dust_profile import fit_dust_profile
from photodist.error_floor import fit_error_floor
from photodist.locus import build_locus
from photodist.priors import R_BIN_CENTRES, build_patch_priors
from photodist.simulate import simulate_patch

#: simulated surveys: LSST 10-year coadds (cones of 0.5 deg) or single-epoch SDSS (1 deg)
SURVEYS = {
    "lsst": {"bands": "ugrizy", "errors": "lsst10", "r_max": 25.5, "radius": 0.5},
    "sdss": {"bands": "ugriz", "errors": "sdss", "r_max": 22.5, "radius": 1.0},
}
PATCHES = {"high latitude (l=60, b=60)": (60.0, 60.0), "low latitude (l=60, b=10)": (60.0, 10.0)}


def sigma_g(x: np.ndarray) -> float:
    """Robust width: 0.7413 times the interquartile range."""
    q25, q75 = np.nanpercentile(x, [25, 75])
    return float(0.7413 * (q75 - q25))


R_RANGES = ((14.0, 18.0), (18.0, 20.0), (20.0, 22.0), (22.0, 26.0))
MR_RANGES = ((-3.0, 3.0), (3.0, 5.0), (5.0, 7.0), (7.0, 10.0), (10.0, 17.0))


def by_magnitude(catalog, result) -> None:
    """Per r range: calibration σ_G, σ_G of the residuals and the median posterior σ."""
    r = catalog["rmag"].to_numpy()
    print("  per r range: calibration (residual sigma_G / median posterior sigma)")
    for lo, hi in R_RANGES:
        rows = (r >= lo) & (r < hi)
        cells = []
        for param in ("Mr", "Ar", "FeH"):
            diff = (result[f"{param}_mean"] - catalog[f"{param}_true"]).to_numpy()[rows]
            std = result[f"{param}_std"].to_numpy()[rows]
            cells.append(
                f"{param} {sigma_g(diff / std):.2f} ({sigma_g(diff):.3f} / {np.median(std):.3f})"
            )
        print(f"  r {lo:.0f}-{hi:.0f} ({rows.sum():4d} stars): " + ", ".join(cells))


def by_truth(catalog, result) -> None:
    """Per range of true M_r: coverage of the 16-84 % interval, σ_G and median of the error."""
    mr_true = catalog["Mr_true"].to_numpy()
    print("  per true M_r range: 16-84 coverage / sigma_G / median error")
    for lo, hi in MR_RANGES:
        rows = (mr_true >= lo) & (mr_true < hi)
        cells = []
        for param in ("Mr", "FeH"):
            truth = catalog[f"{param}_true"].to_numpy()[rows]
            diff = result[f"{param}_mean"].to_numpy()[rows] - truth
            inside = (truth > result[f"{param}_p16"].to_numpy()[rows]) & (
                truth < result[f"{param}_p84"].to_numpy()[rows]
            )
            cells.append(
                f"{param} {inside.mean():.2f} / {sigma_g(diff):.3f} / {np.median(diff):+.3f}"
            )
        print(f"  M_r {lo:+.0f} to {hi:+.0f} ({rows.sum():4d} stars): " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=5000)
    parser.add_argument("--survey", choices=sorted(SURVEYS), default="lsst")
    parser.add_argument("--error-floor", default="0.02", help="'auto' or a floor in mag")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--by-magnitude", action="store_true", help="calibration per r range")
    parser.add_argument("--by-truth", action="store_true", help="coverage per true M_r range")
    parser.add_argument("--grid", default="0.05x0.1", help="posterior grid steps FEHxMR")
    parser.add_argument(
        "--r-bin-half-width", type=float, default=0.5, help="prior r bins: centres every H, ±H"
    )
    parser.add_argument("--grid-term", action="store_true", help="auto: add the grid error")
    parser.add_argument(
        "--a-min-fraction", type=float, default=0.0, help="A_r prior from this x A_map"
    )
    parser.add_argument("--a-max-scale", type=float, default=1.3, help="A_max = S A_map + O")
    parser.add_argument("--a-max-offset", type=float, default=0.1, help="A_max = S A_map + O")
    parser.add_argument(
        "--independent-colors", action="store_true", help="chi2 without the colour covariance"
    )
    parser.add_argument(
        "--dust-from-truth", action="store_true", help="dust-map column = true A_r per star"
    )
    parser.add_argument(
        "--patch",
        action="append",
        metavar="L,B",
        help="Galactic longitude,latitude of a patch (repeatable; default b = 60 and b = 10)",
    )
    parser.add_argument(
        "--dust-profile",
        action="store_true",
        help="A_r prior from the patch's fitted dust profile (photodist.dust_profile)",
    )
    args = parser.parse_args()
    survey = SURVEYS[args.survey]
    feh_step, mr_step = (float(v) for v in args.grid.split("x"))
    locus = build_locus().resample(feh_step, mr_step)
    half = args.r_bin_half_width
    r_centres = R_BIN_CENTRES if half == 0.5 else np.arange(14.0, 27.0 + 1e-9, half)
    print(
        f"error floor {args.error_floor}, A_r prior [{args.a_min_fraction} A_map, "
        f"{args.a_max_scale} A_map + {args.a_max_offset}], "
        f"{'independent colour errors' if args.independent_colors else 'colour covariance'}; "
        "statistic: posterior mean - truth"
    )
    patches = PATCHES
    if args.patch:
        lonlat = [tuple(float(v) for v in text.split(",")) for text in args.patch]
        patches = {f"l={lon:g}, b={lat:g}": (lon, lat) for lon, lat in lonlat}
    for name, (lon, lat) in patches.items():
        cone = (lon, lat, survey["radius"])
        catalog = simulate_patch(
            cone=cone,
            seed=args.seed,
            r_max=survey["r_max"],
            band_set=args.survey,
            errors=survey["errors"],
        )
        errors = catalog[[f"{band}Err" for band in survey["bands"]]].to_numpy()
        catalog = catalog[(errors < 0.2171).all(axis=1)]
        catalog = catalog.sample(n=min(args.stars, len(catalog)), random_state=args.seed)
        catalog = catalog.reset_index(drop=True)
        prior = build_patch_priors(
            cone=cone,
            seed=args.seed + 1,
            band_set=args.survey,
            locus=locus,
            r_centres=r_centres,
            r_half_width=half,
        )
        phot = photometry_from_frame(catalog, args.survey)
        if args.dust_from_truth:
            phot = dataclasses.replace(phot, dust=catalog["Ar_true"].to_numpy())
        config = BayesConfig(
            dust_min_fraction=args.a_min_fraction,
            dust_scale=args.a_max_scale,
            dust_offset=args.a_max_offset,
            color_covariance=not args.independent_colors,
        )
        if args.error_floor == "auto":
            fit = fit_error_floor(
                phot, locus, prior, config, seed=args.seed, grid_term=args.grid_term
            )
            floor = fit.floor
        else:
            floor = float(args.error_floor)
        config = dataclasses.replace(config, error_floor=floor)
        profile = None
        if args.dust_profile:
            profile, fit_info = fit_dust_profile(phot, locus, prior, config, seed=args.seed)
            print(f"dust profile {profile.to_dict()}, {fit_info}")
        result = BayesEstimator(locus, prior, config, dust_profile=profile).predict(phot)
        print(
            f"\n{name}: {len(catalog)} stars, sightline A_r = {catalog['Ar'].iloc[0]:.3f}, "
            f"error floor {floor:.4f} mag"
        )
        print(
            f"{'':6s} {'median':>8s} {'sigma_G':>8s} {'norm sigma_G':>13s} {'16-84 cover':>12s}"
            f" {'norm by 16-84':>14s}"
        )
        for param, truth_col in (("Mr", "Mr_true"), ("Ar", "Ar_true"), ("FeH", "FeH_true")):
            truth = catalog[truth_col].to_numpy()
            diff = result[f"{param}_mean"].to_numpy() - truth
            norm = diff / result[f"{param}_std"].to_numpy()
            inside = (truth > result[f"{param}_p16"]) & (truth < result[f"{param}_p84"])
            half_width = 0.5 * (result[f"{param}_p84"] - result[f"{param}_p16"]).to_numpy()
            print(
                f"{param:6s} {np.nanmedian(diff):+8.3f} {sigma_g(diff):8.3f} "
                f"{sigma_g(norm):13.2f} {inside.mean():12.3f} {sigma_g(diff / half_width):14.2f}"
            )
        if args.by_magnitude:
            by_magnitude(catalog, result)
        if args.by_truth:
            by_truth(catalog, result)


if __name__ == "__main__":
    main()
