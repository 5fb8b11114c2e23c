"""Benchmark of the Bayesian estimator: closed form vs the brute-force A_r grid, and core scaling.

Two workloads on a posterior grid of 0.05 dex x 0.1 mag (11,041 points):

* ``synthetic``: stars drawn uniformly on the locus grid, colour errors log-uniform in
  0.01-0.1 mag, A_r up to 0.3, dust map 0.25, flat prior (a hard case: broad posteriors);
* ``patch``: a simulated high-latitude patch (LSST 10-year errors, SNR > 5 in all bands) with
  its Galaxy-model prior (the survey case).

Prints microseconds per star for the closed form and for the brute-force reference (A_r step
0.005 mag) measured in the same run, their ratio, and stars/s with 1 and all threads.

Usage: ``python benchmarks/bench_bayes.py [n_stars] [synthetic|patch]``
"""

from __future__ import annotations

import sys
import time

import numba
import numpy as np

from photodist.bands import LSST, Photometry
from photodist.bayes import BayesEstimator, brute_force_posterior
from photodist.locus import build_locus


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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    locus = build_locus(feh_step=0.05, mr_step=0.1)
    print(
        f"posterior grid: {locus.shape[0]} x {locus.shape[1]} = {locus.colors[..., 0].size} points"
    )
    phot = make_stars(locus, n)
    estimator = BayesEstimator(locus)
    estimator.predict(phot.subset(slice(0, 10)))  # compile
    rates = {}
    max_threads = numba.config.NUMBA_NUM_THREADS
    for threads in sorted({1, max_threads}):
        numba.set_num_threads(threads)
        start = time.perf_counter()
        estimator.predict(phot)
        elapsed = time.perf_counter() - start
        rates[threads] = n / elapsed
        print(
            f"closed form, {threads} thread(s): {elapsed / n * 1e6:8.1f} us/star "
            f"({rates[threads]:,.0f} stars/s, {elapsed / n * 1e6 * threads:.1f} us/star/core)"
        )
    n_brute = 20
    start = time.perf_counter()
    for i in range(n_brute):
        brute_force_posterior(phot, i, locus, estimator.prior, a_step=0.005)
    brute = (time.perf_counter() - start) / n_brute
    closed = 1.0 / rates[1]
    print(f"brute force (A_r step 0.005 mag), 1 thread: {brute * 1e6:10.1f} us/star")
    print(f"ratio brute force / closed form (1 thread): {brute / closed:.0f}x")
    if max_threads > 1:
        print(f"scaling {max_threads} threads / 1 thread: {rates[max_threads] / rates[1]:.2f}x")
    print(f"versus the paper's 10 ms/star/core: {10e-3 / closed:.0f}x faster per core")


if __name__ == "__main__":
    main()
