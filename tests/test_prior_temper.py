"""Tests of the prior's power fitted by maximum marginal likelihood (photodist.prior_temper)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from photodist.bands import SDSS
from photodist.bayes import BayesConfig, PriorGrid
from photodist.prior_temper import (
    PriorTemperFit,
    _climb,
    fit_prior_temper,
    parse_prior_temper,
    resolve_prior_temper,
)


def _two_populations(locus) -> tuple[np.ndarray, np.ndarray]:
    """Prior weights of a metal-rich disk of dwarfs and of a metal-poor halo with giants."""
    mr = locus.mr[None, :]
    feh = locus.feh[:, None]
    valid = np.isfinite(locus.colors_for(SDSS)).all(axis=-1)
    disk = np.exp(-0.5 * ((mr - 6.5) / 1.2) ** 2) * np.exp(-0.5 * ((feh + 0.3) / 0.25) ** 2)
    halo = (
        np.exp(-0.5 * ((mr - 4.5) / 0.8) ** 2) + 0.5 * np.exp(-0.5 * ((mr - 1.0) / 0.7) ** 2)
    ) * np.exp(-0.5 * ((feh + 1.6) / 0.35) ** 2)
    return np.where(valid, disk, 0.0), np.where(valid, halo, 0.0)


def test_tempered_prior_is_a_normalised_power(coarse_locus):
    disk, _ = _two_populations(coarse_locus)
    log_prior = np.log(np.stack([disk, 2.0 * disk + 1e-3 * (disk > 0)]))
    grid = PriorGrid(log_prior, np.array([18.0, 22.0]), 2.0)
    allowed = np.isfinite(log_prior)
    for beta in (1.0, 0.5, 0.0):
        tempered = grid.tempered(beta)
        assert tempered.r_half_width == 2.0
        np.testing.assert_array_equal(np.isfinite(tempered.log_prior), allowed)
        for b in range(2):
            values = tempered.log_prior[b][allowed[b]]
            assert logsumexp(values) == pytest.approx(0.0, abs=1e-12)
            # proportional to the prior's power
            ratio = values - beta * log_prior[b][allowed[b]]
            assert np.ptp(ratio) < 1e-9
    assert np.ptp(grid.tempered(0.0).log_prior[0][allowed[0]]) < 1e-12  # flat
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grid.tempered(1.5)


def test_parse_prior_temper():
    assert parse_prior_temper("auto") == "auto"
    assert parse_prior_temper(" AUTO ") == "auto"
    assert parse_prior_temper("0.4") == 0.4
    assert parse_prior_temper(1) == 1.0
    for bad in ("-0.1", "2", "abc", None):
        with pytest.raises(ValueError, match="power"):
            parse_prior_temper(bad)


def test_power_is_one_when_the_stars_follow_the_prior_and_falls_when_they_do_not(
    coarse_locus, band_noise_stars
):
    """Stars of the prior's own population keep it as given; stars of another population
    (a halo under a disk prior) lower its power, and the posteriors then cover their truths
    better."""
    disk, halo = _two_populations(coarse_locus)
    disk_prior = PriorGrid(np.log(disk)[None], np.array([20.0]))
    config = BayesConfig(error_floor=0.0)
    a_max = 1.3 * 0.25 + 0.1
    common = {"err_range": (0.01, 0.08), "a_max": a_max}
    own = band_noise_stars(coarse_locus, SDSS, 1500, seed=3, point_weights=disk, **common)[0]
    fit = fit_prior_temper(own, coarse_locus, disk_prior, config, max_stars=1500)
    assert fit.fitted and fit.beta == 1.0 and fit.feh_shift == 0.0 and fit.gain == 0.0
    # the climb stops at once: shifts -0.1, 0, +0.1 and powers 0.9, 1 compared
    assert len(fit.log_evidence_by_shift) <= 3 and set(fit.log_evidence) == {0.9, 1.0}

    other, mr, feh, _ = band_noise_stars(
        coarse_locus, SDSS, 1500, seed=4, point_weights=0.8 * halo + 0.2 * disk, **common
    )
    fit = fit_prior_temper(other, coarse_locus, disk_prior, config, max_stars=1500, feh_shift=0.0)
    assert fit.fitted and fit.beta < 1.0 and fit.gain > 0.0
    assert fit.n_stars > 1000
    # the chosen power is the best compared, and the climb passed it by one step
    assert fit.log_evidence[fit.beta] == max(fit.log_evidence.values())
    assert min(fit.log_evidence) == max(round(fit.beta - 0.1, 1), 0.0)
    assert fit.to_dict()["beta"] == fit.beta

    from photodist.bayes import BayesEstimator

    as_given = BayesEstimator(coarse_locus, disk_prior, config).predict(other)
    prior, _ = resolve_prior_temper("auto", other, coarse_locus, disk_prior, config, feh_shift=0.0)
    tempered = BayesEstimator(coarse_locus, prior, config).predict(other)

    def coverage(res, truth, p):
        return float(((truth > res[f"{p}_p16"]) & (truth < res[f"{p}_p84"])).mean())

    for p, truth in (("Mr", mr), ("FeH", feh)):
        assert coverage(tempered, truth, p) > coverage(as_given, truth, p) + 0.05, p


def test_resolve_prior_temper_settings(coarse_locus, band_noise_stars):
    disk, _ = _two_populations(coarse_locus)
    prior = PriorGrid(np.log(disk)[None], np.array([20.0]))
    phot = band_noise_stars(coarse_locus, SDSS, 100, seed=5, point_weights=disk)[0]
    same, fit = resolve_prior_temper(1.0, phot, coarse_locus, prior, feh_shift=0.0)
    assert same is prior and fit.beta == 1.0 and not fit.fitted and fit.reason == "given"
    assert fit.to_dict()["too_few_stars"] is False  # not asked for: not "too few"
    half, fit = resolve_prior_temper(0.5, phot, coarse_locus, prior, feh_shift=-0.2)
    np.testing.assert_allclose(half.log_prior, prior.feh_shifted(-2).tempered(0.5).log_prior)
    assert fit.reason == "given" and fit.feh_shift == -0.2 and fit.changes_prior
    # the prior moves by whole grid steps (0.1 dex here): the record says what is applied
    with pytest.warns(UserWarning, match=r"\+0.04 dex is applied as \+0 dex"):
        same, fit = resolve_prior_temper(1.0, phot, coarse_locus, prior, feh_shift=0.04)
    assert same is prior and fit.feh_shift == 0.0
    with pytest.warns(UserWarning, match=r"-0.27 dex is applied as -0.3 dex"):
        moved, fit = resolve_prior_temper(1.0, phot, coarse_locus, prior, feh_shift=-0.27)
    assert fit.feh_shift == -0.3
    np.testing.assert_allclose(moved.log_prior, prior.feh_shifted(-3).log_prior)
    assert resolve_prior_temper("auto", phot, coarse_locus, None)[0] is None
    few, fit = resolve_prior_temper("auto", phot, coarse_locus, prior)
    assert few is prior and not fit.fitted and "fewer than" in fit.reason  # 100 stars
    assert fit.to_dict()["too_few_stars"] is True
    assert isinstance(fit, PriorTemperFit) and np.isnan(fit.gain)
    # too few stars to fit the shift: the given power is still applied
    given_power, fit = resolve_prior_temper(0.5, phot, coarse_locus, prior)
    assert not fit.fitted and fit.beta == 0.5 and fit.feh_shift == 0.0
    np.testing.assert_allclose(given_power.log_prior, prior.tempered(0.5).log_prior)


def test_feh_shifted_prior_moves_along_feh_only(coarse_locus):
    disk, _ = _two_populations(coarse_locus)
    grid = PriorGrid(np.log(disk)[None], np.array([20.0]))
    allowed = np.isfinite(grid.log_prior)
    moved = grid.feh_shifted(3)
    np.testing.assert_array_equal(np.isfinite(moved.log_prior), allowed)
    assert logsumexp(moved.log_prior[0][allowed[0]]) == pytest.approx(0.0, abs=1e-12)
    feh = coarse_locus.feh
    weights = np.exp(moved.log_prior[0])
    mean_before = np.sum(disk * feh[:, None]) / disk.sum()
    mean_after = np.sum(weights * feh[:, None]) / weights.sum()
    assert mean_after - mean_before == pytest.approx(0.3, abs=0.03)
    assert grid.feh_shifted(0).log_prior == pytest.approx(grid.tempered(1.0).log_prior)


def test_shift_recovers_a_metallicity_offset(coarse_locus, band_noise_stars):
    """Stars of a population 0.3 dex more metal-rich than the prior: the fitted shift finds
    the offset and removes the bias of the [Fe/H] estimates; stars of the prior's own
    population keep it where it is."""
    disk, _ = _two_populations(coarse_locus)
    prior = PriorGrid(np.log(disk)[None], np.array([20.0]))
    truth_weights = np.exp(prior.feh_shifted(3).log_prior[0])
    config = BayesConfig(error_floor=0.0)
    common = {"err_range": (0.01, 0.08), "a_max": 1.3 * 0.25 + 0.1}
    stars, _, feh, _ = band_noise_stars(
        coarse_locus, SDSS, 1500, seed=8, point_weights=truth_weights, **common
    )
    fit = fit_prior_temper(stars, coarse_locus, prior, config, max_stars=1500)
    assert fit.fitted and fit.feh_shift == pytest.approx(0.3, abs=0.11)
    assert fit.log_evidence_by_shift[fit.feh_shift] > fit.log_evidence_by_shift[0.0]
    from photodist.bayes import BayesEstimator

    as_given = BayesEstimator(coarse_locus, prior, config).predict(stars)
    adjusted = BayesEstimator(
        coarse_locus, resolve_prior_temper("auto", stars, coarse_locus, prior, config)[0], config
    ).predict(stars)
    bias_before = np.median(as_given["FeH_mean"] - feh)
    bias_after = np.median(adjusted["FeH_mean"] - feh)
    assert bias_before < -0.1 and abs(bias_after) < 0.5 * abs(bias_before)
    own = band_noise_stars(coarse_locus, SDSS, 1500, seed=9, point_weights=disk, **common)[0]
    fit = fit_prior_temper(own, coarse_locus, prior, config, max_stars=1500)
    assert fit.feh_shift == 0.0 and fit.beta == 1.0 and not fit.changes_prior


@pytest.mark.parametrize("peak", [0, 3, 5, 10])
def test_climb_finds_the_peak_of_a_single_peaked_score(peak):
    options = [round(0.1 * k - 0.5, 1) for k in range(11)]
    calls = []

    def score(value):
        calls.append(value)
        return -((value - options[peak]) ** 2)

    assert _climb(options, 0.0, score) == options[peak]
    assert len(calls) == len(set(calls))  # no option scored twice
    assert len(calls) <= abs(peak - 5) + 3  # the start, the path and one step beyond
    assert _climb(options, 0.5, lambda v: -abs(v - options[peak])) == options[peak]
