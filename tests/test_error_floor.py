"""Tests of the colour-error floor fit (posterior predictive chi2 check)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from photodist.bands import LSST, SDSS, Photometry
from photodist.bayes import BayesConfig
from photodist.error_floor import (
    MIN_STARS,
    band_errors,
    correlated_color_noise,
    fit_error_floor,
    grid_error,
    resolve_error_floor,
    well_measured_rows,
)
from photodist.locus import build_locus
from photodist.pipeline import PipelineConfig


def _stars(locus, band_set, n, seed, extra_scatter=0.0):
    """Dwarfs on the locus grid, reddened, observed through noisy magnitudes (errors
    0.003-0.018 mag per band, so adjacent colours share noise); the colours also scatter by
    ``extra_scatter`` that the quoted errors leave out."""
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, locus.shape[0], n)
    mi = rng.integers(np.searchsorted(locus.mr, 4.0), np.searchsorted(locus.mr, 10.0), n)
    nc = band_set.n_colors
    band_err = rng.uniform(0.003, 0.018, (n, nc + 1))
    band_noise = rng.normal(0, 1, band_err.shape) * band_err
    colors = (
        locus.colors_for(band_set)[fi, mi]
        + rng.uniform(0.0, 0.3, n)[:, None] * band_set.reddening_vector()
        + band_noise[:, :-1]
        - band_noise[:, 1:]
        + rng.normal(0, extra_scatter, (n, nc))
    )
    err = np.sqrt(band_err[:, :-1] ** 2 + band_err[:, 1:] ** 2)
    r_err = band_err[:, band_set.bands.index("r")]
    return Photometry(band_set, np.full(n, 19.0), r_err, colors, err, np.full(n, 0.3))


def test_band_errors_invert_the_colour_errors(coarse_locus):
    phot = _stars(coarse_locus, SDSS, 50, seed=2)
    errors = band_errors(phot)
    np.testing.assert_allclose(errors[:, 2], phot.r_err)
    np.testing.assert_allclose(np.hypot(errors[:, :-1], errors[:, 1:]), phot.color_errors)
    noise = correlated_color_noise(phot, np.random.default_rng(0))
    assert noise.shape == phot.colors.shape and np.isfinite(noise).all()


@pytest.mark.parametrize("band_set", [LSST, SDSS])
def test_recovers_injected_scatter(coarse_locus, band_set):
    phot = _stars(coarse_locus, band_set, 500, seed=3, extra_scatter=0.02)
    fit = fit_error_floor(phot, coarse_locus, seed=1, max_stars=400)
    assert fit.fitted and fit.n_stars == 400
    assert 0.017 <= fit.scatter <= 0.024
    # at the fitted scatter the observed and replicated medians agree
    assert fit.observed_median == pytest.approx(fit.replicated_median, rel=0.2)
    # the floor adds the posterior grid's quantisation error
    assert fit.grid == grid_error(coarse_locus, band_set)
    assert fit.floor == pytest.approx(np.hypot(fit.scatter, fit.grid))


def test_no_extra_scatter_gives_a_small_floor(coarse_locus):
    phot = _stars(coarse_locus, LSST, 500, seed=4)
    fit = fit_error_floor(phot, coarse_locus, seed=1, max_stars=400)
    assert fit.fitted
    assert fit.scatter <= 0.005
    assert fit.floor == pytest.approx(np.hypot(fit.scatter, fit.grid))
    # Bayes-only runs take the scatter alone
    alone = fit_error_floor(phot, coarse_locus, seed=1, max_stars=400, grid_term=False)
    assert alone.grid == 0.0 and alone.floor == alone.scatter == fit.scatter


def test_grid_error_halves_with_the_grid_step():
    coarse = grid_error(build_locus(feh_step=0.1, mr_step=0.2), LSST)
    fine = grid_error(build_locus(feh_step=0.05, mr_step=0.1), LSST)
    assert 0.004 < fine < 0.01
    assert fine == pytest.approx(coarse / 2, rel=0.25)


def test_same_seed_same_floor(coarse_locus):
    phot = _stars(coarse_locus, LSST, 300, seed=5, extra_scatter=0.01)
    first = fit_error_floor(phot, coarse_locus, seed=7)
    assert fit_error_floor(phot, coarse_locus, seed=7) == first
    json.dumps(first.to_dict())


def test_too_few_well_measured_stars_keep_the_fallback(coarse_locus):
    phot = _stars(coarse_locus, LSST, MIN_STARS + 20, seed=6)
    phot.color_errors[:30, 0] = 0.2  # u too noisy: no longer well measured
    phot.colors[30:40, 2] = np.nan  # a missing colour
    phot.r[40:45] = np.nan  # no r
    assert well_measured_rows(phot).size == MIN_STARS - 25
    fit = fit_error_floor(phot, coarse_locus, config=BayesConfig(error_floor=0.03))
    assert not fit.fitted and fit.floor == 0.03 and "at least" in fit.reason
    assert fit_error_floor(phot, coarse_locus, fallback=0.01).floor == 0.01


@pytest.mark.parametrize("floor", [-1.0, float("nan"), float("inf"), "fast", None])
def test_resolve_error_floor_refuses_what_the_configs_refuse(coarse_locus, floor) -> None:
    phot = Photometry(
        LSST, np.array([20.0]), np.array([0.01]), np.zeros((1, 5)), np.full((1, 5), 0.02)
    )
    with pytest.raises(ValueError, match="error_floor must be 'auto' or a finite magnitude"):
        resolve_error_floor(floor, phot, coarse_locus, None, check=False)
    with pytest.raises(ValueError, match="error_floor must be"):
        PipelineConfig(error_floor=floor)
