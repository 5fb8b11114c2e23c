"""Benchmark of the Bayesian estimator: closed form vs the brute-force A_r grid, and core scaling.

Two workloads on a posterior grid of 0.05 dex x 0.1 mag (11,041 points):

* ``synthetic``: stars drawn uniformly on the locus grid, colour errors log-uniform in
  0.01-0.1 mag, A_r up to 0.3, dust map 0.25, flat prior (a hard case: broad posteriors);
* ``patch``: a simulated high-latitude patch (LSST 10-year errors, SNR > 5 in all bands) with
  its Galaxy-model prior (the survey case).

Prints microseconds per star per core for the closed form (CPU time of a single-threaded run,
best of 3, so other jobs on the machine matter little) and for the brute-force reference (A_r
step 0.005 mag) measured in the same run, their ratio, and wall-clock stars/s with 1 and all
threads. With ``--compare-with REV`` the estimator of an earlier git revision (its
``src/photodist/bayes.py``) is timed against the current one, alternately in the same process
(1 thread, CPU time, best of 8 each), with the largest change of any output column.

``--independent-colors`` times the paper's chi2 (independent colour errors) instead of the
default, which uses the covariance of adjacent colours (the patch's colours come from
magnitudes).

``--no-dust`` drops the dust-map column, so the A_r prior spans the default [0, 3] mag (a
catalogue without a dust map; more candidate points per star).

``--dust-profile`` first fits the workload's dust profile (:mod:`photodist.dust_profile`,
timed) and then times the estimator with that learned A_r prior.

Usage: ``python benchmarks/bench_bayes.py [n_stars] [synthetic|patch] [--no-dust]
[--independent-colors] [--dust-profile] [--compare-with REV]``
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numba
import numpy as np
from revision import module_at

from photodist.bands import LSST, Photometry, photometry_from_frame
from photodist.bayes import BayesConfig, BayesEstimator, brute_force_posterior
from photodist.dust_profile import fit_dust_profile
from photodist.evaluate import snr_mask
from photodist.locus import build_locus
from photodist.priors import build_patch_priors
from photodist.simulate import simulate_patch


def make_stars(locus, n: int, seed: int = 0) -> Photometry:
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, locus.shape[0], n)
    mi = rng.integers(0, locus.shape[1], n)
    err = np.exp(rng.uniform(np.log(0.01), np.log(0.1), (n, 5)))
    colors = (
        locus.colors_for(LSST)[fi, mi]
        + rng.uniform(0, 0.3, n)[:, None] * LSST.reddening_vector()
        + rng.normal(0, 1, (n, 5)) * err
    )
    return Photometry(LSST, np.full(n, 21.0), np.full(n, 0.02), colors, err, np.full(n, 0.25))


def make_patch(locus, n: int, seed: int = 0) -> tuple[Photometry, object]:
    """Stars of a simulated high-latitude cone (SNR > 5 in all bands) and its prior map."""
    cone = (60.0, 60.0, 1.0)
    frame = simulate_patch(cone=cone, r_max=25.5, seed=seed, locus=locus)
    frame = frame[snr_mask(frame, "lsst")].reset_index(drop=True)
    if len(frame) > n:
        rows = np.random.default_rng(seed).choice(len(frame), n, replace=False)
        frame = frame.iloc[np.sort(rows)].reset_index(drop=True)
    prior = build_patch_priors(cone=cone, locus=locus, seed=seed + 1)
    return photometry_from_frame(frame, "lsst"), prior


def _cpu_seconds(estimator: BayesEstimator, phot: Photometry, repeats: int = 3) -> float:
    """Best CPU time of single-threaded runs (insensitive to other jobs on the machine)."""
    numba.set_num_threads(1)
    best = np.inf
    for _ in range(repeats):
        start = time.process_time()
        estimator.predict(phot)
        best = min(best, time.process_time() - start)
    return best


def compare_with(revision: str, estimator: BayesEstimator, locus, prior, phot) -> None:
    """Time the estimator of ``revision`` against ``estimator``, alternately, and compare."""
    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        reference = module_at(revision, "bayes", workdir).BayesEstimator(locus, prior)
        old_frame = reference.predict(phot)
        new_frame = estimator.predict(phot)
        old, new = [], []
        for _ in range(8):
            for est, times in ((reference, old), (estimator, new)):
                start = time.process_time()
                est.predict(phot)
                times.append(time.process_time() - start)
    n = len(phot)
    print(
        f"{revision}: {min(old) / n * 1e6:.1f} us/star, current: {min(new) / n * 1e6:.1f} "
        f"us/star (1 thread, best of 8); speed-up {min(old) / min(new):.2f}x"
    )
    diffs = {
        c: float(np.nanmax(np.abs(new_frame[c] - old_frame[c])))
        for c in new_frame.columns
        if c in old_frame.columns and c not in {"flags", "dist_p16", "dist_p50", "dist_p84"}
    }
    worst = max(diffs, key=diffs.get)
    changed = int((new_frame["flags"] != old_frame["flags"]).sum())
    print(f"largest output change: {worst} {diffs[worst]:.2e}; flags changed on {changed} stars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_stars", nargs="?", type=int, default=20_000)
    parser.add_argument("workload", nargs="?", default="synthetic", choices=["synthetic", "patch"])
    parser.add_argument("--compare-with", metavar="REV", help="git revision to time against")
    parser.add_argument("--no-dust", action="store_true", help="drop the dust-map column")
    parser.add_argument(
        "--independent-colors", action="store_true", help="chi2 without the colour covariance"
    )
    parser.add_argument(
        "--dust-profile", action="store_true", help="with the workload's fitted dust profile"
    )
    args = parser.parse_args()
    if args.dust_profile and args.compare_with:
        parser.error("--dust-profile and --compare-with cannot be combined")
    n, workload = args.n_stars, args.workload
    locus = build_locus(feh_step=0.05, mr_step=0.1)
    print(
        f"posterior grid: {locus.shape[0]} x {locus.shape[1]} = {locus.colors[..., 0].size} points"
    )
    if workload == "patch":
        phot, prior = make_patch(locus, n)
        n = len(phot)
        print(f"workload: simulated patch l=60 b=60, {n} stars with SNR > 5, Galaxy-model prior")
    else:
        phot, prior = make_stars(locus, n), None
        print(f"workload: {n} synthetic stars, flat prior")
    if args.no_dust:
        phot = dataclasses.replace(phot, dust=None)
        print("no dust-map column: A_r prior [0, 3] mag")
    config = BayesConfig(color_covariance=not args.independent_colors)
    profile = None
    if args.dust_profile:
        BayesEstimator(locus, prior, config).predict(phot.subset(slice(0, 10)))  # compile
        start = time.perf_counter()
        profile, fit = fit_dust_profile(phot, locus, prior, config)
        print(
            f"dust profile fitted in {time.perf_counter() - start:.2f} s (wall, "
            f"{numba.get_num_threads()} threads; {fit}): width {profile.sigma:.3f} mag"
        )
    estimator = BayesEstimator(locus, prior, config, dust_profile=profile)
    estimator.predict(phot.subset(slice(0, 10)))  # compile
    if args.compare_with:
        compare_with(args.compare_with, estimator, locus, prior, phot)
        return
    cpu = _cpu_seconds(estimator, phot)
    print(f"closed form, 1 thread, CPU time: {cpu / n * 1e6:8.1f} us/star/core (best of 3)")
    rates = {}
    max_threads = numba.config.NUMBA_NUM_THREADS
    for threads in sorted({1, max_threads}):
        numba.set_num_threads(threads)
        start = time.perf_counter()
        estimator.predict(phot)
        elapsed = time.perf_counter() - start
        rates[threads] = n / elapsed
        print(
            f"closed form, {threads} thread(s), wall: {elapsed / n * 1e6:8.1f} us/star "
            f"({rates[threads]:,.0f} stars/s, {elapsed / n * 1e6 * threads:.1f} us/star/core)"
        )
    n_brute = 20
    start = time.process_time()
    for i in range(n_brute):
        brute_force_posterior(
            phot, i, locus, estimator.prior, config, a_step=0.005, dust_profile=profile
        )
    brute = (time.process_time() - start) / n_brute
    closed = cpu / n
    print(f"brute force (A_r step 0.005 mag), 1 thread, CPU time: {brute * 1e6:10.1f} us/star")
    print(f"ratio brute force / closed form (1 thread): {brute / closed:.0f}x")
    if max_threads > 1:
        print(
            f"scaling {max_threads} threads / 1 thread (wall): {rates[max_threads] / rates[1]:.2f}x"
        )
    print(f"versus the paper's 10 ms/star/core: {10e-3 / closed:.0f}x faster per core")


if __name__ == "__main__":
    main()
