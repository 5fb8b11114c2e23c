"""Self-consistency of the Bayesian estimator: stars drawn from its own model.

Each star is drawn exactly as the estimator's posterior assumes: r uniform on [R_LO, R_HI];
a grid point ([Fe/H], M_r) from the prior of the star's r bin (the Galaxy-model prior of a
patch on the posterior grid), the true values uniform within that point's grid cell (the
estimator's percentiles spread each point's mass over its cell); A_r uniform on the flat
prior [0, 1.3 A_map + 0.1]; colours the grid point's locus colours reddened by A_r;
magnitudes with LSST 10-year errors (photerr, per band, so adjacent colours covary); SNR > 5
in every band. The estimator runs with the same prior, no error floor and the colour
covariance. Its posterior is then exact up to its numerical approximations, so:

* the 16-84 % intervals must contain the truth 68 % of the time, and the truth must fall
  below the median half of the time (a failure is an estimator error, not a model mismatch);
* σ_G of (mean - truth) / std shows what a *correct* posterior gives for the σ_G calibration
  statistic. Where posteriors have two branches (giant and dwarf) or a hard bound (A_r at 0),
  the standard deviation is set by the far branch or the bound, and that statistic falls
  below 1 even though the intervals are right; half the 16-84 % width (``σ68``) is the
  Gaussian-equivalent width that the statistic expects.

``--hybrid N`` also runs the hybrid pipeline (``photodist.pipeline.run_patch``: Bayes on
10,000 of N such stars, the networks for the rest, the same prior, no floor) and reports its
network rows against the truth with their total uncertainty sqrt(σ_NN² + σ_B²): the
networks' own calibration when the Bayesian labels are right.

``--trilegal PATH`` asks what a wrong prior costs: the stars are drawn from a TRILEGAL prior
map instead (a photo-D prior catalogue such as ``../shared/data/s82_priors``, its first pixel,
interpolated onto the posterior grid; the patch should then be that map's, e.g. ``--patch
176,-48 --a-map 0.24`` for Stripe 82), and the estimator runs three times: with that same
map (self-consistent), with this package's Galaxy-model prior for the patch (another Galaxy
model, as on any catalogue that was not simulated with ours) as given, raised to the power
that maximises the stars' marginal likelihood, and also moved along [Fe/H] by the shift that
does (:mod:`photodist.prior_temper`; the pipeline's default fits both), and with a flat
prior. ``--error-floor`` sets the floor of these runs (default 0).
With ``--hybrid N`` too, the hybrid pipeline runs on N such stars with the Galaxy-model prior,
as given and with its fitted power.

``--flat-prior`` draws the stars from a flat ([Fe/H], M_r) prior instead (every locus point
equally likely: giants as common as dwarfs, most stars with two branches) and estimates them
with it; with ``--hybrid N`` the networks then learn the posterior means of such stars.

Usage: ``python validation/bayes_self_consistency.py [--stars 20000] [--patch L,B]
[--a-map 0.1] [--seed 1] [--hybrid 200000 [--n-train 10000]] [--trilegal PATH | --flat-prior]``
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from bayes_accuracy import sigma_g

from photodist.bands import get_band_set, photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator, Flags, PriorGrid
from photodist.locus import build_locus
from photodist.prior_temper import adjusted_prior, fit_prior_temper
from photodist.priors import build_patch_priors, read_trilegal_priors
from photodist.simulate import add_photometric_errors

R_LO, R_HI = 15.0, 24.0
BAND_SET = get_band_set("lsst")


def draw_stars(
    locus, grid: PriorGrid, a_map: float, n: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A catalogue of ``n`` stars drawn from the estimator's model, and their true values."""
    n_feh, n_mr = locus.shape
    r = rng.uniform(R_LO, R_HI, n)
    bins = grid.bin_index(r)
    point = np.empty(n, dtype=np.int64)
    for b in np.unique(bins):
        rows = np.flatnonzero(bins == b)
        weights = np.exp(grid.log_prior[b].ravel() - np.nanmax(grid.log_prior[b]))
        weights = np.where(np.isfinite(weights), weights, 0.0)
        point[rows] = rng.choice(weights.size, size=rows.size, p=weights / weights.sum())
    fi, mi = np.divmod(point, n_mr)
    feh_step = locus.feh[1] - locus.feh[0]
    mr_step = locus.mr[1] - locus.mr[0]
    a_max = 1.3 * a_map + 0.1
    truth = {
        "FeH": locus.feh[fi] + rng.uniform(-0.5, 0.5, n) * feh_step,
        "Mr": locus.mr[mi] + rng.uniform(-0.5, 0.5, n) * mr_step,
        "Ar": rng.uniform(0.0, a_max, n),
    }
    colors = locus.colors_for(BAND_SET)[fi, mi] + truth["Ar"][:, None] * (
        BAND_SET.reddening_vector()
    )
    # magnitudes from r and the colours: u = g + (u-g), g = r + (g-r), i = r - (r-i), ...
    mags = {"r": r}
    mags["g"] = r + colors[:, 1]
    mags["u"] = mags["g"] + colors[:, 0]
    mags["i"] = r - colors[:, 2]
    mags["z"] = mags["i"] - colors[:, 3]
    mags["y"] = mags["z"] - colors[:, 4]
    observed, errors = add_photometric_errors(pd.DataFrame(mags), "lsst10", BAND_SET, rng)
    frame = pd.DataFrame({f"{b}mag": observed[:, k] for k, b in enumerate(BAND_SET.bands)})
    for k, b in enumerate(BAND_SET.bands):
        frame[f"{b}Err"] = errors[:, k]
    frame["Ar"] = a_map
    return frame, truth


def report(result: pd.DataFrame, truth: dict[str, np.ndarray], rows: np.ndarray, label: str):
    """Coverage, median test and the σ_G calibration with std and with σ68, per parameter."""
    print(f"{label} ({rows.sum()} stars):")
    print("  param  cover16-84  below-p50  sigma_G(mean-truth)  calib(std)  calib(sigma68)")
    for p in ("Mr", "FeH", "Ar"):
        t = truth[p][rows]
        res = result.loc[rows]
        inside = ((t > res[f"{p}_p16"]) & (t < res[f"{p}_p84"])).mean()
        below = (t < res[f"{p}_p50"]).mean()
        diff = res[f"{p}_mean"].to_numpy() - t
        sigma68 = 0.5 * (res[f"{p}_p84"] - res[f"{p}_p16"]).to_numpy()
        calib_std = sigma_g(diff / res[f"{p}_std"].to_numpy())
        calib_68 = sigma_g((res[f"{p}_p50"].to_numpy() - t) / sigma68)
        print(
            f"  {p:<5}  {inside:10.3f}  {below:9.3f}  {sigma_g(diff):19.3f}  "
            f"{calib_std:10.2f}  {calib_68:14.2f}"
        )


def report_hybrid(result: pd.DataFrame, truth: dict[str, np.ndarray]) -> None:
    """The network rows against the truth with their total uncertainty."""
    rows = (result["method"] == "nn").to_numpy()
    print(f"hybrid, network rows ({rows.sum()} stars):")
    print("  param  sigma_G(mean-truth)  calib(sigma_total)  cover(mean +- sigma_total)")
    for p in ("Mr", "FeH", "Ar"):
        diff = result[f"{p}_mean"].to_numpy()[rows] - truth[p][rows]
        z = diff / result[f"{p}_sigma"].to_numpy()[rows]
        print(
            f"  {p:<5}  {sigma_g(diff):19.3f}  {sigma_g(z):18.2f}  {(np.abs(z) < 1).mean():25.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=20000)
    parser.add_argument("--patch", default="60,60", metavar="L,B")
    parser.add_argument("--a-map", type=float, default=0.1, help="dust-map A_r of every star")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hybrid", type=int, default=0, metavar="N", help="hybrid on N stars")
    parser.add_argument("--trilegal", default=None, metavar="PATH", help="draw from this map")
    parser.add_argument("--error-floor", type=float, default=0.0, help="with --trilegal")
    parser.add_argument(
        "--n-train", type=int, default=10_000, help="Bayesian labels of the hybrid's networks"
    )
    parser.add_argument(
        "--flat-prior",
        action="store_true",
        help="draw and estimate with a flat ([Fe/H], M_r) prior (giants as common as dwarfs)",
    )
    args = parser.parse_args()
    if args.flat_prior and args.trilegal:
        parser.error("--flat-prior and --trilegal exclude each other")
    lon, lat = (float(v) for v in args.patch.split(","))
    locus = build_locus().resample(0.05, 0.1)
    prior = build_patch_priors(cone=(lon, lat, 0.5), seed=args.seed, band_set="lsst", locus=locus)
    if args.trilegal:
        galaxy_grid = PriorGrid.from_prior(prior, locus)
        prior = read_trilegal_priors(args.trilegal, locus, pixel=0)
    grid = PriorGrid.flat(locus) if args.flat_prior else PriorGrid.from_prior(prior, locus)
    if args.flat_prior:
        prior = grid
    rng = np.random.default_rng(args.seed)
    n_stars = max(args.stars, args.hybrid)
    frame, truth = draw_stars(locus, grid, args.a_map, 3 * n_stars, rng)
    keep = (frame[[f"{b}Err" for b in BAND_SET.bands]].to_numpy() < 0.2171).all(axis=1)
    keep &= np.cumsum(keep) <= n_stars
    frame = frame[keep].reset_index(drop=True)
    truth = {p: v[keep] for p, v in truth.items()}
    if args.hybrid and args.trilegal:  # the pipeline with the other Galaxy model's prior
        from photodist.pipeline import PipelineConfig, run_patch

        for power, shift in ((1.0, 0.0), ("auto", 0.0), ("auto", "auto")):
            config = PipelineConfig(
                error_floor=args.error_floor,
                prior_temper=power,
                prior_feh_shift=shift,
                seed=args.seed,
            )
            hybrid, timings, _ = run_patch(frame, galaxy_grid, locus, config)
            used = hybrid.attrs["photodist_pipeline"]["prior_temper"]
            print(
                f"hybrid on {len(frame)} TRILEGAL stars, Galaxy-model prior moved "
                f"{used['feh_shift']:+g} dex ({shift}), ** {used['beta']:g} ({power}), "
                f"floor {args.error_floor:g}, in {timings['total']:.1f} s"
            )
            report_hybrid(hybrid, truth)
    elif args.hybrid:
        from photodist.pipeline import PipelineConfig, run_patch

        config = PipelineConfig(error_floor=0.0, seed=args.seed, n_train=args.n_train)
        hybrid, timings, _ = run_patch(frame, prior, locus, config)
        print(f"hybrid on {len(frame)} stars in {timings['total']:.1f} s")
        report_hybrid(hybrid, truth)
    frame = frame.iloc[: args.stars]
    truth = {p: v[: args.stars] for p, v in truth.items()}
    phot = photometry_from_frame(frame, BAND_SET)
    result = BayesEstimator(locus, grid, BayesConfig(error_floor=0.0)).predict(phot)
    print(
        f"patch l={lon:g}, b={lat:g}: {len(frame)} stars drawn from the estimator's model "
        f"(A_map {args.a_map}, flat A_r prior on [0, {1.3 * args.a_map + 0.1:.3f}])"
    )
    two_branch = (result["flags"].to_numpy() & Flags.TWO_BRANCH) != 0
    every = np.ones(len(frame), dtype=bool)
    report(result, truth, every, "all stars")
    if args.trilegal:  # the same stars under other priors
        print(f"stars drawn from the TRILEGAL map {args.trilegal} (pixel 0)")
        config = BayesConfig(error_floor=args.error_floor)
        power = fit_prior_temper(phot, locus, galaxy_grid, config, seed=args.seed, feh_shift=0.0)
        both = fit_prior_temper(phot, locus, galaxy_grid, config, seed=args.seed)
        priors = (
            ("TRILEGAL prior (the stars' own)", grid),
            ("Galaxy-model prior as given", galaxy_grid),
            (
                f"Galaxy-model prior ** {power.beta:g} (power fitted, no shift)",
                adjusted_prior(galaxy_grid, locus, power.beta),
            ),
            (
                f"Galaxy-model prior moved {both.feh_shift:+g} dex, ** {both.beta:g} (fitted)",
                adjusted_prior(galaxy_grid, locus, both.beta, both.feh_shift),
            ),
            ("flat prior", PriorGrid.flat(locus)),
        )
        for label, other in priors:
            again = BayesEstimator(locus, other, config).predict(phot)
            report(again, truth, every, f"floor {args.error_floor:g}, {label}")
        return
    report(result, truth, two_branch, "two-branch posteriors (TWO_BRANCH)")
    report(result, truth, ~two_branch, "one branch")


if __name__ == "__main__":
    main()
