"""MCMC check of the grid posterior (the paper's alternative implementation).

The same posterior — locus colours interpolated bilinearly in ([Fe/H], M_r), a prior that is
flat on the grid, a flat A_r prior on [0, A_max] — is sampled with emcee; posterior means from
the closed-form grid estimator agree with the MCMC means within the MCMC error (plus half a grid
step for the grid discretisation). The colours come from magnitudes, so adjacent colours covary
through their shared band; both sides use the full colour covariance.
"""

import numpy as np
import pytest

from photodist.bands import SDSS, Photometry
from photodist.bayes import BayesConfig, BayesEstimator
from photodist.locus import build_locus

emcee = pytest.importorskip("emcee")


def _log_posterior(theta, locus, colors, inv_cov, reddening, a_max):
    mr, feh, a = theta
    if not (locus.mr[0] <= mr <= locus.mr[-1] and locus.feh[0] <= feh <= locus.feh[-1]):
        return -np.inf
    if not 0.0 <= a <= a_max:
        return -np.inf
    model = locus.interpolate(np.array([mr]), np.array([feh]))[0, :4] + a * reddening
    resid = colors - model
    return -0.5 * float(resid @ inv_cov @ resid)


@pytest.mark.parametrize(
    "truth", [(3.5, -1.5, 0.10), (7.5, -0.7, 0.10), (9.5, -0.4, 0.20), (12.0, -0.2, 0.05)]
)
def test_grid_means_agree_with_mcmc(truth):
    locus = build_locus(feh_step=0.05, mr_step=0.05)
    mr, feh, a_true = truth
    band_errors = np.array([0.015, 0.008, 0.006, 0.008, 0.01])  # u g r i z
    errors = np.hypot(band_errors[:-1], band_errors[1:])
    adjacent = -(band_errors[1:-1] ** 2)
    cov = np.diag(errors**2) + np.diag(adjacent, 1) + np.diag(adjacent, -1)
    colors = locus.interpolate(np.array([mr]), np.array([feh]))[0, :4]
    colors = colors + a_true * SDSS.reddening_vector()
    phot = Photometry(
        SDSS,
        np.array([19.0]),
        np.array([0.01]),
        colors[None],
        errors[None],
        np.array([0.2]),
        adjacent[None],
    )
    config = BayesConfig(error_floor=0.0)
    grid = BayesEstimator(locus, None, config).predict(phot).iloc[0]
    a_max = float(grid["Ar_max"])
    # emcee's stretch move does not hop between the giant and dwarf branches: test stars with
    # a single-branch posterior (the grid handles two-branch posteriors exactly)
    assert grid["P_giant"] < 0.01

    rng = np.random.default_rng(42)
    n_walkers, n_steps, burn = 24, 1500, 500
    start = np.array([mr, feh, min(a_true, a_max * 0.9)]) + rng.normal(0, 0.01, (n_walkers, 3))
    start[:, 2] = np.clip(start[:, 2], 1e-3, a_max - 1e-3)
    sampler = emcee.EnsembleSampler(
        n_walkers,
        3,
        _log_posterior,
        args=(locus, colors, np.linalg.inv(cov), SDSS.reddening_vector(), a_max),
    )
    sampler.random_state = np.random.RandomState(7).get_state()  # deterministic chain
    sampler.run_mcmc(start, n_steps, progress=False)
    chain = sampler.get_chain(discard=burn, flat=True)
    tau = np.max(sampler.get_autocorr_time(discard=burn, quiet=True))
    n_eff = chain.shape[0] / max(tau, 1.0)
    for k, name in enumerate(("Mr", "FeH", "Ar")):
        mcmc_mean = chain[:, k].mean()
        mcmc_err = chain[:, k].std() / np.sqrt(n_eff)
        step = {"Mr": locus.mr_step, "FeH": locus.feh_step, "Ar": 0.0}[name]
        assert abs(grid[f"{name}_mean"] - mcmc_mean) < 4 * mcmc_err + step / 2 + 0.005, name
